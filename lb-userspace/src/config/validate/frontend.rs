//! `[[frontend]]`: the TLS tier's listeners (`weir proxy`). Each terminates HTTPS on its
//! `bind` addresses with its `certificates` and sends plain HTTP to the backends of one
//! VIP of the file, following the agent's health and admin states.
//!
//! Validated as the rest of the file: every error names the file, line, column and key.
//! The certificates are loaded and checked (a chain, a key that matches it, a name), so
//! that `weir check` refuses a file `weir proxy` could not serve.

use std::{net::SocketAddr, time::Duration};

use toml::Spanned;

use super::{
    super::{raw::*, source::*, *},
    valid_vip_name,
};
use crate::proxy::tls;

/// Validates every `[[frontend]]` against the file's VIPs.
pub(super) fn validate_all(
    raw: &[RawFrontend],
    src: &Source<'_>,
    vips: &[VipConfig],
) -> Result<Vec<FrontendConfig>, ConfigError> {
    let mut frontends: Vec<FrontendConfig> = Vec::with_capacity(raw.len());
    // Every listening address so far, with the key that holds it.
    let mut listeners: Vec<(SocketAddr, String)> = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let frontend = raw.validate(src, i, vips)?;
        if let Some(first) = frontends.iter().position(|f| f.name == frontend.name) {
            let message = format!(
                "frontend name {:?} is already used by frontend[{first}]",
                frontend.name
            );
            let at = raw.name.as_ref().map_or(0, |n| n.span().start);
            return Err(src.error(at, &format!("frontend[{i}].name"), message));
        }
        let addresses = raw
            .bind
            .iter()
            .flat_map(|list| {
                list.get_ref()
                    .iter()
                    .enumerate()
                    .map(|(j, a)| ("bind", j, a))
            })
            .chain(
                raw.redirect_http
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(j, a)| ("redirect_http", j, a)),
            );
        for (list, j, value) in addresses {
            let key = format!("frontend[{i}].{list}[{j}]");
            let address = socket_address(src, value, &key)?;
            if let Some((_, first)) = listeners.iter().find(|(a, _)| *a == address) {
                let message = format!("{address} is already listened on by {first}");
                return Err(src.error_at(value, &key, message));
            }
            listeners.push((address, key));
        }
        frontends.push(frontend);
    }
    Ok(frontends)
}

