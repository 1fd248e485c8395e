//! The kernel's own counters for the interfaces the program is attached to: what explains
//! frames lost after the program's verdict, which weir's counters cannot see (an XDP_TX
//! the driver could not send is still counted `tx` by weir). Read with the ethtool ioctl
//! (`ethtool -S`: the driver's counters) and from `/proc/net/dev` (the kernel's
//! `rx_dropped` / `tx_dropped`), both of the agent's network namespace.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use serde::{Deserialize, Serialize};

/// One interface's loss counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCounters {
    pub name: String,
    /// The kernel's `rx_dropped` and `tx_dropped` (as `/sys/class/net/DEV/statistics`).
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    /// Driver counters naming XDP and an error: frames a program sent (XDP_TX, redirect)
    /// that the driver could not transmit (veth: `rx_queue_N_xdp_tx_errors`,
    /// `tx_queue_N_xdp_xmit_errors`).
    pub xdp_errors: u64,
    /// Driver counters naming XDP and a drop (veth: `rx_queue_N_xdp_drops`, which also
    /// counts the program's own XDP_DROP verdicts).
    pub xdp_drops: u64,
    /// Every driver counter naming a drop or an error, summed over queues
    /// (`rx_queue_0_xdp_tx_errors` + `rx_queue_1_…` → `rx_xdp_tx_errors`).
    pub driver: BTreeMap<String, u64>,
}

impl InterfaceCounters {
    /// Reads `name`'s counters; an interface without driver statistics (lo, dummy) has
    /// only the kernel's.
    pub fn read(name: &str) -> io::Result<InterfaceCounters> {
        let proc_net_dev = std::fs::read_to_string("/proc/net/dev")?;
        let (rx_dropped, tx_dropped) = kernel_drops(&proc_net_dev, name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}"))
        })?;
        let driver = match ethtool_stats(name) {
            Ok(stats) => stats,
            Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => Vec::new(),
            Err(err) => return Err(err),
        };
        Ok(InterfaceCounters {
            name: name.to_owned(),
            rx_dropped,
            tx_dropped,
            ..summarize(&driver)
        })
    }

    /// Frames lost that weir's own counters do not show.
    pub fn lost(&self) -> u64 {
        self.rx_dropped + self.tx_dropped + self.xdp_errors
    }
}

/// The loss counters among a driver's `(name, value)` statistics.
fn summarize(driver: &[(String, u64)]) -> InterfaceCounters {
    let mut counters = InterfaceCounters::default();
    for (name, value) in driver {
        let name = without_queue(name);
        let xdp = name.contains("xdp");
        let error = name.contains("err");
        let drop = name.contains("drop");
        if !(error || drop) {
            continue;
        }
        if xdp && error {
            counters.xdp_errors += value;
        } else if xdp {
            counters.xdp_drops += value;
        }
        *counters.driver.entry(name).or_insert(0) += value;
    }
    counters
}

/// A driver counter's name without its queue number: `rx_queue_3_xdp_drops` →
/// `rx_xdp_drops`, `tx12_xdp_xmit_err` → `tx_xdp_xmit_err`.
fn without_queue(name: &str) -> String {
    for direction in ["rx", "tx"] {
        for infix in ["_queue_", ""] {
            let prefix = format!("{direction}{infix}");
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0
                && let Some(rest) = rest[digits..].strip_prefix('_')
            {
                return format!("{direction}_{rest}");
            }
        }
    }
    name.to_owned()
}

/// `rx_dropped` and `tx_dropped` of `name` in `/proc/net/dev`'s text: after `NAME:`,
/// receive bytes, packets, errs, drop … (8 columns), then transmit bytes, packets, errs,
/// drop.
fn kernel_drops(text: &str, name: &str) -> Option<(u64, u64)> {
    text.lines().skip(2).find_map(|line| {
        let (device, columns) = line.split_once(':')?;
        if device.trim() != name {
            return None;
        }
        let columns: Vec<u64> = columns
            .split_whitespace()
            .map(|c| c.parse().ok())
            .collect::<Option<_>>()?;
        Some((*columns.get(3)?, *columns.get(11)?))
    })
}

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// No driver has more; bounds what a confused one makes us allocate.
const MAX_STATS: usize = 1 << 16;

