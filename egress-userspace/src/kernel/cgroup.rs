//! cgroup v2 directories: ids, creation, emptying and removal.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The path of the cgroup whose id is `id`, on the cgroup2 mount `root`
/// (as this process sees it), if it exists: opened by its kernfs file
/// handle (the id itself), as `open_by_handle_at(2)` allows root to.
pub fn path_of_id(root: &Path, id: u64) -> Option<PathBuf> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    /// `struct file_handle` with kernfs's 8-byte handle.
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mount = fs::File::open(root).ok()?;
    let mut handle = Handle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id,
    };
    // SAFETY: a valid directory fd and a file_handle of the size it says.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut handle as *mut Handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new descriptor, now owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// The ids of every cgroup on the cgroup2 mount `root` (read from the
/// tree: no privilege needed).
pub fn ids_in_tree(root: &Path) -> std::collections::HashSet<u64> {
    Cgroup {
        path: root.to_path_buf(),
    }
    .all_ids()
    .into_iter()
    .collect()
}

/// One cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Absolute path (under the cgroup2 mount).
    pub path: PathBuf,
}

impl Cgroup {
    /// The cgroup `rel` below the cgroup2 mount `root`.
    pub fn at(root: &Path, rel: &Path) -> Cgroup {
        Cgroup {
            path: root.join(rel),
        }
    }

    /// The kernel's cgroup id (what `bpf_get_current_cgroup_id` returns):
    /// the inode number of the directory on cgroup2.
    pub fn id(&self) -> Result<u64> {
        Ok(fs::metadata(&self.path)
            .with_context(|| format!("cgroup {}", self.path.display()))?
            .ino())
    }

    /// The ids of this cgroup and of every cgroup below it.
    pub fn all_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.id().into_iter().collect();
        if let Ok(dir) = fs::read_dir(&self.path) {
            for e in dir.flatten() {
                if e.path().is_dir() {
                    ids.extend(Cgroup { path: e.path() }.all_ids());
                }
            }
        }
        ids
    }

    pub fn exists(&self) -> bool {
        self.path.join("cgroup.procs").is_file()
    }

    /// Creates the cgroup (and missing parents).
    pub fn create(&self) -> Result<()> {
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating cgroup {}", self.path.display()))
    }

    /// Refuses a cgroup with a delegated ancestor: one whose directory or
    /// `cgroup.procs` a non-root uid may write (systemd delegates
    /// `user@UID.service` and `Delegate=` units so). A process of that uid
    /// could make a sibling cgroup there and move itself out of this one.
    /// The ancestors from the cgroup2 mount `root` to the parent are
    /// checked; this cgroup may be delegated itself (its sub-cgroups are
    /// governed too).
    pub fn check_not_delegated(&self, root: &Path) -> Result<()> {
        let Some(parent) = self.path.parent() else {
            return Ok(());
        };
        for dir in parent.ancestors().take_while(|a| a.starts_with(root)) {
            for path in [dir.to_path_buf(), dir.join("cgroup.procs")] {
                let meta =
                    fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
                let mode = meta.mode();
                let writer = if mode & 0o002 != 0 {
                    Some("every user".to_string())
                } else if mode & 0o020 != 0 && meta.gid() != 0 {
                    Some(format!("group {}", meta.gid()))
                } else if mode & 0o200 != 0 && meta.uid() != 0 {
                    Some(format!("uid {}", meta.uid()))
                } else {
                    None
                };
                if let Some(writer) = writer {
                    bail!(
                        "{} is writable by {writer} (a delegated cgroup): a process of theirs can make a cgroup beside {} and move out of it, ungoverned. Govern a cgroup with no delegated ancestor, or the delegated cgroup itself",
                        path.display(),
                        self.path.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Opens the directory, for attaching programs.
    pub fn open(&self) -> Result<fs::File> {
        fs::File::open(&self.path)
            .with_context(|| format!("opening cgroup {}", self.path.display()))
    }

    /// Pids of the processes in this cgroup (not its children).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let text = fs::read_to_string(self.path.join("cgroup.procs"))
            .with_context(|| format!("reading {}/cgroup.procs", self.path.display()))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Kills every process in the cgroup and its children, and waits until
    /// none is left (at most `timeout`).
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.is_file() {
            fs::write(&kill_file, "1")
                .with_context(|| format!("writing {}", kill_file.display()))?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.all_pids();
            if left.is_empty() {
                return Ok(());
            }
            for pid in &left {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                bail!("processes {left:?} are still in {}", self.path.display());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pids in this cgroup and every cgroup below it.
    pub fn all_pids(&self) -> Vec<i32> {
        let mut pids = self.pids().unwrap_or_default();
        if let Ok(dir) = fs::read_dir(&self.path) {
            for e in dir.flatten() {
                if e.path().is_dir() {
                    pids.extend(Cgroup { path: e.path() }.all_pids());
                }
            }
        }
        pids
    }

    /// Removes the cgroup and its children (they must hold no processes).
    pub fn remove(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        for e in fs::read_dir(&self.path)?.flatten() {
            if e.path().is_dir() {
                Cgroup { path: e.path() }.remove()?;
            }
        }
        // A cgroup whose last process just exited can be busy for a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing cgroup {}", self.path.display()))
                }
            }
        }
    }
}
