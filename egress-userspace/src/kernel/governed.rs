//! Is this cgroup governed by this policy right now (`egressd governed`)?
//! For a unit to run before its agent starts (systemd's `BPFProgram=` starts
//! the unit anyway when a pinned program is missing; this refuses).
//!
//! A cgroup is governed by a policy when egressd's pins for that policy hold
//! every program's link for the cgroup or for its nearest governed ancestor
//! (the one whose policy the programs apply).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{kernel, kernel::cgroup::Cgroup, kernel::mounts};

/// The calling process's cgroup, relative to the cgroup2 root.
pub fn own_cgroup() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 entry in /proc/self/cgroup")?;
    Ok(PathBuf::from(path.trim_start_matches('/')))
}

/// Which governs `rel` (or its nearest governed ancestor): `Ok(path)` of the
/// governed cgroup when `policy` does with every program pinned.
pub fn check(rel: &Path, policy: &str) -> Result<PathBuf> {
    let root = mounts::cgroup2_root()?;
    let pins = kernel::pins::root()?;
    let mut cur = Some(rel.to_path_buf());
    while let Some(c) = cur {
        if c.as_os_str().is_empty() {
            break;
        }
        let cgroup = Cgroup::at(&root, &c);
        let id = cgroup.id()?;
        let complete = kernel::pins::link_dirs(&pins, policy, id)
            .into_iter()
            .any(|d| kernel::program_names().all(|p| d.join(p).exists()));
        if complete {
            cgroup.check_not_delegated(&root)?;
            return Ok(c);
        }
        // Governed by another policy here? Then not by this one.
        if kernel::pins::other_policy_links(&pins, policy, id) {
            bail!(
                "{} is governed by another policy, not `{policy}`",
                c.display()
            );
        }
        cur = c.parent().map(Path::to_path_buf);
    }
    bail!("{} is not governed by policy `{policy}`", rel.display())
}

/// `check`, retried until `wait` has passed.
pub fn check_waiting(rel: &Path, policy: &str, wait: Duration) -> Result<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        match check(rel, policy) {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