/// The driver's statistics, by name (`ethtool -S NAME`).
fn ethtool_stats(name: &str) -> io::Result<Vec<(String, u64)>> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // ethtool_sset_info: cmd, reserved, sset_mask (u64), then one u32 per set asked.
    let mut info = [0u64; 3];
    info[0] = ETHTOOL_GSSET_INFO as u64;
    info[1] = 1 << ETH_SS_STATS;
    ethtool(&socket, name, info.as_mut_ptr().cast())?;
    let count = (info[2] & 0xffff_ffff) as usize;
    if info[1] & (1 << ETH_SS_STATS) == 0 || count == 0 {
        return Ok(Vec::new());
    }
    if count > MAX_STATS {
        return Err(io::Error::other(format!("{count} driver statistics")));
    }
    // ethtool_gstrings: cmd, string_set, len (u32 each), then len × 32 bytes.
    let mut strings = vec![0u64; (12 + count * ETH_GSTRING_LEN).div_ceil(8)];
    strings[0] = ETHTOOL_GSTRINGS as u64 | (ETH_SS_STATS as u64) << 32;
    strings[1] = count as u64;
    ethtool(&socket, name, strings.as_mut_ptr().cast())?;
    // ethtool_stats: cmd, n_stats (u32 each), then n_stats u64.
    let mut values = vec![0u64; 1 + count];
    values[0] = ETHTOOL_GSTATS as u64 | (count as u64) << 32;
    ethtool(&socket, name, values.as_mut_ptr().cast())?;
    // SAFETY: `strings` is a live, initialized buffer of at least 12 + count × 32 bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts(strings.as_ptr().cast::<u8>(), strings.len() * 8) };
    let names = bytes[12..12 + count * ETH_GSTRING_LEN].chunks(ETH_GSTRING_LEN);
    Ok(names
        .zip(&values[1..])
        .map(|(raw, value)| {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            (String::from_utf8_lossy(&raw[..end]).into_owned(), *value)
        })
        .collect())
}

/// One `SIOCETHTOOL` request on `name` with the command buffer at `data`.
fn ethtool(socket: &OwnedFd, name: &str, data: *mut libc::c_char) -> io::Result<()> {
    // SAFETY: an all-zero `ifreq` is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
        *slot = *byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = data;
    // SAFETY: SIOCETHTOOL reads the command at `data`, which the callers size for it.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_summed_and_only_losses_kept() {
        let veth = [
            ("peer_ifindex", 2),
            ("rx_queue_0_xdp_packets", 100),
            ("rx_queue_0_drops", 1),
            ("rx_queue_0_xdp_drops", 3),
            ("rx_queue_0_xdp_tx", 90),
            ("rx_queue_0_xdp_tx_errors", 7),
            ("rx_queue_1_xdp_tx_errors", 5),
            ("tx_queue_0_xdp_xmit_errors", 2),
            ("tx0_xdp_xmit_err", 1),
        ]
        .map(|(n, v)| (n.to_owned(), v));
        let counters = summarize(&veth);
        assert_eq!(counters.xdp_errors, 15);
        assert_eq!(counters.xdp_drops, 3);
        assert_eq!(
            counters.driver,
            BTreeMap::from(
                [
                    ("rx_drops", 1),
                    ("rx_xdp_drops", 3),
                    ("rx_xdp_tx_errors", 12),
                    ("tx_xdp_xmit_err", 1),
                    ("tx_xdp_xmit_errors", 2),
                ]
                .map(|(n, v)| (n.to_owned(), v))
            )
        );
    }

    #[test]
    fn proc_net_dev_drops() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  eth0: 5000 50 0 4 0 0 0 0 6000 60 0 9 0 0 0 0\n";
        assert_eq!(kernel_drops(text, "eth0"), Some((4, 9)));
        assert_eq!(kernel_drops(text, "lo"), Some((0, 0)));
        assert_eq!(kernel_drops(text, "eth1"), None);
    }

    #[test]
    fn loopback_has_kernel_counters_only() {
        let lo = InterfaceCounters::read("lo").expect("lo exists");
        assert_eq!(lo.name, "lo");
        assert!(lo.driver.is_empty());
        assert!(InterfaceCounters::read("weir-no-such0").is_err());
    }
}
