//! Which Kubernetes pod an event's process belongs to: its cgroup id turns
//! into the cgroup's path (`kernel::cgroup::path_of_id`), the path into the
//! pod's uid (kubelet's layout, under either cgroup driver), and the uid
//! into the pod's namespace and name, as the daemon last heard them.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
    sync::Mutex,
};

use crate::kernel::cgroup::path_of_id;

/// Cgroup ids remembered at most (then the memory starts again).
const CACHE: usize = 16384;

#[derive(Default)]
pub struct PodNames {
    /// The cgroup2 mount; None: no pods (not a Kubernetes node).
    root: Option<PathBuf>,
    /// Pod uid -> `namespace/name`.
    names: HashMap<String, String>,
    /// Cgroup id -> the uid of the pod it is in (None: in none).
    uids: Mutex<HashMap<u64, Option<String>>>,
}

/// The pod of an event: its uid, and `namespace/name` if known.
pub struct PodOf {
    pub uid: String,
    pub name: Option<String>,
}

impl PodNames {
    pub fn new(root: PathBuf) -> PodNames {
        PodNames {
            root: Some(root),
            ..PodNames::default()
        }
    }

    /// The pods known now, by uid.
    pub fn set(&mut self, names: HashMap<String, String>) {
        self.names = names;
    }

    /// The pod the cgroup `cgroup_id` is in.
    pub fn of(&self, cgroup_id: u64) -> Option<PodOf> {
        let root = self.root.as_ref()?;
        let mut uids = self
            .uids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if uids.len() >= CACHE {
            uids.clear();
        }
        let uid = uids
            .entry(cgroup_id)
            .or_insert_with(|| path_of_id(root, cgroup_id).and_then(|p| pod_uid(&p)))
            .clone()?;
        Some(PodOf {
            name: self.names.get(&uid).cloned(),
            uid,
        })
    }
}

/// The pod uid in a cgroup path: `.../kubepods-<qos>-pod<uid_>.slice/...`
/// (systemd driver, `_` for `-`) or `.../kubepods/<qos>/pod<uid>/...`.
pub fn pod_uid(path: &Path) -> Option<String> {
    let mut in_kubepods = false;
    for c in path.components() {
        let Component::Normal(c) = c else { continue };
        let c = c.to_str()?;
        if c == "kubepods" || c == "kubepods.slice" || c.ends_with("-kubepods.slice") {
            in_kubepods = true;
            continue;
        }
        if !in_kubepods {
            continue;
        }
        let uid = if let Some(slice) = c.strip_suffix(".slice") {
            slice.rsplit_once("-pod").map(|(_, u)| u.replace('_', "-"))
        } else {
            c.strip_prefix("pod").map(str::to_string)
        };
        if let Some(uid) =
            uid.filter(|u| u.len() >= 32 && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        {
            return Some(uid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_from_both_drivers() {
        let uid = "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70";
        for p in [
            "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice/cri-containerd-ab.scope",
            "/sys/fs/cgroup/kubepods.slice/kubepods-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice",
            "/sys/fs/cgroup/x/kubepods/besteffort/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70/0123",
            "/sys/fs/cgroup/kubepods/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            // kind: cgroupRoot /kubelet under the systemd driver.
            "/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice/cri-containerd-ab.scope",
        ] {
            assert_eq!(pod_uid(Path::new(p)).as_deref(), Some(uid), "{p}");
        }
        for p in [
            "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice",
            "/sys/fs/cgroup/system.slice/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            "/sys/fs/cgroup/kubepods/besteffort",
        ] {
            assert_eq!(pod_uid(Path::new(p)), None, "{p}");
        }
    }
}
