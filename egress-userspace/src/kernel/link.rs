//! Attaching a loaded program to a cgroup with a bpf_link, and pinning the
//! link, with the bpf(2) syscall directly: aya 0.14 cannot turn every
//! cgroup link type into a pinnable link (not `cgroup/setsockopt`'s).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `enum bpf_attach_type` values of the kernel ABI.
pub mod attach_type {
    pub const CGROUP_INET_INGRESS: u32 = 0;
    pub const CGROUP_INET_EGRESS: u32 = 1;
    pub const CGROUP_INET_SOCK_CREATE: u32 = 2;
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP6_SENDMSG: u32 = 15;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_UDP6_RECVMSG: u32 = 20;
    pub const CGROUP_SETSOCKOPT: u32 = 22;
    pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
    pub const CGROUP_INET6_GETPEERNAME: u32 = 30;
    pub const CGROUP_INET4_BIND: u32 = 8;
    pub const CGROUP_INET6_BIND: u32 = 9;
    pub const CGROUP_UNIX_CONNECT: u32 = 49;
    pub const CGROUP_UNIX_SENDMSG: u32 = 50;
}

use super::sys::{bpf, BPF_LINK_CREATE, BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD, BPF_OBJ_PIN};

/// Attaches `prog` to the cgroup `cgroup` for `attach_type`. Cgroup links
/// are always multi-attach: programs of sub-cgroups run in addition to this
/// one and can never replace it.
pub fn create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    // struct { u32 prog_fd; u32 target_fd; u32 attach_type; u32 flags; ... }
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(cgroup.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path has a NUL"))
}

/// Pins `link` at `path` on a bpffs, so it outlives this process.
pub fn pin(link: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = [0u64; 16];
    // struct { u64 pathname; u32 bpf_fd; u32 file_flags; ... }
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(link.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens the link pinned at `path`.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = [0u64; 16];
    // struct { u64 pathname; u32 bpf_fd; u32 file_flags; ... }
    attr[0] = c.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the cgroup a cgroup link is attached to; 0 once the kernel
/// has freed that cgroup (it was removed, and its last socket is gone:
/// until then the link's program still judges those sockets).
pub fn cgroup_of(link: BorrowedFd<'_>) -> io::Result<u64> {
    const BPF_LINK_TYPE_CGROUP: u32 = 3;
    // struct bpf_link_info { u32 type; u32 id; u32 prog_id; union { struct
    // { u64 cgroup_id; u32 attach_type; } cgroup; ... } }
    let mut info = [0u64; 8];
    let mut attr = [0u64; 16];
    // struct { u32 bpf_fd; u32 info_len; u64 info; }
    attr[0] = u64::from(link.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info[0] as u32 != BPF_LINK_TYPE_CGROUP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a cgroup link",
        ));
    }
    Ok(info[2])
}
