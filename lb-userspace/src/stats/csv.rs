//! The page's `;csv` export: HAProxy's CSV (`show stat`), with its column names and
//! meanings where weir has the same thing, in HAProxy's order, and weir's own columns
//! after them. One line per backend (`type` 2, `svname` its address) and one per VIP
//! (`type` 1, `svname` `BACKEND`).

use std::fmt::Write;

use crate::{
    api::model::VipStatus,
    stats::overview::{BackendStatus, NewFlowRates, Overview},
};

/// HAProxy's names first (scur: current flows, stot: flows in total, bin: bytes in,
/// chkfail / chkdown: failed checks / UP→DOWN changes, lastchg / downtime: seconds,
/// rate: new flows per second, check_duration: ms), then weir's.
pub const COLUMNS: [&str; 18] = [
    "pxname",
    "svname",
    "scur",
    "stot",
    "bin",
    "status",
    "weight",
    "act",
    "chkfail",
    "chkdown",
    "lastchg",
    "downtime",
    "type",
    "rate",
    "check_status",
    "check_duration",
    "last_chk",
    "pkts_in",
];

/// The CSV text, with HAProxy's `# ` header line. Fields never contain a comma (names
/// and reasons have theirs replaced).
pub fn render(overview: &Overview, rates: &NewFlowRates, now_ms: u64) -> String {
    let mut out = format!("# {},\n", COLUMNS.join(","));
    let field = |text: &str| text.replace([',', '\n', '\r'], " ");
    for vip in &overview.vips {
        for backend in &vip.backends {
            let health = &backend.health;
            let status = BackendStatus::of(backend);
            let traffic = overview
                .backend_report(&vip.name, backend.address)
                .map(|b| b.traffic)
                .unwrap_or_default();
            let (check_status, check_duration, last_chk) = match &health.last_check {
                Some(last) => (
                    if last.passed { "L4OK" } else { "L4KO" },
                    (last.duration_us / 1000).to_string(),
                    field(&last.reason),
                ),
                None => ("", String::new(), String::new()),
            };
            let lastchg = if health.since_unix_ms == 0 {
                String::new()
            } else {
                (now_ms.saturating_sub(health.since_unix_ms) / 1000).to_string()
            };
            let active = u8::from(status.takes_new_flows());
            let rate = rates
                .backend(&vip.name, backend.address)
                .map_or(0, |r| r.round() as u64);
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{active},{},{},{lastchg},{},2,{rate},{check_status},{check_duration},{last_chk},{},",
                vip.name,
                backend.address,
                backend.flows,
                traffic.new_flows,
                traffic.bytes,
                status.metric_state(),
                backend.weight,
                health.failed_checks,
                health.down_transitions,
                health.downtime_ms / 1000,
                traffic.packets,
            );
        }
        let traffic = overview
            .vip_report(&vip.name)
            .map(|v| v.traffic)
            .unwrap_or_default();
        let active = BackendStatus::active_backends(vip);
        let status = match vip.status {
            VipStatus::Up => "UP",
            VipStatus::Down => "DOWN",
        };
        let _ = writeln!(
            out,
            "{},BACKEND,{},{},{},{status},{},{active},,,,,1,{},,,,{},",
            vip.name,
            vip.backends.iter().map(|b| b.flows).sum::<u64>(),
            traffic.new_flows,
            traffic.bytes,
            vip.backends.iter().map(|b| b.weight as u64).sum::<u64>(),
            rates.vip(&vip.name).map_or(0, |r| r.round() as u64),
            traffic.packets,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::overview::tests::sample;

    #[test]
    fn haproxy_columns_one_line_per_backend_and_per_vip() {
        let mut rates = NewFlowRates::default();
        rates.vips.insert("web".into(), 12.4);
        let csv = render(&sample(), &rates, 61_000);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some(
                "# pxname,svname,scur,stot,bin,status,weight,act,chkfail,chkdown,lastchg,downtime,type,rate,check_status,check_duration,last_chk,pkts_in,"
            )
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 7);
        for row in &rows {
            assert_eq!(row.len(), COLUMNS.len() + 1, "{row:?}");
        }
        let column = |row: &[&str], name: &str| {
            row[COLUMNS.iter().position(|c| *c == name).unwrap()].to_owned()
        };
        let down = &rows[1];
        assert_eq!(column(down, "svname"), "198.18.0.12");
        assert_eq!(column(down, "status"), "DOWN");
        assert_eq!(column(down, "act"), "0");
        assert_eq!(column(down, "chkfail"), "4");
        assert_eq!(column(down, "chkdown"), "1");
        assert_eq!(column(down, "lastchg"), "60");
        assert_eq!(column(down, "downtime"), "2");
        assert_eq!(column(down, "type"), "2");
        assert_eq!(column(down, "check_status"), "L4KO");
        assert_eq!(column(down, "last_chk"), "connection refused");
        assert_eq!(column(down, "bin"), "1000");
        let vip = &rows[6];
        assert_eq!(column(vip, "svname"), "BACKEND");
        assert_eq!(column(vip, "type"), "1");
        assert_eq!(column(vip, "act"), "2");
        assert_eq!(column(vip, "scur"), "18");
        assert_eq!(column(vip, "rate"), "12");
        assert_eq!(column(vip, "pkts_in"), "60");
    }
}
