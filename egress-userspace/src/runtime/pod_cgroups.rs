//! Where kubelet puts pods' cgroups. Below a kubepods cgroup, one cgroup a
//! pod (every container of the pod below it), placed by the pod's
//! quality-of-service class and named by its uid, in one of two ways:
//!
//! - the systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice`
//!   (Guaranteed pods directly under `kubepods.slice`; `-` in the uid
//!   becomes `_`). With a `cgroupRoot` (kind's is `/kubelet`) the slices
//!   take its name: `kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-<qos>.slice/...`;
//! - the cgroupfs driver (k3s's by default): `kubepods/<qos>/pod<uid>`
//!   (Guaranteed directly under `kubepods`), below the `cgroupRoot` if any.
//!
//! The kubepods cgroups are found by name, searched from the cgroup2 root,
//! or named with `--kubepods-root` (the directory that holds them).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// How deep below the cgroup2 root a kubepods cgroup is looked for
/// (`kubelet.slice/kubelet-kubepods.slice` is 2 deep).
const SEARCH_DEPTH: usize = 4;

/// One kubepods cgroup and how kubelet names the cgroups below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The kubepods cgroup, relative to the cgroup2 root.
    pub kubepods: PathBuf,
    /// The systemd driver's slice prefix (`kubepods`, `kubelet-kubepods`);
    /// None under the cgroupfs driver.
    slice: Option<String>,
}

impl Layout {
    /// The layout of a kubepods cgroup named `name` at `rel`, if it is one.
    fn of(rel: PathBuf, name: &str) -> Option<Layout> {
        let slice = if name == "kubepods" {
            None
        } else if name == "kubepods.slice" || name.ends_with("-kubepods.slice") {
            Some(name.strip_suffix(".slice")?.to_string())
        } else {
            return None;
        };
        Some(Layout {
            kubepods: rel,
            slice,
        })
    }

    /// Where kubelet puts the cgroup of a pod of class `qos` named by `uid`.
    fn pod(&self, qos: Qos, uid: &str) -> PathBuf {
        let class = match qos {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        };
        match (&self.slice, class) {
            (Some(p), None) => self
                .kubepods
                .join(format!("{p}-pod{}.slice", uid.replace('-', "_"))),
            (Some(p), Some(c)) => self
                .kubepods
                .join(format!("{p}-{c}.slice"))
                .join(format!("{p}-{c}-pod{}.slice", uid.replace('-', "_"))),
            (None, None) => self.kubepods.join(format!("pod{uid}")),
            (None, Some(c)) => self.kubepods.join(c).join(format!("pod{uid}")),
        }
    }

    /// The cgroups under which pod cgroups appear.
    fn parents(&self) -> [PathBuf; 3] {
        let [_, burstable, besteffort] =
            [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort].map(|q| {
                self.pod(q, "x")
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            });
        [self.kubepods.clone(), burstable, besteffort]
    }
}

/// The kubepods cgroups on this node: those in `under` (relative to the
/// cgroup2 root) when given, else those found searching from the root.
/// Found in more than one place without `under`, or nowhere, is an error
/// that says what to do.
pub fn discover(cgroup_root: &Path, under: Option<&Path>) -> Result<Vec<Layout>> {
    let mut found = Vec::new();
    let mut dirs = vec![(under.map(Path::to_path_buf).unwrap_or_default(), 0)];
    let depth = if under.is_some() { 1 } else { SEARCH_DEPTH };
    while let Some((rel, d)) = dirs.pop() {
        for name in subdirs(&cgroup_root.join(&rel)) {
            match Layout::of(rel.join(&name), &name) {
                // kubelet's is root's: not one a user made in a subtree
                // delegated to them (user@UID.service).
                Some(layout) if !owned_by_root(&cgroup_root.join(&layout.kubepods)) => {}
                Some(layout) => found.push(layout),
                None if d + 1 < depth => dirs.push((rel.join(&name), d + 1)),
                None => {}
            }
        }
    }
    found.sort_by(|a, b| a.kubepods.cmp(&b.kubepods));
    let shown = |v: &[Layout]| {
        v.iter()
            .map(|l| l.kubepods.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if found.is_empty() {
        let at = cgroup_root.join(under.unwrap_or(Path::new("")));
        bail!(
            "no kubepods cgroup (kubepods.slice, <cgroupRoot>-kubepods.slice or kubepods) {} {}: is kubelet running on this node? If its pods' cgroups are elsewhere, name the directory that holds its kubepods cgroup with --kubepods-root (relative to the cgroup2 root)",
            if under.is_some() { "in" } else { "within 4 levels of" },
            at.display()
        );
    }
    let mut places: Vec<&Path> = found.iter().filter_map(|l| l.kubepods.parent()).collect();
    places.dedup();
    if under.is_none() && places.len() > 1 {
        bail!(
            "kubepods cgroups in more than one place ({}): name the directory that holds kubelet's with --kubepods-root",
            shown(&found)
        );
    }
    Ok(found)
}

fn owned_by_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.uid() == 0)
}

