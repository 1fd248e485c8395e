//! Builds the XDP program (`lb-ebpf`) for the BPF target with nightly and bpf-linker;
//! the agent embeds the object (`include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir-xdp"))`).
//! `cargo xtask setup` installs what this needs.

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common")
    );
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
