//! A Landlock domain for the command `egressd exec` runs (Linux 5.13+).
//!
//! It restricts no file access (two rights are handled, then allowed
//! everywhere: a domain over files refuses mount(2), so the command cannot
//! bind another socket over a UNIX path its policy allows). Being in a
//! domain is what counts: the
//! kernel then refuses ptrace, `pidfd_getfd` and `process_vm_writev`
//! against any process outside it, so the command cannot take the sockets
//! of a process of its own uid that runs outside its cgroup and send
//! through them ungoverned. From Landlock ABI 6 (Linux 6.12) the domain is
//! scoped too: no connecting to an abstract UNIX socket made outside it (a
//! local deputy's, such as a session bus), and no signals to processes
//! outside it.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

const CREATE_RULESET_VERSION: u32 = 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;
const ACCESS_FS_EXECUTE: u64 = 1 << 0;
const ACCESS_FS_REFER: u64 = 1 << 13;
const RULE_PATH_BENEATH: u32 = 1;

/// `struct landlock_ruleset_attr` (its size grows with the ABI).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the uapi header).
#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// What the command's domain closes, for the summary and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// No Landlock (kernel before 5.13, or not enabled): nothing closed.
    None,
    /// ptrace and pidfd_getfd of processes outside (ABI 2 to 5).
    Ptrace,
    /// That, plus abstract UNIX sockets and signals outside (ABI 6+).
    PtraceAndAbstractUnix,
}

/// A ruleset made before the fork, to be applied in the child.
pub struct Domain {
    fd: OwnedFd,
    pub coverage: Coverage,
}

/// Landlock's ABI version here, or `None` where it is missing.
fn abi() -> Option<i64> {
    // SAFETY: with the VERSION flag the kernel reads no attribute.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}

/// Why there is no domain here, for `exec`'s warning.
pub fn missing() -> &'static str {
    match abi() {
        None => "Landlock is not available here (Linux 5.13 or later, with `landlock` among the LSMs)",
        Some(_) => "this kernel's Landlock is too old (ABI 1, Linux 5.13 to 5.18: a domain there would refuse renames across directories)",
    }
}

impl Domain {
    /// The ruleset for this kernel, or `None` without Landlock (ABI 1 is
    /// skipped: there a domain always refuses renames across directories).
    /// `abstract_unix`: scope abstract UNIX sockets too (not when the
    /// policy allows abstract names, which the UNIX hooks then judge).
    pub fn prepare(abstract_unix: bool) -> std::io::Result<Option<Domain>> {
        let Some(abi) = abi() else {
            return Ok(None);
        };
        let (attr, size, coverage) = if abi >= 6 {
            let attr = RulesetAttr {
                // Handled (and allowed everywhere, below) so that the
                // domain is one over files: Landlock then refuses the
                // command mount(2), which could otherwise bind another
                // socket over a UNIX path the policy allows.
                handled_access_fs: ACCESS_FS_EXECUTE | ACCESS_FS_REFER,
                handled_access_net: 0,
                scoped: SCOPE_SIGNAL
                    | if abstract_unix {
                        SCOPE_ABSTRACT_UNIX_SOCKET
                    } else {
                        0
                    },
            };
            (attr, 24usize, Coverage::PtraceAndAbstractUnix)
        } else if abi >= 2 {
            // A domain needs a handled right: handle two, then allow both
            // everywhere, so that no file access changes.
            let attr = RulesetAttr {
                handled_access_fs: ACCESS_FS_EXECUTE | ACCESS_FS_REFER,
                handled_access_net: 0,
                scoped: 0,
            };
            (attr, 8usize, Coverage::Ptrace)
        } else {
            return Ok(None);
        };
        // SAFETY: attr is a valid ruleset attribute of at least `size` bytes.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                size,
                0u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new file descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if attr.handled_access_fs != 0 {
            allow_everywhere(&fd, attr.handled_access_fs)?;
        }
        Ok(Some(Domain { fd, coverage }))
    }

    /// The raw ruleset descriptor, for `enter` in the child.
    pub fn raw_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }
}

/// Allows `access` beneath `/`.
fn allow_everywhere(ruleset: &OwnedFd, access: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let root = std::fs::File::open("/")?;
    let rule = PathBeneath {
        allowed_access: access,
        parent_fd: root.as_raw_fd(),
    };
    // SAFETY: rule is a valid path-beneath attribute; both fds are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &rule as *const PathBeneath,
            0u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Enters the domain: in the child between fork and exec, after
/// `PR_SET_NO_NEW_PRIVS`. Async-signal-safe (one system call).
pub fn enter(ruleset: RawFd) -> std::io::Result<()> {
    // SAFETY: a plain system call on a descriptor the parent keeps open.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
