//! Trivial XDP programs (one fixed action) loaded and attached with raw `bpf()` calls, no
//! toolchain needed. Their main use is on the far end of a veth: a frame that XDP sends
//! into a veth (XDP_TX out of one end, or XDP_REDIRECT) is dropped unless the receiving
//! end has an XDP program too (GRO on the receiving veth is not enough on kernel 6.18,
//! see [`Netns::set_gro`]); `XDP_PASS` there hands the frames on to the kernel as usual.
//! An `XDP_DROP` program there is also the cheapest packet sink for benchmarks.

use std::{
    ffi::CString,
    mem,
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// An XDP verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum XdpAction {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
}

/// Attach flags (`XDP_FLAGS_*`).
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    // The kernel accepts a shorter attr as long as the bytes it knows beyond are zero;
    // padding keeps this comfortably larger than the fields above.
    _rest: [u64; 16],
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 12],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a properly initialised, zero-padded attribute block of the size
    // passed; the kernel only reads (and for logs writes) the memory it names.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            mem::size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `r0 = action; exit` as an XDP program.
pub(crate) fn load(action: XdpAction) -> Result<OwnedFd> {
    let insns = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
        BpfInsn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: action as i32,
        },
        // BPF_JMP | BPF_EXIT
        BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = CString::new("GPL").unwrap();
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"weir_test");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
        _rest: [0; 16],
    };
    bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("cannot load an XDP_{action:?} program"))
}

/// An attached XDP program; dropping it detaches the program (closing the bpf link).
#[derive(Debug)]
pub struct XdpLink {
    _link: OwnedFd,
    _prog: OwnedFd,
    dev: String,
    action: XdpAction,
}

impl XdpLink {
    pub fn dev(&self) -> &str {
        &self.dev
    }

    pub fn action(&self) -> XdpAction {
        self.action
    }
}

impl Netns {
    /// Attaches a program that returns `action` for every frame to `dev` in native
    /// (driver) mode, through a bpf link that lives as long as the returned guard.
    pub fn attach_xdp(&self, dev: &str, action: XdpAction) -> Result<XdpLink> {
        self.attach_xdp_with_flags(dev, action, XDP_FLAGS_DRV_MODE)
    }

    /// Lets the veth `dev` receive frames that XDP sends into it from its peer (XDP_TX
    /// on the peer, or XDP_REDIRECT into it): attaches an XDP_PASS program, which gives
    /// it NAPI and hands every frame on to the kernel as before. Keep the guard.
    pub fn enable_veth_xdp_receive(&self, dev: &str) -> Result<XdpLink> {
        self.attach_xdp(dev, XdpAction::Pass)
    }

    /// [`Netns::attach_xdp`] with explicit `XDP_FLAGS_*`.
    pub fn attach_xdp_with_flags(
        &self,
        dev: &str,
        action: XdpAction,
        flags: u32,
    ) -> Result<XdpLink> {
        let prog = load(action)?;
        let ifindex = self.ifindex(dev)?;
        let mut attr = LinkCreateAttr {
            prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags,
            _rest: [0; 12],
        };
        // The ifindex is resolved in the calling thread's namespace.
        let link = self
            .enter(|| bpf(BPF_LINK_CREATE, &mut attr))?
            .with_context(|| format!("cannot attach XDP_{action:?} to {dev} in {}", self.name()))?;
        Ok(XdpLink {
            _link: link,
            _prog: prog,
            dev: dev.to_owned(),
            action,
        })
    }
}
