//! The stats page: server-rendered HTML in the shape and colours of HAProxy's (one table
//! per VIP, a row per backend coloured by its status), reloading itself every
//! `stats.refresh`. No script: with `admin`, each row has a form that posts to the page.

use std::{fmt::Write, time::Duration};

use crate::{
    api::model::{BackendView, VipStatus, VipView},
    cli::{human_duration, si, vip_address},
    proxy::ProxyStatus,
    stats::overview::{BackendStatus, NewFlowRates, Overview},
};

/// What the page needs besides the overview.
pub struct PageContext<'a> {
    pub uri: &'a str,
    pub refresh: Duration,
    /// With admin forms: the user's CSRF token.
    pub admin_token: Option<String>,
    /// Unix time now, in milliseconds.
    pub now_ms: u64,
    pub rates: &'a NewFlowRates,
    /// A line to show on top (the outcome of an admin action).
    pub notice: Option<&'a str>,
}

/// HAProxy's stats page colours, by its class names.
const STYLE: &str = "
body { font-family: arial, helvetica, sans-serif; font-size: 12px; color: black; background: white; }
h1 { font-size: 16pt; margin: 4px 0; color: #ffffff; background: #20d0d0; padding: 2px 6px; }
h2 { font-size: 13pt; margin: 12px 0 4px 0; }
table.tbl { border-collapse: collapse; border: 1px solid #808080; margin-bottom: 10px; }
table.tbl td, table.tbl th { border: 1px solid #808080; padding: 1px 4px; text-align: right; white-space: nowrap; }
table.tbl td.name, table.tbl td.text { text-align: left; }
th.pxname { background: #b00040; color: #ffff40; font-weight: bold; text-align: left !important; }
tr.titre th { background: #20d0d0; color: #000000; }
tr.backend td { background: #e8e8d0; font-weight: bold; }
.active_up { background: #c0ffc0; }
.active_going_down { background: #ffffa0; }
.active_down { background: #ff9090; }
.active_going_up { background: #ffd020; }
.active_draining { background: #20a0ff; }
.maintain { background: #c07820; }
.active_no_check { background: #e0e0e0; }
.vip_down { background: #ff9090; }
table.info td { padding: 1px 8px 1px 0; }
p.notice { background: #ffffa0; border: 1px solid #808080; padding: 4px; }
form { margin: 0; }
";

/// The whole page.
pub fn render(overview: &Overview, context: &PageContext<'_>) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{}\">\
         <title>weir statistics</title><style>{STYLE}</style></head><body>\n\
         <h1>weir statistics report</h1>\n",
        context.refresh.as_secs().max(1)
    );
    if let Some(notice) = context.notice {
        let _ = writeln!(page, "<p class=\"notice\">{}</p>", escape(notice));
    }
    node(&mut page, overview, context);
    for vip in &overview.vips {
        vip_table(&mut page, overview, vip, context);
    }
    if let Some(tls) = &overview.tls {
        frontends(&mut page, tls);
    }
    counters(&mut page, overview);
    let _ = write!(
        page,
        "<p>CSV export: <a href=\"{uri};csv\">{uri};csv</a> · Prometheus: <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n",
        uri = escape(context.uri)
    );
    page
}

/// The node: version, uptime, VRRP, announced VIPs, the census.
fn node(page: &mut String, overview: &Overview, context: &PageContext<'_>) {
    let status = &overview.status;
    let vrrp = match &status.vrrp {
        Some(vrrp) => {
            vrrp.instances
                .iter()
                .map(|i| format!("{} {}", i.family, i.state.to_string().to_uppercase()))
                .collect::<Vec<_>>()
                .join(", ")
                + &format!(
                    " (VRID {}, priority {})",
                    vrrp.vrid, vrrp.effective_priority
                )
        }
        None => "not configured".to_owned(),
    };
    let announced = overview.announced();
    let announced = if announced.is_empty() {
        "none".to_owned()
    } else {
        announced
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let census = &overview.census;
    let sampled = match census.at_unix_ms {
        Some(at) => format!(
            "{} live flows counted {} ago (a walk of {} ms); connection table {} / {}, NAT {} / {}",
            overview
                .vips
                .iter()
                .flat_map(|v| &v.backends)
                .map(|b| b.flows)
                .sum::<u64>(),
            human_duration(context.now_ms.saturating_sub(at) / 1000),
            census.walk_ms,
            census.conntrack_entries,
            census.conntrack_capacity,
            census.nat_entries,
            census.nat_capacity
        ),
        None => "not counted yet".to_owned(),
    };
    let interfaces: Vec<String> = status
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode))
        .collect();
    let rows = [
        ("version", format!("weir {}", status.version)),
        ("uptime", human_duration(status.uptime_seconds)),
        ("interfaces", interfaces.join(", ")),
        ("VRRP", vrrp),
        ("announced VIPs", announced),
        ("flows", sampled),
    ];
    page.push_str("<table class=\"info\" id=\"node\">\n");
    for (name, value) in rows {
        let _ = writeln!(
            page,
            "<tr><td><b>{name}</b></td><td id=\"node-{}\">{}</td></tr>",
            name.replace(' ', "-").to_lowercase(),
            escape(&value)
        );
    }
    page.push_str("</table>\n");
}

const COLUMNS: [&str; 14] = [
    "Backend", "Status", "LastChk", "Wght", "Cur", "Total", "Rate", "Packets", "Bytes", "Chk",
    "Dwn", "Dwntme", "LastChg", "Checks",
];

fn vip_table(page: &mut String, overview: &Overview, vip: &VipView, context: &PageContext<'_>) {
    let columns = COLUMNS.len() + usize::from(context.admin_token.is_some());
    let address = vip_address(vip.address, vip.port);
    let _ = write!(
        page,
        "<table class=\"tbl\" id=\"vip-{name}\">\n<tr><th class=\"pxname\" colspan=\"{columns}\">{name} \
         {address}/{} ({})</th></tr>\n<tr class=\"titre\">",
        vip.protocol,
        vip.forwarding,
        name = escape(&vip.name),
    );
    for column in COLUMNS {
        let _ = write!(page, "<th>{column}</th>");
    }
    if context.admin_token.is_some() {
        page.push_str("<th>Action</th>");
    }
    page.push_str("</tr>\n");
    for backend in &vip.backends {
        backend_row(page, overview, vip, backend, context);
    }
    // The VIP's own row, as HAProxy's BACKEND line.
    let traffic = overview.vip_report(&vip.name).map(|v| v.traffic);
    let status = match vip.status {
        VipStatus::Up => "UP",
        VipStatus::Down => "DOWN",
    };
    let class = match vip.status {
        VipStatus::Up => "backend",
        VipStatus::Down => "backend vip_down",
    };
    let cells = [
        "VIP".to_owned(),
        status.to_owned(),
        String::new(),
        vip.backends
            .iter()
            .map(|b| b.weight as u64)
            .sum::<u64>()
            .to_string(),
        vip.backends
            .iter()
            .map(|b| b.flows)
            .sum::<u64>()
            .to_string(),
        traffic.map_or_else(String::new, |t| t.new_flows.to_string()),
        context.rates.vip(&vip.name).map_or_else(String::new, si),
        traffic.map_or_else(String::new, |t| t.packets.to_string()),
        traffic.map_or_else(String::new, |t| t.bytes.to_string()),
    ];
    let _ = write!(
        page,
        "<tr class=\"{class}\" data-vip=\"{}\" data-status=\"{status}\">",
        escape(&vip.name)
    );
    for cell in &cells {
        let _ = write!(page, "<td>{}</td>", escape(cell));
    }
    let _ = writeln!(
        page,
        "<td colspan=\"{}\"></td></tr>\n</table>",
        columns - cells.len()
    );
}

fn backend_row(
    page: &mut String,
    overview: &Overview,
    vip: &VipView,
    backend: &BackendView,
    context: &PageContext<'_>,
) {
    let status = BackendStatus::of(backend);
    let health = &backend.health;
    let traffic = overview
        .backend_report(&vip.name, backend.address)
        .map(|b| b.traffic);
    let last_check = match &health.last_check {
        None => "-".to_owned(),
        Some(last) => format!(
            "{} {}, {} ms",
            if last.passed { "L4OK" } else { "L4KO" },
            last.reason,
            last.duration_us / 1000
        ),
    };
    let since = if health.since_unix_ms == 0 {
        "-".to_owned()
    } else {
        human_duration(context.now_ms.saturating_sub(health.since_unix_ms) / 1000)
    };
    let cells = [
        backend.address.to_string(),
        status.label().to_owned(),
        last_check,
        backend.weight.to_string(),
        backend.flows.to_string(),
        traffic.map_or_else(String::new, |t| t.new_flows.to_string()),
        context
            .rates
            .backend(&vip.name, backend.address)
            .map_or_else(String::new, si),
        traffic.map_or_else(String::new, |t| t.packets.to_string()),
        traffic.map_or_else(String::new, |t| t.bytes.to_string()),
        health.failed_checks.to_string(),
        health.down_transitions.to_string(),
        human_duration(health.downtime_ms / 1000),
        since,
        format!("{} {}", health.check, health.checks),
    ];
    let _ = write!(
        page,
        "<tr class=\"{}\" data-vip=\"{}\" data-backend=\"{}\" data-status=\"{}\">",
        status.css_class(),
        escape(&vip.name),
        backend.address,
        status.metric_state()
    );
    for (i, cell) in cells.iter().enumerate() {
        let class = if matches!(i, 0 | 2) {
            " class=\"text\""
        } else {
            ""
        };
        let _ = write!(page, "<td{class}>{}</td>", escape(cell));
    }
    if let Some(token) = &context.admin_token {
        let _ = write!(
            page,
            "<td><form method=\"post\" action=\"{uri}\">\
             <input type=\"hidden\" name=\"token\" value=\"{token}\">\
             <input type=\"hidden\" name=\"vip\" value=\"{vip}\">\
             <input type=\"hidden\" name=\"backend\" value=\"{address}\">\
             <select name=\"action\"><option value=\"ready\">set READY</option>\
             <option value=\"drain\">set DRAIN</option><option value=\"maint\">set MAINT</option></select>\
             <button type=\"submit\">Apply</button></form></td>",
            uri = escape(context.uri),
            token = escape(token),
            vip = escape(&vip.name),
            address = backend.address,
        );
    }
    page.push_str("</tr>\n");
}

/// The TLS tier's frontends (HAProxy's frontend rows): a frontend with no backend taking
/// requests carries the DOWN class.
fn frontends(page: &mut String, tls: &ProxyStatus) {
    let _ = writeln!(
        page,
        "<h2>TLS frontends (weir proxy, pid {})</h2>\n<table class=\"tbl\" id=\"frontends\">\n\
         <tr class=\"titre\"><th>Frontend</th><th>Bind</th><th>VIP</th><th>Backends</th>\
         <th>Open</th><th>Connections</th><th>Handshakes</th><th>Failed handshakes</th>\
         <th>Requests</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>Errors</th>\
         <th>p50</th><th>p99</th></tr>",
        tls.pid
    );
    for frontend in &tls.frontends {
        let c = &frontend.counters;
        let eligible = frontend.backends.iter().filter(|b| b.eligible()).count();
        let class = if eligible == 0 {
            "active_down"
        } else {
            "active_up"
        };
        let bind: Vec<String> = frontend.bind.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            page,
            "<tr class=\"{class}\" id=\"frontend-{name}\"><td class=\"name\">{name}</td>\
             <td class=\"text\">{bind}</td><td class=\"text\">{vip}</td><td>{eligible}/{known}</td>\
             <td>{open}</td><td>{connections}</td><td>{handshakes}</td><td>{failed}</td>\
             <td>{requests}</td><td>{r2}</td><td>{r3}</td><td>{r4}</td><td>{r5}</td>\
             <td>{errors}</td><td>{p50}</td><td>{p99}</td></tr>",
            name = escape(&frontend.name),
            bind = escape(&bind.join(", ")),
            vip = escape(&frontend.vip),
            known = frontend.backends.len(),
            open = c.open_connections,
            connections = c.connections,
            handshakes = c.handshakes,
            failed = c.handshake_failures + c.handshake_timeouts,
            requests = c.requests,
            r2 = c.responses[1],
            r3 = c.responses[2],
            r4 = c.responses[3],
            r5 = c.responses[4],
            errors = c.errors(),
            p50 = escape(&c.quantile_label(0.5)),
            p99 = escape(&c.quantile_label(0.99)),
        );
    }
    page.push_str("</table>\n");
}

/// The global verdict counters and the interfaces' loss counters.
fn counters(page: &mut String, overview: &Overview) {
    let stats = &overview.stats;
    page.push_str("<h2>Dataplane</h2>\n<table class=\"tbl\" id=\"verdicts\">\n<tr class=\"titre\"><th>Verdict</th><th>Packets</th></tr>\n");
    for (verdict, packets) in &stats.verdicts {
        let _ = writeln!(
            page,
            "<tr><td class=\"name\">{}</td><td>{packets}</td></tr>",
            escape(verdict)
        );
    }
    page.push_str("</table>\n<table class=\"tbl\" id=\"counters\">\n<tr class=\"titre\"><th>Counter</th><th>Value</th></tr>\n");
    for (name, value) in stats.counters.iter().filter(|(_, v)| **v > 0) {
        let _ = writeln!(
            page,
            "<tr><td class=\"name\">{}</td><td>{value}</td></tr>",
            escape(name)
        );
    }
    page.push_str("</table>\n<table class=\"tbl\" id=\"interfaces\">\n<tr class=\"titre\"><th>Interface</th><th>XDP errors</th><th>XDP drops</th><th>rx dropped</th><th>tx dropped</th><th>Driver counters</th></tr>\n");
    for i in &stats.interfaces {
        let driver: Vec<String> = i
            .driver
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(name, value)| format!("{name} {value}"))
            .collect();
        let class = if i.lost() > 0 {
            " class=\"active_going_down\""
        } else {
            ""
        };
        let _ = writeln!(
            page,
            "<tr{class}><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
            escape(&i.name),
            i.xdp_errors,
            i.xdp_drops,
            i.rx_dropped,
            i.tx_dropped,
            escape(&driver.join(", "))
        );
    }
    page.push_str("</table>\n");
}

/// Text for HTML, in an element or an attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::overview::tests::sample;

    fn context<'a>(rates: &'a NewFlowRates, admin: Option<&str>) -> PageContext<'a> {
        PageContext {
            uri: "/stats",
            refresh: Duration::from_secs(5),
            admin_token: admin.map(str::to_owned),
            now_ms: 61_000,
            rates,
            notice: None,
        }
    }

    /// The `<tr …>` of backend `address`.
    fn row<'p>(page: &'p str, address: &str) -> &'p str {
        let start = page
            .find(&format!("data-backend=\"{address}\""))
            .unwrap_or_else(|| panic!("no row for {address}:\n{page}"));
        let open = page[..start].rfind("<tr").unwrap();
        let end = start + page[start..].find("</tr>").unwrap();
        &page[open..end]
    }

    #[test]
    fn each_row_carries_its_status_class() {
        let rates = NewFlowRates::default();
        let page = render(&sample(), &context(&rates, None));
        for (address, class, label) in [
            ("198.18.0.11", "active_up", "UP"),
            ("198.18.0.12", "active_down", "DOWN"),
            ("198.18.0.13", "active_draining", "DRAIN"),
            ("198.18.0.14", "maintain", "MAINT"),
            ("198.18.0.15", "active_going_down", "UP, going down"),
            ("198.18.0.16", "active_going_up", "DOWN, going up"),
        ] {
            let row = row(&page, address);
            assert!(row.starts_with(&format!("<tr class=\"{class}\"")), "{row}");
            assert!(row.contains(&format!("<td>{label}</td>")), "{row}");
        }
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(page.contains(".active_down { background: #ff9090; }"));
        // No admin: no form.
        assert!(!page.contains("<form"));
    }

    #[test]
    fn the_tls_frontends_of_a_proxy_beside_the_agent_have_their_table() {
        let rates = NewFlowRates::default();
        assert!(!render(&sample(), &context(&rates, None)).contains("id=\"frontends\""));
        let mut overview = sample();
        overview.tls = Some(crate::proxy::cli::tests::sample_status());
        let page = render(&overview, &context(&rates, None));
        let start = page
            .find("<tr class=\"active_down\" id=\"frontend-www\">")
            .unwrap();
        let row = &page[start..start + page[start..].find("</tr>").unwrap()];
        // No backend takes requests: DOWN; 2 requests, a 2xx and a 5xx, one error.
        assert!(row.contains("<td>0/0</td>"), "{row}");
        assert!(
            row.contains("<td>2</td><td>1</td><td>0</td><td>0</td><td>1</td><td>1</td>"),
            "{row}"
        );
        assert!(page.contains("TLS frontends (weir proxy, pid 7)"));
    }

    #[test]
    fn a_row_shows_checks_flows_and_traffic() {
        let mut rates = NewFlowRates::default();
        rates
            .backends
            .insert(("web".into(), "198.18.0.12".parse().unwrap()), 1500.0);
        let page = render(&sample(), &context(&rates, None));
        let row = row(&page, "198.18.0.12");
        let cells: Vec<&str> = row
            .split("<td")
            .skip(1)
            .map(|c| {
                let c = &c[c.find('>').unwrap() + 1..];
                &c[..c.find("</td>").unwrap()]
            })
            .collect();
        assert_eq!(
            cells,
            [
                "198.18.0.12",
                "DOWN",
                "L4KO connection refused, 1 ms",
                "100",
                "3",
                "2",
                "1.50k",
                "10",
                "1000",
                "4",
                "1",
                "2s",
                "1m 0s",
                "tcp 20"
            ]
        );
        assert!(page.contains("<tr class=\"backend\" data-vip=\"web\" data-status=\"UP\">"));
        assert!(page.contains("<td id=\"node-uptime\">1h 1m</td>"), "{page}");
        assert!(page.contains("<td class=\"name\">eth0</td><td>5</td>"));
    }

    #[test]
    fn admin_rows_have_a_form_with_the_token() {
        let rates = NewFlowRates::default();
        let page = render(&sample(), &context(&rates, Some("abc123")));
        let row = row(&page, "198.18.0.13");
        assert!(
            row.contains("<form method=\"post\" action=\"/stats\">"),
            "{row}"
        );
        assert!(row.contains("name=\"token\" value=\"abc123\""), "{row}");
        assert!(
            row.contains("name=\"backend\" value=\"198.18.0.13\""),
            "{row}"
        );
        assert!(row.contains("<option value=\"drain\">"), "{row}");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        let mut overview = sample();
        overview.vips[0].backends[0]
            .health
            .last_check
            .as_mut()
            .unwrap()
            .reason = "<script>".into();
        let rates = NewFlowRates::default();
        let page = render(&overview, &context(&rates, None));
        assert!(!page.contains("<script>") && page.contains("&lt;script&gt;"));
    }
}
