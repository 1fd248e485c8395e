//! A SYN flood from spoofed sources, sent with BPF_PROG_RUN in live-frames mode: a host
//! joined to the segment runs an XDP_TX program on crafted frames, one call per spoofed
//! source, and the kernel transmits each copy out of the host's veth onto the bridge
//! (whose port gets an XDP_PASS program, without which veth drops XDP_TX frames). No
//! sockets, no handshake: what a flood looks like to the load balancer.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{Context, Result, ensure};

use crate::{
    link::MacAddr,
    netns::Netns,
    topology::{Host, attach_host, is_test_address},
    xdp::{XdpAction, XdpLink, load},
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

#[repr(C)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _rest: [u32; 9],
}

/// The flooding host and its XDP_TX program.
pub struct Flooder {
    // Declared first: the programs go before the namespace.
    _bridge_port: XdpLink,
    program: OwnedFd,
    host: Host,
}

impl Flooder {
    /// Joins a host `ipv4` (its MAC: [`MacAddr::testbed`]) to the segment.
    pub fn join(switch: &Netns, bridge: &str, ipv4: Ipv4Addr) -> Result<Flooder> {
        let ipv6 = format!("2001:db8:0:1::{:x}", ipv4.octets()[3]).parse()?;
        let host = attach_host(switch, bridge, "flood", ipv4, ipv6)?;
        let bridge_port = switch.enable_veth_xdp_receive(&host.switch_port)?;
        Ok(Flooder {
            _bridge_port: bridge_port,
            program: load(XdpAction::Tx)?,
            host,
        })
    }

    /// Sends `copies` TCP SYNs from each of `sources` (spoofed) to `vip:port` at the MAC
    /// `to`. Returns the frames sent.
    pub fn syn_flood(
        &self,
        sources: &[Ipv4Addr],
        to: MacAddr,
        vip: Ipv4Addr,
        port: u16,
        copies: u32,
    ) -> Result<u64> {
        let ifindex = self.host.ifindex()?;
        let mut sent = 0;
        self.host.ns.enter(|| -> Result<()> {
            for (i, source) in sources.iter().enumerate() {
                ensure!(
                    is_test_address((*source).into()),
                    "{source} is not a test address"
                );
                let frame = syn_frame(self.host.mac, to, *source, vip, 1024 + i as u16, port);
                // struct xdp_md: data, data_end (the frame's length), data_meta,
                // ingress_ifindex, rx_queue_index, egress_ifindex.
                let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|word: &u32| word.to_ne_bytes())
                    .collect();
                let mut attr = TestRunAttr {
                    prog_fd: self.program.as_raw_fd() as u32,
                    retval: 0,
                    data_size_in: frame.len() as u32,
                    data_size_out: 0,
                    data_in: frame.as_ptr() as u64,
                    data_out: 0,
                    repeat: copies,
                    duration: 0,
                    ctx_size_in: ctx.len() as u32,
                    ctx_size_out: 0,
                    ctx_in: ctx.as_ptr() as u64,
                    ctx_out: 0,
                    flags: BPF_F_TEST_XDP_LIVE_FRAMES,
                    cpu: 0,
                    batch_size: 0,
                    _rest: [0; 9],
                };
                test_run(&mut attr).context("BPF_PROG_RUN in live-frames mode")?;
                sent += u64::from(copies);
            }
            Ok(())
        })??;
        Ok(sent)
    }
}

/// BPF_PROG_TEST_RUN, which returns 0 rather than a file descriptor.
fn test_run(attr: &mut TestRunAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a zero-padded attribute block of the size passed; the buffers it
    // names outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestRunAttr as *mut libc::c_void,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Ethernet, IPv4 and a TCP SYN, with valid checksums (the backends' kernels check them).
fn syn_frame(
    from: MacAddr,
    to: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&to.octets());
    frame.extend_from_slice(&from.octets());
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let sum = checksum(&tcp, sum_words(&pseudo));
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `bytes`, starting from the partial sum `initial`.
fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial + sum_words(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_frames_carry_valid_checksums() {
        let frame = syn_frame(
            MacAddr::testbed(1),
            MacAddr::testbed(2),
            Ipv4Addr::new(198, 18, 128, 1),
            Ipv4Addr::new(198, 19, 0, 10),
            1024,
            80,
        );
        assert_eq!(frame.len(), 54);
        assert_eq!(checksum(&frame[14..34], 0), 0, "IPv4 header");
        let mut pseudo = frame[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        assert_eq!(checksum(&frame[34..], sum_words(&pseudo)), 0, "TCP");
    }
}
