//! `egressd governed`: is this cgroup governed by this policy right now?
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

/// The pin directories of `policy` for cgroup id `id`, in every instance.
fn pin_dirs(root: &Path, policy: &str, id: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(instances) = fs::read_dir(root) else {
        return out;
    };
    for inst in instances.flatten() {
        let inst = inst.path();
        let mut bases = vec![inst.clone()];
        if let Ok(gens) = fs::read_dir(&inst) {
            bases.extend(
                gens.flatten()
                    .filter(|g| g.file_name().to_string_lossy().starts_with("gen-"))
                    .map(|g| g.path()),
            );
        }
        for b in bases {
            let d = b.join(policy).join(id.to_string());
            if d.is_dir() {
                out.push(d);
            }
        }
    }
    out
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
        let complete = pin_dirs(&pins, policy, id)
            .into_iter()
            .any(|d| kernel::program_names().all(|p| d.join(p).exists()));
        if complete {
            cgroup.check_not_delegated(&root)?;
            return Ok(c);
        }
        // Governed by another policy here? Then not by this one.
        if other_policy_pins(&pins, policy, id) {
            bail!(
                "{} is governed by another policy, not `{policy}`",
                c.display()
            );
        }
        cur = c.parent().map(Path::to_path_buf);
    }
    bail!("{} is not governed by policy `{policy}`", rel.display())
}

/// Are there pins of any other policy for cgroup id `id`?
fn other_policy_pins(root: &Path, policy: &str, id: u64) -> bool {
    let Ok(instances) = fs::read_dir(root) else {
        return false;
    };
    instances.flatten().any(|inst| {
        let mut bases = vec![inst.path()];
        if let Ok(gens) = fs::read_dir(inst.path()) {
            bases.extend(gens.flatten().map(|g| g.path()));
        }
        bases.iter().any(|b| {
            fs::read_dir(b).is_ok_and(|ps| {
                ps.flatten().any(|p| {
                    p.file_name().to_string_lossy() != policy
                        && p.path().join(id.to_string()).is_dir()
                })
            })
        })
    })
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
