//! Where attached links are pinned, finding them, and removing them.
//!
//! Layout under the bpffs mount: `egressd/<instance>/...`, where the
//! instance is `run` (or `--instance`) for the daemon, with one directory
//! per generation (`gen-*/<policy>/<cgroup id>/<program>`), and
//! `exec-<pid>/<program>` for one `egressd exec`. A pinned link keeps
//! enforcing after egressd exits; removing the pin detaches it.

//!
//! bpffs is often writable by every user, so nothing there is trusted:
//! `<bpffs>/egressd` is made by root with mode 0700, and every directory on
//! the way to a pin is checked with lstat (a real directory, owned by root)
//! before egressd writes below it or removes it. A planted symbolic link,
//! or a directory someone else made, is refused with an error that says
//! what to remove; nothing is followed, deleted or unpinned through it.

use std::{
    collections::HashSet,
    fs::{self, DirBuilder, Metadata},
    io::ErrorKind,
    os::{
        fd::AsFd,
        unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::kernel::{cgroup, link, mounts};

/// `<bpffs>/egressd`, mounting bpffs if needed, made (mode 0700) if missing
/// and checked: a real directory owned by root, which only root can write.
pub fn root() -> Result<PathBuf> {
    let root = mounts::bpffs_root()?.join("egressd");
    make_dir(&root)?;
    let meta = checked_dir(&root)?;
    if meta.mode() & 0o077 != 0 {
        // An older egressd's; what others may have put below it is checked
        // on the way to each pin.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (mode 0700)", root.display()))?;
    }
    Ok(root)
}

/// Makes one directory, mode 0700, unless something is there already.
fn make_dir(dir: &Path) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            Err(e).with_context(|| format!("creating {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// lstat of `path`, which must be a real directory owned by root.
fn checked_dir(path: &Path) -> Result<Metadata> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    planted(path, &meta, true)?;
    Ok(meta)
}

/// Refuses what egressd did not make: a link, a directory or pin owned by
/// another user, or (where a directory is due) anything else.
fn planted(path: &Path, meta: &Metadata, want_dir: bool) -> Result<()> {
    let shown = path.display();
    if meta.file_type().is_symlink() {
        bail!("{shown} is a symbolic link, which egressd never makes in bpffs: someone planted it; remove it (rm {shown}) and retry. Nothing was followed or removed");
    }
    if meta.uid() != 0 {
        bail!("{shown} is owned by uid {}, not root: egressd did not make it; remove it and retry. Nothing was followed or removed", meta.uid());
    }
    if want_dir && !meta.is_dir() {
        bail!("{shown} is not a directory: egressd did not make it; remove it and retry");
    }
    if meta.is_dir() && meta.mode() & 0o022 != 0 && !path.ends_with("egressd") {
        bail!("{shown} (mode {:o}) can be written by others: egressd makes its directories 0700; remove it and retry", meta.mode() & 0o7777);
    }
    Ok(())
}

/// Checks every directory from `<bpffs>/egressd` down to `dir` (which must
/// be below it), making the missing ones when `make` is set.
fn walk_to(dir: &Path, make: bool) -> Result<bool> {
    let root = root()?;
    let rel = dir
        .strip_prefix(&root)
        .with_context(|| format!("{} is not below {}", dir.display(), root.display()))?;
    let mut cur = root;
    for part in rel.components() {
        cur.push(part);
        if make {
            make_dir(&cur)?;
        }
        match fs::symlink_metadata(&cur) {
            Err(e) if e.kind() == ErrorKind::NotFound && !make => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("reading {}", cur.display())),
            Ok(meta) => planted(&cur, &meta, true)?,
        }
    }
    Ok(true)
}

/// Makes `dir` below `<bpffs>/egressd`, and its parents, checking each.
pub fn make_dirs(dir: &Path) -> Result<()> {
    walk_to(dir, true).map(|_| ())
}

/// The pin directory of one instance.
pub fn instance_dir(instance: &str) -> Result<PathBuf> {
    Ok(root()?.join(instance))
}

/// Removes every pin under `dir` (detaching those links) and the
/// directories. The whole tree is checked first: if anything in it, or on
/// the way to it, was planted, nothing is removed.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !walk_to(dir, false)? {
        return Ok(());
    }
    check_tree(dir)?;
    remove_checked(dir)
}

