//! Watching the parents of governed cgroups (inotify on cgroupfs), so that a
//! governed cgroup that is removed and created again (systemd does so on a
//! unit restart; its id changes and nothing is attached to the new one) is
//! governed again at once. Events inotify cannot deliver (a queue overflow)
//! are caught by the periodic `Governor::verify_all`.

use std::{
    collections::HashMap,
    ffi::{CString, OsStr},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use tokio::io::unix::AsyncFd;

/// A directory entry that appeared or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub dir: PathBuf,
    pub name: PathBuf,
    pub created: bool,
}

pub struct Watcher {
    fd: AsyncFd<OwnedFd>,
    dirs: HashMap<i32, PathBuf>,
}

impl Watcher {
    pub fn new() -> io::Result<Watcher> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd stays open, and the same, for as long as the
        // AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Watcher {
            fd,
            dirs: HashMap::new(),
        })
    }

    /// Watches `dir` for sub-directories created or removed.
    pub fn watch(&mut self, dir: &Path) -> io::Result<()> {
        if self.dirs.values().any(|d| d == dir) {
            return Ok(());
        }
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL"))?;
        let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM;
        // SAFETY: valid fd and NUL-terminated path.
        let wd =
            unsafe { libc::inotify_add_watch(self.fd.get_ref().as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    /// Waits for changes, then returns them.
    pub async fn next(&mut self) -> io::Result<Vec<Change>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 4096];
            let fd = self.fd.get_ref().as_raw_fd();
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Err(e);
            }
            let changes = self.parse(&buf[..n as usize]);
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }

    fn parse(&mut self, mut buf: &[u8]) -> Vec<Change> {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        let mut out = Vec::new();
        while buf.len() >= HEADER {
            // SAFETY: the kernel writes whole events; read_unaligned copes
            // with any alignment.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
            let len = ev.len as usize;
            let Some(name) = buf.get(HEADER..HEADER + len) else {
                break;
            };
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(len)];
            if ev.mask & libc::IN_IGNORED != 0 {
                // The watched directory is gone: forget it, so that it can
                // be watched again once it exists (see `watch`).
                self.dirs.remove(&ev.wd);
            } else if let Some(dir) = self.dirs.get(&ev.wd) {
                let created = ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0;
                out.push(Change {
                    dir: dir.clone(),
                    name: PathBuf::from(OsStr::from_bytes(name)),
                    created,
                });
            }
            buf = &buf[HEADER + len..];
        }
        out
    }
}

/// Each policy file's path, size and modification time.
pub type Stamp = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

/// What a file, or a directory's files, look like now (names, sizes,
/// times): polled to notice a change.
pub fn stamp(path: &Path) -> Stamp {
    let files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    } else {
        vec![path.to_path_buf()]
    };
    let mut out: Vec<_> = files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let len = m.as_ref().map_or(0, |m| m.len());
            let time = m.and_then(|m| m.modified().ok());
            (f, len, time)
        })
        .collect();
    out.sort();
    out
}
