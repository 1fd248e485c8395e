//! `[vrrp]`.

use std::{net::IpAddr, time::Duration};

use toml::Spanned;

use super::{
    super::{raw::*, source::*, *},
    *,
};

impl RawVrrp {
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        vips: &[VipConfig],
    ) -> Result<VrrpConfig, ConfigError> {
        let table = [Step::Key("vrrp")];
        let interface = src.required(&self.interface, &table, "vrrp.interface")?;
        if !valid_ifname(interface.get_ref()) {
            let message = format!(
                "{:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)",
                interface.get_ref()
            );
            return Err(src.error_at(interface, "vrrp.interface", message));
        }
        let vrid = src.integer(
            src.required(&self.vrid, &table, "vrrp.vrid")?,
            "vrrp.vrid",
            1u8,
            255,
        )?;
        let priority = match &self.priority {
            Some(v) if v.get_ref().0 == 255 => {
                let message = "255 is the address owner's priority (a router whose own addresses are the virtual ones); weir holds the VIPs as a backup does: use 1..=254";
                return Err(src.error_at(v, "vrrp.priority", message));
            }
            Some(v) => src.integer(v, "vrrp.priority", 1u8, 254)?,
            None => DEFAULT_VRRP_PRIORITY,
        };
        let advert_interval = match &self.advert_interval {
            Some(v) => {
                let interval = src.duration(v, "vrrp.advert_interval")?;
                if interval.as_millis() % 10 != 0
                    || !(Duration::from_millis(10)..=MAX_ADVERT_INTERVAL).contains(&interval)
                {
                    let message = "must be 10ms..=40950ms in steps of 10ms (VRRPv3 carries centiseconds in 12 bits)";
                    return Err(src.error_at(v, "vrrp.advert_interval", message));
                }
                interval
            }
            None => DEFAULT_ADVERT_INTERVAL,
        };
        let optional_duration = |value: &Option<Spanned<String>>, key: &str, default| match value {
            Some(v) => src.duration(v, key),
            None => Ok(default),
        };
        let preempt_delay =
            optional_duration(&self.preempt_delay, "vrrp.preempt_delay", Duration::ZERO)?;
        let garp_refresh = optional_duration(
            &self.garp_refresh,
            "vrrp.garp_refresh",
            DEFAULT_GARP_REFRESH,
        )?;
        let mut unicast_peers: Vec<IpAddr> = Vec::new();
        for (i, peer) in self.unicast_peers.iter().flatten().enumerate() {
            let key = format!("vrrp.unicast_peers[{i}]");
            let address = src.address(peer, &key)?;
            if unicast_peers.contains(&address) {
                return Err(src.error_at(peer, &key, format!("{address} is listed twice")));
            }
            unicast_peers.push(address);
        }
        // Unicast: every family that has VIPs (an instance) needs a peer of its family.
        if let Some(first) = self.unicast_peers.as_ref().and_then(|peers| peers.first()) {
            for (i, vip) in vips.iter().enumerate() {
                if !unicast_peers
                    .iter()
                    .any(|p| p.is_ipv4() == vip.address.is_ipv4())
                {
                    let message = format!(
                        "no {} peer, but vip[{i}] ({}) is {}: each family with VIPs runs its own instance and needs peers of that family",
                        family(vip.address),
                        vip.address,
                        family(vip.address)
                    );
                    return Err(src.error_at(first, "vrrp.unicast_peers", message));
                }
            }
        }
        let track_weight = match &self.track_weight {
            Some(v) => src.integer(v, "vrrp.track_weight", 0u8, 254)?,
            None => DEFAULT_TRACK_WEIGHT,
        };
        let garp_repeat = match &self.garp_repeat {
            Some(v) => src.integer(v, "vrrp.garp_repeat", 1u32, MAX_GARP_REPEAT)?,
            None => DEFAULT_GARP_REPEAT,
        };
        let notify = match &self.notify {
            Some(list) => {
                if list
                    .get_ref()
                    .first()
                    .is_some_and(|c| c.get_ref().is_empty())
                {
                    let message = "the command (first element) is empty";
                    return Err(src.error_at(list, "vrrp.notify", message));
                }
                list.get_ref().iter().map(|a| a.get_ref().clone()).collect()
            }
            None => Vec::new(),
        };
        Ok(VrrpConfig {
            interface: interface.get_ref().clone(),
            vrid,
            priority,
            advert_interval,
            preempt: self.preempt.unwrap_or(true),
            preempt_delay,
            unicast_peers,
            track_vips: self.track_vips.unwrap_or(true),
            track_weight,
            garp_repeat,
            garp_refresh,
            notify,
        })
    }
}