/// The names of the directories in `dir` (none if it cannot be read).
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The kubepods cgroups (relative to the cgroup2 root): where egressd's
/// programs hold every pod.
pub fn kubepods(layouts: &[Layout]) -> Vec<PathBuf> {
    layouts.iter().map(|l| l.kubepods.clone()).collect()
}

/// The cgroups under which pod cgroups appear (to watch for new pods).
pub fn parents(layouts: &[Layout]) -> Vec<PathBuf> {
    layouts.iter().flat_map(Layout::parents).collect()
}

/// A pod's quality-of-service class, which places its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Where the cgroup of a pod of class `qos`, named by `uid` (its own, or
/// a static pod's config hash), may be (relative to the cgroup2 root).
pub fn candidates(layouts: &[Layout], qos: Qos, uid: &str) -> Vec<PathBuf> {
    layouts.iter().map(|l| l.pod(qos, uid)).collect()
}

/// Where that pod's cgroup is now (relative to the cgroup2 root); None if
/// it has none yet.
pub fn pod_cgroup(cgroup_root: &Path, layouts: &[Layout], qos: Qos, uid: &str) -> Option<PathBuf> {
    candidates(layouts, qos, uid)
        .into_iter()
        .find(|rel| cgroup_root.join(rel).join("cgroup.procs").exists())
}

/// Every pod cgroup there is now (relative to the cgroup2 root), with the
/// uid it is named by (as kubelet spells it: `_` for `-` under systemd).
pub fn existing(cgroup_root: &Path, layouts: &[Layout]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for parent in parents(layouts) {
        for name in subdirs(&cgroup_root.join(&parent)) {
            let uid = name
                .strip_suffix(".slice")
                .and_then(|n| n.rsplit_once("-pod"))
                .map_or(name.strip_prefix("pod"), |(_, h)| Some(h));
            if let Some(uid) = uid.filter(|u| {
                u.len() >= 32
                    && u.bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
            }) {
                out.push((parent.join(&name), uid.to_string()));
            }
        }
    }
    out
}

