//! Starting the command of `egressd exec`: as the user asked for, moved
//! into its cgroup and confined before it runs anything of its own.

use std::{
    ffi::OsString,
    fs::File,
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use super::{handover, landlock, seccomp};
use crate::{kernel::cgroup::Cgroup, policy::error::UsageError};

/// Opens `cgroup.procs` for the child to move itself in before exec.
pub(super) fn procs_file(cgroup: &Cgroup) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.path.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cgroup.path.display()))
}

/// How many processes run with `uid` as their real or effective uid.
pub(super) fn processes_of(uid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let uid = uid.to_string();
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|ids| ids.split_whitespace().take(2).any(|id| id == uid))
        })
        .count()
}

/// The user (and group) the command runs as: a name or a numeric id.
pub fn lookup_user(spec: &str) -> Result<(u32, u32), UsageError> {
    let c = std::ffi::CString::new(spec).map_err(|_| UsageError(format!("--user {spec:?}")))?;
    // SAFETY: getpwnam/getpwuid return a pointer into static storage, read
    // at once on this thread before anything else calls them.
    let pw = unsafe {
        match spec.parse::<u32>() {
            Ok(uid) => libc::getpwuid(uid),
            Err(_) => libc::getpwnam(c.as_ptr()),
        }
    };
    if pw.is_null() {
        return match spec.parse::<u32>() {
            Ok(uid) => Ok((uid, uid)),
            Err(_) => Err(UsageError(format!("--user {spec}: no such user"))),
        };
    }
    // SAFETY: pw is non-null and points at a valid passwd entry.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// The command, started; and the listener of its seccomp filter (see
/// `confine::listen`), or why there is none.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub listener: Result<OwnedFd, String>,
}

pub fn spawn_in(
    cgroup: &Cgroup,
    command: &[OsString],
    user: Option<(u32, u32)>,
    filter: seccomp::Filter,
    scope_abstract_unix: bool,
) -> Result<Spawned> {
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair()
        .context("making the socket pair the command's filter is handed over on")?;
    let to_egressd = theirs.as_raw_fd();
    let procs = procs_file(cgroup)?;
    let fd = procs.as_raw_fd();
    let domain = landlock::Domain::prepare(scope_abstract_unix)
        .context("preparing the command's Landlock domain")?;
    if domain.is_none() {
        let others = user.map_or(0, |(uid, _)| processes_of(uid));
        eprintln!(
            "egressd: warning: {}: the command can ptrace or pidfd_getfd processes of its uid outside its cgroup and send through their sockets{}",
            landlock::missing(),
            if others > 0 {
                format!(" (that uid has {others} such process(es) now: use a uid of its own)")
            } else {
                String::new()
            }
        );
    }
    let ruleset = domain.as_ref().map(landlock::Domain::raw_fd);
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the closure only makes async-signal-safe system calls
    // (write, setgroups, setgid, setuid, prctl, landlock_restrict_self,
    // seccomp, sendmsg, close)
    // with data prepared before
    // the fork, and touches no allocator.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            // Into the governed cgroup first: every socket is made inside.
            let pid = b"0\n";
            check(libc::write(fd, pid.as_ptr().cast(), pid.len()) as libc::c_int)?;
            if let Some((uid, gid)) = user {
                check(libc::setgroups(1, &gid))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // No taking over processes outside the cgroup (see `landlock`).
            if let Some(fd) = ruleset {
                landlock::enter(fd)?;
            }
            // No sockets of families no hook sees (see `seccomp`). Last:
            // the filter would refuse nothing the steps above need, but
            // it applies to this process from here on.
            filter.apply(to_egressd)
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]))?;
    drop(procs);
    drop(domain);
    drop(theirs);
    // Sent before the command was exec'd (spawn returns after that).
    let listener = handover::receive_fd(&ours).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => {
            "the kernel gave the command's seccomp filter no listener (a filter above egressd's has one already, or the kernel is older than 5.0), so listen() is refused for every socket, UNIX ones too".to_string()
        }
        _ => format!("receiving the command's filter listener: {e}"),
    });
    Ok(Spawned { child, listener })
}
