//! `[stats]`: the stats page and `/metrics`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use super::super::{raw::*, source::*, *};

impl RawStats {
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        agent: &AgentConfig,
    ) -> Result<StatsConfig, ConfigError> {
        let listen_value = src.required(&self.listen, &[Step::Key("stats")], "stats.listen")?;
        let Ok(listen) = listen_value.get_ref().parse::<SocketAddr>() else {
            let message = format!(
                "{:?} is not an address:port (e.g. \"198.18.0.2:8404\")",
                listen_value.get_ref()
            );
            return Err(src.error_at(listen_value, "stats.listen", message));
        };
        if agent.api_listen == Some(listen) {
            let message = format!("{listen} is agent.api_listen already");
            return Err(src.error_at(listen_value, "stats.listen", message));
        }
        let uri = match &self.uri {
            Some(uri) => {
                check_uri(uri.get_ref()).map_err(|m| src.error_at(uri, "stats.uri", m))?;
                uri.get_ref().clone()
            }
            None => DEFAULT_STATS_URI.to_owned(),
        };
        let auth = match &self.auth {
            Some(path) if !Path::new(path.get_ref()).is_absolute() => {
                let message = format!("{:?} is not an absolute path", path.get_ref());
                return Err(src.error_at(path, "stats.auth", message));
            }
            Some(path) => Some(PathBuf::from(path.get_ref())),
            None => None,
        };
        // Without users, only this host may look (and, with admin, act).
        if auth.is_none() && !listen.ip().is_loopback() {
            let message = format!(
                "{listen} is not a loopback address and stats.auth is not set: without a users file the stats page only listens on 127.0.0.1 or ::1"
            );
            return Err(src.error_at(listen_value, "stats.listen", message));
        }
        let metrics_auth = match &self.metrics_auth {
            Some(value) if *value.get_ref() && auth.is_none() => {
                let message = "needs stats.auth (the users /metrics asks for)";
                return Err(src.error_at(value, "stats.metrics_auth", message));
            }
            Some(value) => *value.get_ref(),
            None => false,
        };
        let refresh = match &self.refresh {
            Some(value) => {
                let refresh = src.duration(value, "stats.refresh")?;
                if !STATS_REFRESH.contains(&refresh) {
                    return Err(src.error_at(
                        value,
                        "stats.refresh",
                        "must be at least 1s and at most 1h",
                    ));
                }
                refresh
            }
            None => DEFAULT_STATS_REFRESH,
        };
        Ok(StatsConfig {
            listen,
            uri,
            auth,
            admin: self.admin.unwrap_or(false),
            metrics_auth,
            refresh,
        })
    }
}

/// A path of its own: absolute, plain characters, not `/metrics` (served beside it).
fn check_uri(uri: &str) -> Result<(), String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~');
    if !uri.starts_with('/') || uri.len() > 128 || !uri.bytes().all(plain) {
        return Err(format!(
            "{uri:?} is not a path: it starts with '/' and has at most 128 letters, digits, '/', '-', '_', '.' or '~'"
        ));
    }
    if uri == "/metrics" {
        return Err("\"/metrics\" is where the Prometheus metrics are served".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, StatsConfig};

    fn parse(stats: &str) -> Result<Config, String> {
        Config::parse(
            &format!("[agent]\ninterfaces = [\"eth0\"]\n[stats]\n{stats}"),
            "weir.toml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_a_full_table() {
        let config = parse("listen = \"127.0.0.1:8404\"\n").unwrap();
        assert_eq!(
            config.stats,
            Some(StatsConfig {
                listen: "127.0.0.1:8404".parse().unwrap(),
                uri: "/stats".into(),
                auth: None,
                admin: false,
                metrics_auth: false,
                refresh: Duration::from_secs(5),
            })
        );
        let config = parse(
            "listen = \"198.18.0.2:8404\"\nuri = \"/haproxy\"\nauth = \"/etc/weir/stats-users\"\n\
             admin = true\nmetrics_auth = true\nrefresh = \"10s\"\n",
        )
        .unwrap();
        let stats = config.stats.unwrap();
        assert_eq!(stats.uri, "/haproxy");
        assert!(stats.admin && stats.metrics_auth);
        assert_eq!(stats.refresh, Duration::from_secs(10));
        assert_eq!(
            stats.auth.as_deref(),
            Some(std::path::Path::new("/etc/weir/stats-users"))
        );
    }

    #[test]
    fn without_users_only_loopback() {
        assert_eq!(
            parse("listen = \"198.18.0.2:8404\"\n").unwrap_err(),
            "weir.toml:4:10: stats.listen: 198.18.0.2:8404 is not a loopback address and stats.auth is not set: without a users file the stats page only listens on 127.0.0.1 or ::1"
        );
        assert!(parse("listen = \"[::1]:8404\"\nadmin = true\n").is_ok());
        assert_eq!(
            parse("listen = \"127.0.0.1:8404\"\nmetrics_auth = true\n").unwrap_err(),
            "weir.toml:5:16: stats.metrics_auth: needs stats.auth (the users /metrics asks for)"
        );
    }

    #[test]
    fn errors_name_key_and_position() {
        let cases = [
            (
                "uri = \"/x\"\n",
                "weir.toml:3:1: stats.listen: required key is missing",
            ),
            (
                "listen = \"8404\"\n",
                "weir.toml:4:10: stats.listen: \"8404\" is not an address:port (e.g. \"198.18.0.2:8404\")",
            ),
            (
                "listen = \"127.0.0.1:1\"\nuri = \"stats\"\n",
                "weir.toml:5:7: stats.uri: \"stats\" is not a path: it starts with '/' and has at most 128 letters, digits, '/', '-', '_', '.' or '~'",
            ),
            (
                "listen = \"127.0.0.1:1\"\nuri = \"/metrics\"\n",
                "weir.toml:5:7: stats.uri: \"/metrics\" is where the Prometheus metrics are served",
            ),
            (
                "listen = \"127.0.0.1:1\"\nauth = \"users\"\n",
                "weir.toml:5:8: stats.auth: \"users\" is not an absolute path",
            ),
            (
                "listen = \"127.0.0.1:1\"\nrefresh = \"100ms\"\n",
                "weir.toml:5:11: stats.refresh: must be at least 1s and at most 1h",
            ),
            (
                "listen = \"127.0.0.1:1\"\npassword = \"hunter2\"\n",
                "weir.toml:5:1: stats.password: unknown field `password`, expected one of `listen`, `uri`, `auth`, `admin`, `metrics_auth`, `refresh`",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).unwrap_err(), expected, "{text}");
        }
    }
}
