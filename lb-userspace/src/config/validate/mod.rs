//! From the raw file to a [`Config`]: one file per section, each checking its ranges and
//! its references, and this one the whole.

mod agent;
mod firewall;
mod frontend;
mod health;
mod stats;
mod vip;
mod vrrp;

use std::net::IpAddr;

use lb_common::MAX_VIPS;

use super::{raw::*, source::*, *};

impl RawConfig {
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<Config, ConfigError> {
        let agent = match &self.agent {
            Some(agent) => agent.validate(src)?,
            None => return Err(src.error(0, "agent", "required table [agent] is missing")),
        };
        if self.vip.len() > MAX_VIPS as usize {
            let at = src.table(&[Step::Key("vip"), Step::Index(MAX_VIPS as usize)]);
            let message = format!("too many VIPs: at most {MAX_VIPS} are supported");
            return Err(src.error(at, &format!("vip[{MAX_VIPS}]"), message));
        }
        let mut vips: Vec<VipConfig> = Vec::with_capacity(self.vip.len());
        let mut total_backends = 0;
        for (i, raw) in self.vip.iter().enumerate() {
            let key = format!("vip[{i}]");
            let vip = raw.validate(src, i, &mut total_backends)?;
            // At most MAX_VIPS VIPs: a quadratic search is cheap and keeps this simple.
            if let Some(first) = vips.iter().position(|v| v.name == vip.name) {
                let message = format!("VIP name {:?} is already used by vip[{first}]", vip.name);
                let at = raw.name.as_ref().map_or(0, |n| n.span().start);
                return Err(src.error(at, &format!("{key}.name"), message));
            }
            let endpoint = |v: &VipConfig| (v.address, v.port, v.protocol);
            if let Some(first) = vips.iter().position(|v| endpoint(v) == endpoint(&vip)) {
                let message = format!(
                    "{} port {} {} is already served by vip[{first}] ({:?})",
                    vip.address, vip.port, vip.protocol, vips[first].name
                );
                let at = raw.address.as_ref().map_or(0, |a| a.span().start);
                return Err(src.error(at, &format!("{key}.address"), message));
            }
            vips.push(vip);
        }
        vip::check_nat_sources(&self.vip, &vips, src)?;
        let announce = match &self.announce {
            Some(announce) => Some(announce.validate(src, &agent)?),
            None => None,
        };
        let vrrp = match &self.vrrp {
            Some(vrrp) => Some(vrrp.validate(src, &vips)?),
            None => None,
        };
        let stats = match &self.stats {
            Some(stats) => Some(stats.validate(src, &agent)?),
            None => None,
        };
        let flows = match &self.flows {
            Some(flows) => flows.validate(src)?,
            None => FlowSettings::default(),
        };
        let frontends = frontend::validate_all(&self.frontend, src, &vips)?;
        let firewall = match &self.firewall {
            Some(firewall) => firewall.validate(src, &agent)?,
            None => FirewallConfig::default(),
        };
        Ok(Config {
            agent,
            flows,
            vips,
            announce,
            vrrp,
            frontends,
            stats,
            firewall,
        })
    }
}

pub(super) fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// What Linux accepts as a device name (`dev_valid_name`): shorter than IFNAMSIZ (16),
/// not `.` or `..`, no `/`, `:` or whitespace.
pub(super) fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| matches!(b, b'/' | b':' | b'\0' | b'\x0b') || b.is_ascii_whitespace())
}

pub(super) fn valid_vip_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}
