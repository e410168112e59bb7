//! Where attached links are pinned, and removing them.
//!
//! Layout under the bpffs mount:
//! `egressd/<instance>/<cgroup id>/<program>`, where the instance is `run`
//! for the daemon and `exec-<pid>` for one `egressd exec`. A pinned link keeps
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
