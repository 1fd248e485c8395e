//! `[[frontend]]`: the TLS tier's listeners (`weir proxy`). Each terminates HTTPS on its
//! `bind` addresses with its `certificates` and sends plain HTTP to the backends of one
//! VIP of the file, following the agent's health and admin states.
//!
//! Validated as the rest of the file: every error names the file, line, column and key.
//! The certificates are loaded and checked (a chain, a key that matches it, a name), so
//! that `weir check` refuses a file `weir proxy` could not serve.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    ConfigError, Protocol, VipConfig,
    duration::duration_text,
    raw::Integer,
    source::{Source, Step},
    validate::valid_vip_name,
};
use crate::proxy::tls;

/// Defaults of `[frontend.timeouts]`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout of any kind.
pub const MAX_PROXY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Defaults and bounds of `[frontend.limits]`.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 16 * 1024;
/// hyper reads a request head in a buffer of at least 8 KiB.
pub const MIN_MAX_HEADER_BYTES: u32 = 8 * 1024;
pub const MAX_MAX_HEADER_BYTES: u32 = 1024 * 1024;
pub const DEFAULT_MAX_H2_STREAMS: u32 = 100;
pub const MAX_MAX_H2_STREAMS: u32 = 10_000;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub const MAX_MAX_CONNECTIONS: u32 = 1_000_000;

/// A validated `[[frontend]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendConfig {
    pub name: String,
    /// Where HTTPS is served; unique across frontends.
    pub bind: Vec<SocketAddr>,
    /// A PEM file, or a directory of `*.pem` files (one chain and key each, the first in
    /// name order is the default).
    pub certificates: PathBuf,
    /// Offered in this order of preference.
    pub alpn: Vec<Alpn>,
    pub min_tls: TlsVersion,
    /// Where plain HTTP is answered with a redirect to https.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redirect_http: Vec<SocketAddr>,
    /// The Strict-Transport-Security value added to every answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
    pub forward: Forward,
    /// The VIP (of this file) whose backends serve the requests.
    pub backends: String,
    pub timeouts: ProxyTimeouts,
    pub limits: ProxyLimits,
}

/// An ALPN protocol a frontend offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alpn {
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "http/1.1")]
    Http11,
}

impl Alpn {
    pub fn as_str(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http11 => "http/1.1",
        }
    }
}

/// The oldest TLS version a frontend accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// How a backend learns the client's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forward {
    /// X-Forwarded-For (appended), X-Forwarded-Proto and X-Forwarded-Port (set).
    #[default]
    XForwardedFor,
    /// A PROXY protocol v2 header on each backend connection; a backend connection then
    /// serves one client connection only.
    ProxyV2,
    None,
}

/// `[frontend.timeouts]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyTimeouts {
    /// From accept to the end of the TLS handshake.
    #[serde(with = "duration_text")]
    pub handshake: Duration,
    /// To receive a whole request head (slowloris).
    #[serde(with = "duration_text")]
    pub header_read: Duration,
    /// A client connection with no byte in either direction for this long is closed.
    #[serde(with = "duration_text")]
    pub idle: Duration,
    /// To connect to a backend.
    #[serde(with = "duration_text")]
    pub connect: Duration,
    /// From sending the request to the backend's response head.
    #[serde(with = "duration_text")]
    pub response: Duration,
    /// How long connections may finish after the proxy was asked to stop.
    #[serde(with = "duration_text")]
    pub drain: Duration,
}

impl Default for ProxyTimeouts {
    fn default() -> Self {
        ProxyTimeouts {
            handshake: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            connect: DEFAULT_CONNECT_TIMEOUT,
            response: DEFAULT_RESPONSE_TIMEOUT,
            drain: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// `[frontend.limits]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyLimits {
    /// Largest request head (HTTP/1.1: answered 431) or header list (HTTP/2).
    pub max_header_bytes: u32,
    /// Concurrent streams per HTTP/2 connection.
    pub max_h2_streams: u32,
    /// Open client connections; more wait in the kernel's accept queue.
    pub max_connections: u32,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_h2_streams: DEFAULT_MAX_H2_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrontend {
    name: Option<Spanned<String>>,
    bind: Option<Spanned<Vec<Spanned<String>>>>,
    certificates: Option<Spanned<String>>,
    alpn: Option<Spanned<Vec<Spanned<Alpn>>>>,
    min_tls: Option<TlsVersion>,
    redirect_http: Option<Vec<Spanned<String>>>,
    hsts: Option<Spanned<String>>,
    forward: Option<Forward>,
    backends: Option<Spanned<String>>,
    timeouts: Option<RawTimeouts>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    handshake: Option<Spanned<String>>,
    header_read: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    connect: Option<Spanned<String>>,
    response: Option<Spanned<String>>,
    drain: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_header_bytes: Option<Spanned<Integer>>,
    max_h2_streams: Option<Spanned<Integer>>,
    max_connections: Option<Spanned<Integer>>,
}

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
    fn validate(
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
    fn validate(&self, src: &Source<'_>, frontend: &str) -> Result<ProxyTimeouts, ConfigError> {
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
    fn validate(&self, src: &Source<'_>, frontend: &str) -> Result<ProxyLimits, ConfigError> {
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
