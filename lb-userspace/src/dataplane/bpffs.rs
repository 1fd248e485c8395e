//! The bpffs the pins live on: mounted at `/sys/fs/bpf` when a pin directory there has
//! none (as systemd and other BPF agents do), and the mount namespace's consequences.

use std::{ffi::CString, io, path::Path};

/// Where a bpffs is conventionally mounted; the agent mounts one there when needed.
pub const MOUNT_POINT: &str = "/sys/fs/bpf";

/// Whether `path` lies on a bpffs (statfs magic `BPF_FS_MAGIC`).
pub fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
    let Ok(path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid C string and `stat` a writable statfs buffer.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(path.as_ptr(), &mut stat) }) == 0 && stat.f_type == BPF_FS_MAGIC
}

/// What [`mount_for`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Mounted {
    /// Nothing to do: the pins are not under [`MOUNT_POINT`], or a bpffs is there already.
    No,
    /// A bpffs was mounted at [`MOUNT_POINT`].
    Yes,
}

/// Mounts a bpffs at [`MOUNT_POINT`] if `pin_dir` lies under it and none is mounted there.
pub fn mount_for(pin_dir: &Path) -> io::Result<Mounted> {
    let mount_point = Path::new(MOUNT_POINT);
    if !pin_dir.starts_with(mount_point) || on_bpffs(mount_point) {
        return Ok(Mounted::No);
    }
    let target = CString::new(MOUNT_POINT).expect("no NUL in the mount point");
    let bpf = c"bpf";
    // SAFETY: every argument is a valid C string (or null for no options).
    let result = unsafe {
        libc::mount(
            bpf.as_ptr(),
            target.as_ptr(),
            bpf.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Mounted::Yes)
}

/// Whether this process runs in a mount namespace other than init's or its parent's
/// (`ip netns exec` makes one per command, and execs the command: its parent stays
/// outside): a bpffs mounted only there, and what is pinned on it, goes away with the
/// process. `None` if it cannot be told (no access to either namespace).
pub fn in_private_mount_namespace() -> Option<bool> {
    let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let own = namespace("self")?;
    // SAFETY: getppid(2) cannot fail.
    let parent = unsafe { libc::getppid() };
    let others: Vec<_> = [
        namespace("1"),
        (parent > 0)
            .then(|| namespace(&parent.to_string()))
            .flatten(),
    ]
    .into_iter()
    .flatten()
    .collect();
    if others.is_empty() {
        return None;
    }
    Some(others.iter().any(|other| *other != own))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lb_common::MAP_LAYOUT_VERSION;

    use crate::{dataplane::pins::Pins, error_report::describe};

    #[test]
    fn a_pin_dir_that_cannot_be_created_off_bpffs_names_the_missing_bpffs() {
        // /proc refuses mkdir (ENOENT), as an unmounted /sys/fs/bpf does.
        let error = Pins::new(Path::new("/proc/weir-pins"))
            .create_dirs()
            .unwrap_err();
        assert_eq!(
            describe(&error),
            format!(
                "/proc/weir-pins/v{MAP_LAYOUT_VERSION} is not on a bpffs, so nothing can be \
                 pinned there: mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose another \
                 [agent] bpf_pin_dir"
            )
        );
    }
}
