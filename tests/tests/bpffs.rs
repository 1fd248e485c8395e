//! End to end: an agent on the default pin directory (/sys/fs/bpf/weir) where no bpffs is
//! mounted — as under `ip netns exec`, which mounts a fresh /sys — mounts one and pins.

use std::{net::IpAddr, path::Path};

use weir_testbed::{
    DsrTopology,
    agent::{Agent, AgentDirs},
    http_get,
    topology::{HTTP_PORT, VIP_V4, backend_v4},
};

#[test]
fn on_the_default_pin_dir_without_bpffs_the_agent_mounts_one_and_pins() {
    let topology = DsrTopology::with_servers(1).unwrap();
    let dirs = AgentDirs::default_pins().unwrap();
    let text = format!(
        "[agent]\ninterfaces = [\"{}\"]\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {HTTP_PORT}\ntable_size = 1021\n\
         [[vip.backend]]\naddress = \"{}\"\n",
        topology.lb_ifname(),
        IpAddr::from(backend_v4(1))
    );
    let agent = Agent::start_with(topology.lb_ns(), &text, &dirs, &[]).unwrap();
    let log = agent.log();
    assert!(log.contains("mounted a bpffs"), "{log}");
    // `ip netns exec` runs it in a mount namespace of its own: the pins go with it.
    assert!(log.contains("mount namespace of its own"), "{log}");
    // The pins, as the agent's mount namespace sees them.
    // The agent names its pin directory (`…/v<map layout version>`) when it is ready.
    let pin_dir = log
        .split_whitespace()
        .find_map(|word| word.strip_prefix("pins="))
        .unwrap_or_else(|| panic!("the agent names its pins: {log}"));
    assert!(pin_dir.starts_with("/sys/fs/bpf/weir/v"), "{log}");
    let pins = Path::new("/proc")
        .join(agent.pid().to_string())
        .join("root")
        .join(pin_dir.trim_start_matches('/'));
    assert!(pins.join("maps/VIPS").exists(), "{log}");
    assert!(
        pins.join("links").join(topology.lb_ifname()).exists(),
        "{log}"
    );
    let url = format!("http://{VIP_V4}:{HTTP_PORT}/");
    http_get(&topology.client().ns, &url).expect("the VIP answers");
}
