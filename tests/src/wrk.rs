//! wrk's report (run with `--latency`), as the benches read it.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// What the benches take from wrk's output.
#[derive(Clone, Copy, Debug)]
pub struct WrkReport {
    pub requests: u64,
    /// Socket errors and non-2xx/3xx answers.
    pub errors: u64,
    pub p50: Duration,
    pub p99: Duration,
}

impl WrkReport {
    pub fn parse(text: &str) -> Result<WrkReport> {
        let percentile = |label: &str| -> Result<Duration> {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(label))
                .with_context(|| format!("no {label} line in wrk's output:\n{text}"))?;
            duration(line.split_whitespace().nth(1).unwrap_or_default())
        };
        let requests = text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .with_context(|| format!("no request count in wrk's output:\n{text}"))?
            .0
            .parse()?;
        // "Socket errors: connect 0, read 0, write 0, timeout 0" and "Non-2xx or 3xx
        // responses: N".
        let mut errors = 0;
        for line in text.lines().map(str::trim) {
            if let Some(counts) = line.strip_prefix("Socket errors:") {
                errors += counts
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
                errors += count.trim().parse::<u64>().unwrap_or(0);
            }
        }
        Ok(WrkReport {
            requests,
            errors,
            p50: percentile("50%")?,
            p99: percentile("99%")?,
        })
    }
}

/// wrk's `812.00us`, `1.23ms`, `2.00s`.
fn duration(text: &str) -> Result<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        bail!("not a wrk duration: {text:?}");
    };
    Ok(Duration::from_secs_f64(number.parse::<f64>()? * scale))
}