/// The static pods' cgroups (relative to the cgroup2 root), with the
/// config hash each is named by. kubelet runs static pods from files on
/// the node (a kubeadm control plane: kube-apiserver, etcd) before the API
/// server answers, and names their cgroups by a config hash of 32 hex
/// digits, where every pod the API server made has a uid with dashes.
pub fn static_pods(cgroup_root: &Path, layouts: &[Layout]) -> Vec<(PathBuf, String)> {
    existing(cgroup_root, layouts)
        .into_iter()
        .filter(|(_, h)| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// The uid of the pod this process runs in, found by its pid among the
/// kubepods cgroups' processes (None outside a pod).
pub fn own_pod_uid(cgroup_root: &Path, layouts: &[Layout]) -> Option<String> {
    let me = std::process::id().to_string();
    let mut dirs: Vec<(PathBuf, usize)> = kubepods(layouts)
        .into_iter()
        .map(|rel| (cgroup_root.join(rel), 0))
        .collect();
    while let Some((dir, depth)) = dirs.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.lines().any(|l| l == me) {
            return crate::report::pod_names::pod_uid(&dir);
        }
        if depth < 4 {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                dirs.extend(
                    entries
                        .filter_map(|e| e.ok())
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| (e.path(), depth + 1)),
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup tree in a temporary directory, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str, dirs: &[&str]) -> Tree {
            let root = std::env::temp_dir().join(format!("egressd-{tag}-{}", std::process::id()));
            for d in dirs {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            Tree(root)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const UID: &str = "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70";

    /// Each layout: where it is found, and where a Burstable and a
    /// Guaranteed pod's cgroups are.
    #[test]
    fn layouts_of_the_drivers_kind_k3s_and_a_cgroup_root() {
        let cases: [(&str, &str, &str, &str); 5] = [
            (
                "systemd",
                "kubepods.slice",
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice",
                "kubepods.slice/kubepods-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice",
            ),
            (
                "cgroupfs",
                "kubepods",
                "kubepods/burstable/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
                "kubepods/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            ),
            (
                "kind",
                "kubelet.slice/kubelet-kubepods.slice",
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice",
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice",
            ),
            (
                "k3s",
                "k3s/kubepods",
                "k3s/kubepods/burstable/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
                "k3s/kubepods/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            ),
            (
                "root",
                "a.slice/a-b.slice/a-b-kubepods.slice",
                "a.slice/a-b.slice/a-b-kubepods.slice/a-b-kubepods-burstable.slice/a-b-kubepods-burstable-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice",
                "a.slice/a-b.slice/a-b-kubepods.slice/a-b-kubepods-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice",
            ),
        ];
        for (tag, kubepods, burstable, guaranteed) in cases {
            let tree = Tree::new(tag, &[burstable, "system.slice/containerd.service"]);
            let layouts = discover(&tree.0, None).unwrap();
            assert_eq!(
                super::kubepods(&layouts),
                [PathBuf::from(kubepods)],
                "{tag}"
            );
            let b = pod_cgroup(&tree.0, &layouts, Qos::Burstable, UID);
            std::fs::write(tree.0.join(burstable).join("cgroup.procs"), "").unwrap();
            assert_eq!(b, None, "{tag}: no cgroup.procs, no cgroup");
            let b = pod_cgroup(&tree.0, &layouts, Qos::Burstable, UID);
            assert_eq!(b, Some(PathBuf::from(burstable)), "{tag}");
            assert_eq!(
                candidates(&layouts, Qos::Guaranteed, UID),
                [PathBuf::from(guaranteed)],
                "{tag}"
            );
            assert!(parents(&layouts)
                .contains(&PathBuf::from(burstable).parent().unwrap().to_path_buf()));
            // Named with --kubepods-root: looked for there only.
            let holder = Path::new(kubepods).parent().unwrap();
            assert_eq!(discover(&tree.0, Some(holder)).unwrap(), layouts, "{tag}");
        }
    }

    #[test]
    fn no_kubepods_or_two_places_say_what_to_do() {
        let tree = Tree::new("nokube", &["system.slice/a.service", "x/y/z/w/kubepods"]);
        let e = discover(&tree.0, None).unwrap_err().to_string();
        assert!(
            e.contains("is kubelet running") && e.contains("--kubepods-root"),
            "{e}"
        );
        let e = discover(&tree.0, Some(Path::new("system.slice")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("in ") && e.contains("system.slice"), "{e}");
        let tree = Tree::new("twokube", &["kubepods.slice", "kubepods", "other/kubepods"]);
        let e = discover(&tree.0, None).unwrap_err().to_string();
        assert!(
            e.contains("more than one place") && e.contains("other/kubepods"),
            "{e}"
        );
        // Both drivers' cgroups side by side (a driver changed): both held.
        assert_eq!(discover(&tree.0, Some(Path::new(""))).unwrap().len(), 2);
        // One a user made in a subtree delegated to them is not kubelet's.
        let tree = Tree::new(
            "userkube",
            &["kubepods.slice", "user.slice/user-1000.slice/kubepods"],
        );
        std::os::unix::fs::chown(
            tree.0.join("user.slice/user-1000.slice/kubepods"),
            Some(1000),
            Some(1000),
        )
        .unwrap();
        assert_eq!(
            super::kubepods(&discover(&tree.0, None).unwrap()),
            [PathBuf::from("kubepods.slice")]
        );
    }

    #[test]
    fn static_pods_are_told_by_their_cgroups_name() {
        let hash = "5f4dcc3b5aa765d61d8327deb882cf99";
        let tree = Tree::new(
            "static",
            &[
                &format!("k/kubepods/burstable/pod{hash}"),
                &format!("k/kubepods.slice/kubepods-pod{hash}.slice"),
                "k/kubepods/burstable/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
                "k/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice",
                &format!("k/kubepods/burstable/pod{hash}0"),
                "k/kubepods/besteffort/podzzzzcc3b5aa765d61d8327deb882cf99",
            ],
        );
        let layouts = discover(&tree.0, Some(Path::new("k"))).unwrap();
        let mut found = static_pods(&tree.0, &layouts);
        found.sort();
        assert_eq!(
            found,
            [
                (
                    PathBuf::from(format!("k/kubepods/burstable/pod{hash}")),
                    hash.to_string()
                ),
                (
                    PathBuf::from(format!("k/kubepods.slice/kubepods-pod{hash}.slice")),
                    hash.to_string()
                ),
            ]
        );
    }
}
