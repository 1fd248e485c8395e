//! `[vip.health]`.

use std::time::Duration;

use toml::Spanned;

use super::super::{raw::*, source::*, *};

impl RawHealth {
    /// Validates `vip[i].health` of a VIP of `protocol` on `vip_port`.
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        i: usize,
        protocol: Protocol,
        vip_port: u16,
    ) -> Result<HealthConfig, ConfigError> {
        let key = format!("vip[{i}].health");
        let defaults = HealthConfig::default_for(protocol, vip_port);
        let kind = self.kind.as_ref().map_or(defaults.kind, |k| *k.get_ref());
        let is_http = matches!(kind, CheckKind::Http | CheckKind::Https);
        // A key that the kind does not use is an error, not silently ignored.
        let only_for =
            |present: Option<usize>, name: &str, kinds: &str, applies: bool| match present {
                Some(at) if !applies => Err(src.error(
                    at,
                    &format!("{key}.{name}"),
                    format!("only used by kind {kinds}, not by kind = \"{kind}\""),
                )),
                _ => Ok(()),
            };
        let start = |v: Option<&Spanned<String>>| v.map(|v| v.span().start);
        only_for(start(self.path.as_ref()), "path", "http or https", is_http)?;
        only_for(start(self.host.as_ref()), "host", "http or https", is_http)?;
        only_for(
            self.expect_status.as_ref().map(|v| v.span().start),
            "expect_status",
            "http or https",
            is_http,
        )?;
        only_for(
            self.command.as_ref().map(|v| v.span().start),
            "command",
            "exec",
            kind == CheckKind::Exec,
        )?;

        let port = match &self.port {
            Some(p) => Some(src.integer(p, &format!("{key}.port"), 1, u16::MAX)?),
            None => None,
        };
        let path = match &self.path {
            Some(path) => {
                let text = path.get_ref();
                if !text.starts_with('/')
                    || text.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    let message = format!(
                        "{text:?} is not a request path (it starts with '/' and has no white space)"
                    );
                    return Err(src.error_at(path, &format!("{key}.path"), message));
                }
                Some(text.clone())
            }
            None if is_http => Some("/".to_owned()),
            None => None,
        };
        let host = match &self.host {
            Some(host) => {
                let text = host.get_ref();
                if text.is_empty()
                    || text.len() > 255
                    || text.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    let message = format!(
                        "{text:?} is not a host name (1 to 255 characters, no white space)"
                    );
                    return Err(src.error_at(host, &format!("{key}.host"), message));
                }
                Some(text.clone())
            }
            None => None,
        };
        let expect_status = match &self.expect_status {
            Some(list) => {
                if list.get_ref().is_empty() {
                    let message = "must list at least one status";
                    return Err(src.error_at(list, &format!("{key}.expect_status"), message));
                }
                let mut statuses = Vec::with_capacity(list.get_ref().len());
                for (j, status) in list.get_ref().iter().enumerate() {
                    statuses.push(src.integer(
                        status,
                        &format!("{key}.expect_status[{j}]"),
                        100u16,
                        599,
                    )?);
                }
                Some(statuses)
            }
            None => None,
        };
        let duration = |value: &Option<Spanned<String>>, name: &str, default: Duration| {
            let Some(value) = value else {
                return Ok(default);
            };
            match src.duration(value, &format!("{key}.{name}"))? {
                d if !d.is_zero() && d <= MAX_CHECK_DURATION => Ok(d),
                _ => Err(src.error_at(
                    value,
                    &format!("{key}.{name}"),
                    "must be above 0 and at most 1h",
                )),
            }
        };
        // HAProxy's semantics: fastinter and downinter default to the interval.
        let interval = duration(&self.interval, "interval", defaults.interval)?;
        let fastinter = duration(&self.fastinter, "fastinter", interval)?;
        let downinter = duration(&self.downinter, "downinter", interval)?;
        let timeout = duration(&self.timeout, "timeout", defaults.timeout)?;
        let count = |value: &Option<Spanned<Integer>>, name: &str, default: u32| match value {
            Some(v) => src.integer(v, &format!("{key}.{name}"), 1, MAX_RISE_FALL),
            None => Ok(default),
        };
        let rise = count(&self.rise, "rise", defaults.rise)?;
        let fall = count(&self.fall, "fall", defaults.fall)?;
        let command = match (&self.command, kind) {
            (Some(list), _) => {
                let words = list.get_ref();
                if words.first().is_none_or(|w| w.get_ref().is_empty()) {
                    let message = "needs a program to run (the first word)";
                    return Err(src.error_at(list, &format!("{key}.command"), message));
                }
                for (j, word) in words.iter().enumerate() {
                    if let Some(unknown) = unknown_placeholder(word.get_ref()) {
                        let message = format!(
                            "unknown placeholder {unknown}; use {}",
                            COMMAND_PLACEHOLDERS.join(", ")
                        );
                        return Err(src.error_at(word, &format!("{key}.command[{j}]"), message));
                    }
                }
                Some(words.iter().map(|w| w.get_ref().clone()).collect())
            }
            (None, CheckKind::Exec) => {
                let at = src.table(&[Step::Key("vip"), Step::Index(i), Step::Key("health")]);
                return Err(src.error(
                    at,
                    &format!("{key}.command"),
                    "kind = \"exec\" needs a command",
                ));
            }
            (None, _) => None,
        };
        Ok(HealthConfig {
            kind,
            port,
            path,
            host,
            expect_status,
            interval,
            fastinter,
            downinter,
            timeout,
            rise,
            fall,
            command,
        })
    }
}

/// The first `{…}` in `word` that is not one of [`COMMAND_PLACEHOLDERS`].
pub(super) fn unknown_placeholder(word: &str) -> Option<&str> {
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let close = after.find('}').map_or(after.len(), |c| c + 1);
        let candidate = &after[..close];
        if !COMMAND_PLACEHOLDERS.contains(&candidate) {
            return Some(candidate);
        }
        rest = &after[close..];
    }
    None
}
