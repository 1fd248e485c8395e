//! Durations as the file and the CLI write them.

use std::time::Duration;

/// Durations as the file writes them: a number and a unit, `ms`, `s`, `m` or `h`
/// ("500ms", "2s", "1.5s", "1m"), to the millisecond.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    // The fraction, in thousandths of the unit; finer than a millisecond is refused.
    let thousandths: u64 = if fraction.is_empty() {
        0
    } else if fraction.len() <= 3 {
        format!("{fraction:0<3}").parse().ok()?
    } else {
        return None;
    };
    let fraction_ms = thousandths * unit_ms;
    if !fraction_ms.is_multiple_of(1000) {
        return None;
    }
    whole
        .checked_mul(unit_ms)?
        .checked_add(fraction_ms / 1000)
        .map(Duration::from_millis)
}

pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms != 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms != 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

pub(crate) mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

/// As the file writes it: whole seconds as `"60s"`, anything else in milliseconds.
pub(crate) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d.as_millis() {
        ms if ms % 1000 == 0 => s.serialize_str(&format!("{}s", ms / 1000)),
        ms => s.serialize_str(&format!("{ms}ms")),
    }
}