/// Every entry below `dir` is a root-owned directory or pin, never a link.
fn check_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        planted(&path, &meta, false)?;
        if meta.is_dir() {
            check_tree(&path)?;
        }
    }
    Ok(())
}

fn remove_checked(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_checked(&path)?;
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

/// Removes every generation of `instance` but `keep`. The links of a
/// cgroup that was removed while its sockets live on (see `cgroup_freed`)
/// are pinned into `keep` first, where the new daemon's sweep finds them.
/// `cgroup_root` is the cgroup2 mount.
pub fn remove_other_generations(instance: &str, keep: &Path, cgroup_root: &Path) -> Result<()> {
    let dir = instance_dir(instance)?;
    if !walk_to(&dir, false)? {
        return Ok(());
    }
    let live = cgroup::ids_in_tree(cgroup_root);
    for entry in fs::read_dir(&dir)?.flatten() {
        if entry.path() != keep {
            check_tree(&entry.path())?;
            carry_over_removed(&entry.path(), keep, &live)?;
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// The cgroup links of generation `old` (`<policy>/<cgroup id>/<link>`)
/// whose cgroup is removed but not yet freed, pinned again below `keep`.
fn carry_over_removed(old: &Path, keep: &Path, live: &HashSet<u64>) -> Result<()> {
    for policy in fs::read_dir(old)?.flatten().filter(|e| e.path().is_dir()) {
        for cgroup in fs::read_dir(policy.path())?.flatten() {
            let Some(id) = cgroup
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let to = keep.join(policy.file_name()).join(cgroup.file_name());
            if to.exists() || live.contains(&id) || cgroup_freed(&cgroup.path()) {
                continue;
            }
            make_dirs(&to)?;
            for pin in fs::read_dir(cgroup.path())?.flatten() {
                let fd = link::open_pinned(&pin.path())
                    .with_context(|| format!("opening {}", pin.path().display()))?;
                link::pin(fd.as_fd(), &to.join(pin.file_name()))
                    .with_context(|| format!("pinning {}", to.display()))?;
            }
        }
    }
    Ok(())
}

/// Whether the cgroup whose links are pinned in `dir` has been freed by
/// the kernel. A removed cgroup lives on while a socket made in it does
/// (a process that exited leaves its unsent data queued; a descriptor
/// passed to another process keeps its socket), and its links' programs
/// still judge those sockets: removing the pins before then would let
/// what they refused leave. False while any socket may be left, and when
/// it cannot be told.
pub fn cgroup_freed(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().all(|pin| {
        link::open_pinned(&pin.path())
            .and_then(|fd| link::cgroup_of(fd.as_fd()))
            .is_ok_and(|id| id == 0)
    })
}

/// The directories holding the links of `policy` for cgroup id `id`, in
/// every instance under `root` (`<instance>/<policy>/<id>` and
/// `<instance>/gen-*/<policy>/<id>`). Only read: the caller checks what
/// it finds there.
pub fn link_dirs(root: &Path, policy: &str, id: u64) -> Vec<PathBuf> {
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

/// Are there links of a policy other than `policy` for cgroup id `id`, in
/// any instance under `root`?
pub fn other_policy_links(root: &Path, policy: &str, id: u64) -> bool {
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

/// Removes the pins of policy `policy` in every instance (or in `instance`):
/// `<instance>/<policy>/` (exec) and `<instance>/gen-*/<policy>/` (run).
/// Returns how many policy directories were removed.
pub fn remove_policy(instance: Option<&str>, policy: &str) -> Result<usize> {
    let dirs = policy_dirs(instance, policy)?;
    for dir in &dirs {
        remove_tree(dir)?;
    }
    Ok(dirs.len())
}

/// The directories `remove_policy` removes.
pub fn policy_dirs(instance: Option<&str>, policy: &str) -> Result<Vec<PathBuf>> {
    let root = root()?;
    let instances: Vec<PathBuf> = match instance {
        Some(i) => vec![instance_dir(i)?],
        None => fs::read_dir(&root)?.flatten().map(|e| e.path()).collect(),
    };
    let mut found = Vec::new();
    for dir in instances {
        if !walk_to(&dir, false)? {
            continue;
        }
        let mut candidates = vec![dir.join(policy)];
        for entry in fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("gen-") {
                candidates.push(entry.path().join(policy));
            }
        }
        for c in candidates {
            if walk_to(&c, false)? {
                found.push(c);
            }
        }
    }
    Ok(found)
}

/// The ids of the cgroups whose links are pinned in a policy's directory
/// (its `<cgroup id>` directories).
pub fn ids_in_policy_dir(dir: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .collect()
}

/// The same for an instance's directory: its policies', directly (exec)
/// or in its generations (`gen-*`, run).
pub fn ids_in_instance(dir: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for e in entries.flatten().filter(|e| e.path().is_dir()) {
        if e.file_name().to_string_lossy().starts_with("gen-") {
            for p in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                ids.extend(ids_in_policy_dir(&p.path()));
            }
        } else {
            ids.extend(ids_in_policy_dir(&e.path()));
        }
    }
    ids
}

/// The same for every instance below `root`.
pub fn ids_in_root(root: &Path) -> Vec<u64> {
    fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| ids_in_instance(&e.path()))
        .collect()
}

/// As `remove_tree`, but the directories in `keep` (and so the
/// directories above them) stay.
pub fn remove_tree_except(dir: &Path, keep: &HashSet<PathBuf>) -> Result<()> {
    if !walk_to(dir, false)? {
        return Ok(());
    }
    check_tree(dir)?;
    remove_except(dir, keep).map(drop)
}

/// Whether anything was kept below `dir`.
fn remove_except(dir: &Path, keep: &HashSet<PathBuf>) -> Result<bool> {
    if keep.contains(dir) {
        return Ok(true);
    }
    let mut kept = false;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            kept |= remove_except(&path, keep)?;
        } else {
            fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    if !kept {
        fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(kept)
}

/// The link directories below `dir` (`.../<policy>/<cgroup id>`) of
/// cgroups that were removed but are not freed: sockets made in them live
/// on, and their links still judge those sockets.
pub fn removed_not_freed(dir: &Path, live: &HashSet<u64>) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten().filter(|e| e.path().is_dir()) {
        match e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            Some(id) if !live.contains(&id) && !cgroup_freed(&e.path()) => {
                out.insert(e.path());
            }
            Some(_) => {}
            None => out.extend(removed_not_freed(&e.path(), live)),
        }
    }
    out
}

/// A pin directory name (an instance's, or a policy's): letters, digits,
/// `.`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy (or instance) may be named with digits only: only the
    /// directories where the layout puts cgroup ids are read as ids.
    #[test]
    fn cgroup_ids_are_read_where_the_layout_puts_them() {
        let root = std::env::temp_dir().join(format!("egressd-pins-{}", std::process::id()));
        for dir in [
            "run/gen-1-2/123/77",
            "run/gen-1-2/agent/78",
            "exec-9/42/79",
            "1/gen-3-4/p/80",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("exec-9/42/79/egress_connect4"), b"").unwrap();
        let mut ids = ids_in_root(&root);
        ids.sort_unstable();
        assert_eq!(ids, vec![77, 78, 79, 80]);
        assert_eq!(ids_in_instance(&root.join("exec-9")), vec![79]);
        assert_eq!(ids_in_policy_dir(&root.join("run/gen-1-2/123")), vec![77]);
        let _ = fs::remove_dir_all(&root);
    }
}
