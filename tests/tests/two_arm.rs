//! End to end, DSR with two arms: clients reach the load balancer on one interface, the
//! backends sit behind another, so the XDP program forwards with XDP_REDIRECT through its
//! devmap. The backends' replies go back through the LB host's kernel (their default
//! route), untouched by the program.
//!
//! ```text
//!  client 198.18.20.100 ── 198.18.20.1 [lb] 198.18.21.1 ── bridge ── backend1 198.18.21.11
//!                                                                └── backend2 198.18.21.12
//! ```

use std::collections::BTreeMap;

use weir_testbed::{TwoArmBackends, TwoArmTopology, agent::Agent, http_get, two_arm_backend};

const VIP: &str = "198.19.0.10";

/// The value of `name` in the agent's `verdicts:` line.
fn verdict(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.starts_with("verdicts:"))
        .expect("the agent prints its verdicts");
    line.trim_start_matches("verdicts:")
        .split(',')
        .filter_map(|part| part.trim().split_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

#[test]
fn flows_are_redirected_to_backends_behind_another_interface() {
    let net = TwoArmTopology::new(TwoArmBackends::Dsr { vip: VIP })
        .expect("the two-arm test needs root and network namespaces");
    let config = format!(
        "[agent]\ninterfaces = [\"{}\", \"{}\"]\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\n\
         [[vip.backend]]\naddress = \"{}\"\n[[vip.backend]]\naddress = \"{}\"\n",
        net.lb_front,
        net.lb_back,
        two_arm_backend(1),
        two_arm_backend(2)
    );
    let agent = Agent::start(&net.lb, &config).expect("the agent starts");

    let mut answers = BTreeMap::new();
    for _ in 0..60 {
        let body = http_get(&net.client, &format!("http://{VIP}/"))
            .expect("GET through the VIP")
            .body;
        *answers.entry(body.trim().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(answers.len(), 2, "both backends answer: {answers:?}");

    let log = agent.stop().unwrap();
    assert!(
        verdict(&log, "redirect") >= 60,
        "requests were redirected:\n{log}"
    );
    assert_eq!(verdict(&log, "drop"), 0, "{log}");
}