fn socket_address(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<SocketAddr, ConfigError> {
    match value.get_ref().parse::<SocketAddr>() {
        Ok(address) if address.port() != 0 => Ok(address),
        _ => {
            let message = format!(
                "{:?} is not an address:port (\"198.18.0.10:443\", \"[2001:db8::10]:443\", port not 0)",
                value.get_ref()
            );
            Err(src.error_at(value, key, message))
        }
    }
}

impl RawFrontend {
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        i: usize,
        vips: &[VipConfig],
    ) -> Result<FrontendConfig, ConfigError> {
        let table = [Step::Key("frontend"), Step::Index(i)];
        let key = format!("frontend[{i}]");
        let name_key = format!("{key}.name");
        let name = src.required(&self.name, &table, &name_key)?;
        if !valid_vip_name(name.get_ref()) {
            let message = format!(
                "{:?} is not a valid frontend name (1 to 64 of A-Z a-z 0-9 _ . -)",
                name.get_ref()
            );
            return Err(src.error_at(name, &name_key, message));
        }

        let bind_key = format!("{key}.bind");
        let bind_list = src.required(&self.bind, &table, &bind_key)?;
        if bind_list.get_ref().is_empty() {
            return Err(src.error_at(bind_list, &bind_key, "must list at least one address"));
        }
        let bind = bind_list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(j, a)| socket_address(src, a, &format!("{bind_key}[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let redirect_http = self
            .redirect_http
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, a)| socket_address(src, a, &format!("{key}.redirect_http[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;

        let certificates_key = format!("{key}.certificates");
        let certificates = src.required(&self.certificates, &table, &certificates_key)?;
        let path = PathBuf::from(certificates.get_ref());
        if !path.is_absolute() {
            let message = format!("{:?} is not an absolute path", certificates.get_ref());
            return Err(src.error_at(certificates, &certificates_key, message));
        }
        tls::load_certificates(&path)
            .map_err(|e| src.error_at(certificates, &certificates_key, e.to_string()))?;

        let alpn = match &self.alpn {
            Some(list) => {
                let alpn_key = format!("{key}.alpn");
                if list.get_ref().is_empty() {
                    let message = "must list at least one protocol (\"h2\", \"http/1.1\")";
                    return Err(src.error_at(list, &alpn_key, message));
                }
                let mut protocols: Vec<Alpn> = Vec::new();
                for (j, protocol) in list.get_ref().iter().enumerate() {
                    if protocols.contains(protocol.get_ref()) {
                        let message = format!("{:?} is listed twice", protocol.get_ref().as_str());
                        return Err(src.error_at(protocol, &format!("{alpn_key}[{j}]"), message));
                    }
                    protocols.push(*protocol.get_ref());
                }
                protocols
            }
            None => vec![Alpn::H2, Alpn::Http11],
        };

        let hsts = match &self.hsts {
            Some(value) => {
                let text = value.get_ref();
                if text.is_empty() || text.chars().any(|c| c.is_control() || !c.is_ascii()) {
                    let message = format!(
                        "{text:?} is not a header value (printable ASCII, e.g. \"max-age=31536000\")"
                    );
                    return Err(src.error_at(value, &format!("{key}.hsts"), message));
                }
                Some(text.clone())
            }
            None => None,
        };

        let backends_key = format!("{key}.backends");
        let backends = src.required(&self.backends, &table, &backends_key)?;
        let Some(vip) = vips.iter().find(|v| v.name == *backends.get_ref()) else {
            let names: Vec<&str> = vips.iter().map(|v| v.name.as_str()).collect();
            let message = format!(
                "no [[vip]] named {:?} (the frontend sends requests to a VIP's backends; VIPs: {})",
                backends.get_ref(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            );
            return Err(src.error_at(backends, &backends_key, message));
        };
        if vip.protocol != Protocol::Tcp {
            let message = format!(
                "VIP {:?} is {}; HTTP needs a tcp VIP",
                vip.name, vip.protocol
            );
            return Err(src.error_at(backends, &backends_key, message));
        }
        if vip.port == 0 && vip.backends.iter().any(|b| b.port.is_none()) {
            let message = format!(
                "VIP {:?} is on every port (port = 0): its backends need a port of their own",
                vip.name
            );
            return Err(src.error_at(backends, &backends_key, message));
        }

        let timeouts = match &self.timeouts {
            Some(raw) => raw.validate(src, &key)?,
            None => ProxyTimeouts::default(),
        };
        let limits = match &self.limits {
            Some(raw) => raw.validate(src, &key)?,
            None => ProxyLimits::default(),
        };
        Ok(FrontendConfig {
            name: name.get_ref().clone(),
            bind,
            certificates: path,
            alpn,
            min_tls: self.min_tls.unwrap_or_default(),
            redirect_http,
            hsts,
            forward: self.forward.unwrap_or_default(),
            backends: vip.name.clone(),
            timeouts,
            limits,
        })
    }
}

impl RawTimeouts {
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        frontend: &str,
    ) -> Result<ProxyTimeouts, ConfigError> {
        let defaults = ProxyTimeouts::default();
        let timeout = |value: &Option<Spanned<String>>, name: &str, default: Duration| {
            let Some(value) = value else {
                return Ok(default);
            };
            let key = format!("{frontend}.timeouts.{name}");
            match src.duration(value, &key)? {
                d if !d.is_zero() && d <= MAX_PROXY_TIMEOUT => Ok(d),
                _ => Err(src.error_at(value, &key, "must be above 0 and at most 1h")),
            }
        };
        Ok(ProxyTimeouts {
            handshake: timeout(&self.handshake, "handshake", defaults.handshake)?,
            header_read: timeout(&self.header_read, "header_read", defaults.header_read)?,
            idle: timeout(&self.idle, "idle", defaults.idle)?,
            connect: timeout(&self.connect, "connect", defaults.connect)?,
            response: timeout(&self.response, "response", defaults.response)?,
            drain: timeout(&self.drain, "drain", defaults.drain)?,
        })
    }
}

impl RawLimits {
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        frontend: &str,
    ) -> Result<ProxyLimits, ConfigError> {
        let defaults = ProxyLimits::default();
        let limit =
            |value: &Option<Spanned<Integer>>, name: &str, min: u32, max: u32, default| match value
            {
                Some(v) => src.integer(v, &format!("{frontend}.limits.{name}"), min, max),
                None => Ok(default),
            };
        Ok(ProxyLimits {
            max_header_bytes: limit(
                &self.max_header_bytes,
                "max_header_bytes",
                MIN_MAX_HEADER_BYTES,
                MAX_MAX_HEADER_BYTES,
                defaults.max_header_bytes,
            )?,
            max_h2_streams: limit(
                &self.max_h2_streams,
                "max_h2_streams",
                1,
                MAX_MAX_H2_STREAMS,
                defaults.max_h2_streams,
            )?,
            max_connections: limit(
                &self.max_connections,
                "max_connections",
                1,
                MAX_MAX_CONNECTIONS,
                defaults.max_connections,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proxy::tls::tests::{TempDir, self_signed, with_foreign_key};

    /// An agent, a VIP `web` on port 80 and `frontend` (starting at line 9).
    fn config(frontend: &str) -> String {
        format!(
            "[agent]\ninterfaces = [\"eth0\"]\n\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.10\"\nport = 80\n\n{frontend}"
        )
    }

    fn parse(frontend: &str) -> Result<Config, ConfigError> {
        Config::parse(&config(frontend), "weir.toml")
    }

    fn error(frontend: &str) -> String {
        match parse(frontend) {
            Ok(config) => panic!("accepted: {:?}", config.frontends),
            Err(e) => e.to_string(),
        }
    }

    fn certs() -> (TempDir, String) {
        let dir = TempDir::new("frontend");
        let path = dir.write("www.pem", &self_signed(&["www.example.com"]));
        (dir, path.display().to_string())
    }

    #[test]
    fn a_minimal_frontend_takes_defaults() {
        let (_dir, pem) = certs();
        let config = parse(&format!(
            "[[frontend]]\nname = \"www\"\nbind = [\"198.18.0.10:443\"]\ncertificates = \"{pem}\"\nbackends = \"web\"\n"
        ))
        .expect("valid");
        assert_eq!(
            config.frontends,
            [FrontendConfig {
                name: "www".into(),
                bind: vec!["198.18.0.10:443".parse().unwrap()],
                certificates: pem.into(),
                alpn: vec![Alpn::H2, Alpn::Http11],
                min_tls: TlsVersion::V1_2,
                redirect_http: vec![],
                hsts: None,
                forward: Forward::XForwardedFor,
                backends: "web".into(),
                timeouts: ProxyTimeouts::default(),
                limits: ProxyLimits::default(),
            }]
        );
    }

    #[test]
    fn a_full_frontend_round_trips_through_check() {
        let dir = TempDir::new("frontend-dir");
        dir.write("a.pem", &self_signed(&["a.example.com"]));
        dir.write("b.pem", &self_signed(&["*.example.org"]));
        let text = format!(
            r#"[[frontend]]
name = "www"
bind = ["198.18.0.10:443", "[2001:db8::10]:443"]
certificates = "{}"
alpn = ["http/1.1"]
min_tls = "1.3"
redirect_http = ["198.18.0.10:80"]
hsts = "max-age=31536000"
forward = "proxy-v2"
backends = "web"

[frontend.timeouts]
handshake = "5s"
header_read = "2s"
idle = "1m"
connect = "500ms"
response = "10s"
drain = "20s"

[frontend.limits]
max_header_bytes = 8192
max_h2_streams = 50
max_connections = 100
"#,
            dir.0.display()
        );
        let config = parse(&text).expect("valid");
        let frontend = &config.frontends[0];
        assert_eq!(frontend.forward, Forward::ProxyV2);
        assert_eq!(frontend.min_tls, TlsVersion::V1_3);
        assert_eq!(frontend.alpn, [Alpn::Http11]);
        assert_eq!(frontend.timeouts.connect, Duration::from_millis(500));
        assert_eq!(frontend.limits.max_h2_streams, 50);
        // `weir check` prints the file format, which parses back to the same.
        let printed = toml::to_string_pretty(&config).expect("serializes");
        assert!(printed.contains("[[frontend]]"), "{printed}");
        let again = Config::parse(&printed, "printed").expect("printed config parses");
        assert_eq!(again, config);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let (dir, pem) = certs();
        let head = format!(
            "[[frontend]]\nname = \"www\"\nbind = [\"198.18.0.10:443\"]\ncertificates = \"{pem}\"\nbackends = \"web\"\n"
        );
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{head}colour = \"blue\"\n"),
                "weir.toml:14:1: frontend[0].colour: unknown field `colour`",
            ),
            (
                "[[frontend]]\nname = \"www\"\n".into(),
                "weir.toml:9:1: frontend[0].bind: required key is missing",
            ),
            (
                head.replace(&pem, "/nonexistent/www.pem"),
                "weir.toml:12:16: frontend[0].certificates: cannot read /nonexistent/www.pem",
            ),
            (
                head.replace("\"web\"", "\"api\""),
                "weir.toml:13:12: frontend[0].backends: no [[vip]] named \"api\"",
            ),
            (
                head.replace("198.18.0.10:443", "198.18.0.10"),
                "weir.toml:11:9: frontend[0].bind[0]: \"198.18.0.10\" is not an address:port",
            ),
            (
                format!("{head}alpn = [\"h3\"]\n"),
                "weir.toml:14:9: frontend[0].alpn[0]: unknown variant `h3`",
            ),
            (
                format!("{head}min_tls = \"1.1\"\n"),
                "weir.toml:14:11: frontend[0].min_tls: unknown variant `1.1`",
            ),
            (
                format!("{head}forward = \"x-real-ip\"\n"),
                "weir.toml:14:11: frontend[0].forward: unknown variant `x-real-ip`",
            ),
            (
                format!("{head}[frontend.timeouts]\nidle = \"0s\"\n"),
                "weir.toml:15:8: frontend[0].timeouts.idle: must be above 0 and at most 1h",
            ),
            (
                format!("{head}[frontend.limits]\nmax_header_bytes = 100\n"),
                "weir.toml:15:20: frontend[0].limits.max_header_bytes: must be in 8192..=1048576",
            ),
            (
                format!("{head}redirect_http = [\"198.18.0.10:443\"]\n"),
                "weir.toml:14:18: frontend[0].redirect_http[0]: 198.18.0.10:443 is already listened on by frontend[0].bind[0]",
            ),
            (
                format!(
                    "{head}\n{}",
                    head.replace("198.18.0.10:443", "198.18.0.11:443")
                ),
                "weir.toml:16:8: frontend[1].name: frontend name \"www\" is already used by frontend[0]",
            ),
        ];
        for (frontend, expected) in cases {
            let message = error(&frontend);
            assert!(
                message.starts_with(expected),
                "{message}\n  expected: {expected}"
            );
        }
        drop(dir);
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let dir = TempDir::new("mismatch");
        let path = dir.write("bad.pem", &with_foreign_key(&["one.test"]));
        let message = error(&format!(
            "[[frontend]]\nname = \"www\"\nbind = [\"198.18.0.10:443\"]\ncertificates = \"{}\"\nbackends = \"web\"\n",
            path.display()
        ));
        assert!(
            message.starts_with("weir.toml:12:16: frontend[0].certificates: ")
                && message.ends_with("bad.pem: the private key does not match the certificate"),
            "{message}"
        );
    }
}
