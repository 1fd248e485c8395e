//! `[[vip]]` and its `[[vip.backend]]`s.

use lb_common::MAX_BACKENDS;

use crate::dataplane::maglev;

use super::{
    super::{raw::*, source::*, *},
    *,
};

/// A NAT source that is a VIP's address would have the backends' replies, sent to it,
/// load-balanced as client traffic: refused, at the `nat_source` that names it.
pub(super) fn check_nat_sources(
    raws: &[RawVip],
    vips: &[VipConfig],
    src: &Source<'_>,
) -> Result<(), ConfigError> {
    for (i, (raw, vip)) in raws.iter().zip(vips).enumerate() {
        let (Some(source), Some(value)) = (vip.nat_source, &raw.nat_source) else {
            continue;
        };
        if let Some(owner) = vips.iter().position(|other| other.address == source) {
            let message = format!(
                "{source} is the address of VIP {:?} (vip[{owner}]): backends' replies to it \
                 would be taken for clients' traffic",
                vips[owner].name
            );
            return Err(src.error_at(value, &format!("vip[{i}].nat_source"), message));
        }
    }
    Ok(())
}

impl RawVip {
    /// Validates `vip[i]`; `total_backends` counts backends across VIPs for the
    /// `MAX_BACKENDS` capacity of the backend map.
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        i: usize,
        total_backends: &mut usize,
    ) -> Result<VipConfig, ConfigError> {
        let table = [Step::Key("vip"), Step::Index(i)];
        let key = format!("vip[{i}]");
        let name_key = format!("{key}.name");
        let name = src.required(&self.name, &table, &name_key)?;
        if !valid_vip_name(name.get_ref()) {
            let message = format!(
                "{:?} is not a valid VIP name (1 to 64 of A-Z a-z 0-9 _ . -)",
                name.get_ref()
            );
            return Err(src.error_at(name, &name_key, message));
        }
        let address_key = format!("{key}.address");
        let address = src.address(
            src.required(&self.address, &table, &address_key)?,
            &address_key,
        )?;
        let port_key = format!("{key}.port");
        let port = src.integer(
            src.required(&self.port, &table, &port_key)?,
            &port_key,
            0,
            u16::MAX,
        )?;
        let forwarding = self.forwarding.unwrap_or_default();
        let nat_source = match &self.nat_source {
            None => None,
            Some(value) => {
                let nat_key = format!("{key}.nat_source");
                if forwarding != Forwarding::Nat {
                    let message =
                        "only NAT forwarding has a source address (set forwarding = \"nat\")";
                    return Err(src.error_at(value, &nat_key, message));
                }
                let nat_source = src.address(value, &nat_key)?;
                if nat_source.is_ipv4() != address.is_ipv4() {
                    let message = format!(
                        "{nat_source} is {} but the VIP address {address} is {}",
                        family(nat_source),
                        family(address)
                    );
                    return Err(src.error_at(value, &nat_key, message));
                }
                Some(nat_source)
            }
        };
        let conntrack = match &self.conntrack {
            Some(value) if !*value.get_ref() && forwarding == Forwarding::Nat => {
                let message = "NAT needs its flow table: conntrack = false is for DSR VIPs only";
                return Err(src.error_at(value, &format!("{key}.conntrack"), message));
            }
            Some(value) => *value.get_ref(),
            None => true,
        };

        let mut backends: Vec<BackendConfig> = Vec::with_capacity(self.backend.len());
        for (j, backend) in self.backend.iter().enumerate() {
            let backend_table = [
                Step::Key("vip"),
                Step::Index(i),
                Step::Key("backend"),
                Step::Index(j),
            ];
            let backend_key = format!("{key}.backend[{j}]");
            *total_backends += 1;
            if *total_backends > MAX_BACKENDS as usize {
                let message =
                    format!("too many backends: all VIPs together may have at most {MAX_BACKENDS}");
                return Err(src.error(src.table(&backend_table), &backend_key, message));
            }
            let address_key = format!("{backend_key}.address");
            let address_value = src.required(&backend.address, &backend_table, &address_key)?;
            let backend_address = src.address(address_value, &address_key)?;
            if backend_address.is_ipv4() != address.is_ipv4() {
                let why = match forwarding {
                    Forwarding::Dsr => "DSR rewrites only MAC addresses",
                    Forwarding::Nat => "NAT does not translate between families",
                };
                let message = format!(
                    "backend {backend_address} is {} but the VIP address {address} is {}; {why}, so a backend must have its VIP's address family",
                    family(backend_address),
                    family(address)
                );
                return Err(src.error_at(address_value, &address_key, message));
            }
            let backend_port = match &backend.port {
                None => None,
                Some(value) => {
                    let port_key = format!("{backend_key}.port");
                    if forwarding != Forwarding::Nat {
                        let message = "DSR cannot change the port: the backend receives the client's packet as sent (use forwarding = \"nat\")";
                        return Err(src.error_at(value, &port_key, message));
                    }
                    if port == 0 {
                        let message = "a VIP on every port (port = 0) keeps the client's destination port; remove the backend port";
                        return Err(src.error_at(value, &port_key, message));
                    }
                    Some(src.integer(value, &port_key, 1, u16::MAX)?)
                }
            };
            if let Some(first) = backends.iter().position(|b| b.address == backend_address) {
                let message = format!(
                    "backend {backend_address} is already listed as {key}.backend[{first}]"
                );
                return Err(src.error_at(address_value, &address_key, message));
            }
            let weight = match &backend.weight {
                Some(w) => src.integer(w, &format!("{backend_key}.weight"), 0, MAX_WEIGHT)?,
                None => DEFAULT_WEIGHT,
            };
            backends.push(BackendConfig {
                address: backend_address,
                port: backend_port,
                weight,
                state: backend.state.unwrap_or_default(),
            });
        }

        let table_size_key = format!("{key}.table_size");
        let (table_size, table_size_at) = match &self.table_size {
            Some(v) => (
                src.integer(v, &table_size_key, 2, maglev::MAX_TABLE_SIZE)?,
                v.span().start,
            ),
            None => (maglev::DEFAULT_TABLE_SIZE, src.table(&table)),
        };
        if !maglev::is_prime(table_size) {
            let message = format!(
                "{table_size} is not prime; Maglev needs a prime table size (e.g. {})",
                maglev::DEFAULT_TABLE_SIZE
            );
            return Err(src.error(table_size_at, &table_size_key, message));
        }
        if table_size as usize <= backends.len() {
            let message = format!(
                "must be greater than the number of backends ({})",
                backends.len()
            );
            return Err(src.error(table_size_at, &table_size_key, message));
        }

        let protocol = self.protocol.unwrap_or_default();
        let health = match &self.health {
            Some(raw) => raw.validate(src, i, protocol, port)?,
            None => HealthConfig::default_for(protocol, port),
        };
        let needs_port = matches!(
            health.kind,
            CheckKind::Tcp | CheckKind::Http | CheckKind::Https
        );
        if port == 0 && health.port.is_none() && needs_port {
            let message = "a VIP on every port (port = 0) has no port to check: set health.port";
            let at = src.table(&[Step::Key("vip"), Step::Index(i), Step::Key("health")]);
            return Err(src.error(at, &format!("{key}.health.port"), message));
        }

        let firewall = self.validate_firewall(src, i, address, port)?;

        Ok(VipConfig {
            name: name.get_ref().clone(),
            address,
            port,
            protocol,
            forwarding,
            nat_source,
            hash: self.hash.unwrap_or_default(),
            conntrack,
            table_size,
            health,
            firewall,
            backends,
        })
    }
}
