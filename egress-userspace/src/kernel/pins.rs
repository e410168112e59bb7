//! Where attached links are pinned, and removing them.
//!
//! Layout under the bpffs mount: `egressd/<instance>/...`, where the
//! instance is `run` (or `--instance`) for the daemon, with one directory
//! per generation (`gen-*/<policy>/<cgroup id>/<program>`), and
//! `exec-<pid>/<program>` for one `egressd exec`. A pinned link keeps
//! enforcing after egressd exits; removing the pin detaches it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::mounts;

/// `<bpffs>/egressd`, mounting bpffs if needed.
pub fn root() -> Result<PathBuf> {
    Ok(mounts::bpffs_root()?.join("egressd"))
}

/// The pin directory of one instance.
pub fn instance_dir(instance: &str) -> Result<PathBuf> {
    Ok(root()?.join(instance))
}

/// Removes every pin under `dir` (detaching those links) and the directories.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            remove_tree(&path)?;
        } else {
            fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// The directory a starting daemon pins into: a new generation below its
/// instance directory, so that the previous generation keeps enforcing
/// until the new one is complete (bpffs cannot rename directories).
pub fn new_generation(instance: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Ok(instance_dir(instance)?.join(format!("gen-{nanos}-{}", std::process::id())))
}

/// Removes every generation of `instance` but `keep`.
pub fn remove_other_generations(instance: &str, keep: &Path) -> Result<()> {
    let dir = instance_dir(instance)?;
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(&dir)?.flatten() {
        if entry.path() != keep {
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes the pins of policy `policy` in every instance (or in `instance`):
/// `<instance>/<policy>/` (exec) and `<instance>/gen-*/<policy>/` (run).
/// Returns how many policy directories were removed.
pub fn remove_policy(instance: Option<&str>, policy: &str) -> Result<usize> {
    let root = root()?;
    if !root.exists() {
        return Ok(0);
    }
    let instances: Vec<PathBuf> = match instance {
        Some(i) => vec![instance_dir(i)?],
        None => fs::read_dir(&root)?.flatten().map(|e| e.path()).collect(),
    };
    let mut removed = 0;
    for dir in instances.iter().filter(|d| d.is_dir()) {
        let mut candidates = vec![dir.join(policy)];
        for entry in fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("gen-") {
                candidates.push(entry.path().join(policy));
            }
        }
        for c in candidates.into_iter().filter(|c| c.is_dir()) {
            remove_tree(&c)?;
            removed += 1;
        }
    }
    Ok(removed)
}
