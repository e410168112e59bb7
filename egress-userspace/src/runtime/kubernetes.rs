//! Kubernetes: the pods on this node, which policy each belongs to, and
//! where their cgroups are. Pods come from the API server (`pod_watch`);
//! here they are plain data. A pod's cgroup is found under both cgroup
//! drivers:
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice`
//!   (Guaranteed pods directly under `kubepods.slice`; `-` in the uid becomes `_`);
//! - cgroupfs: `kubepods/<qos>/pod<uid>` (Guaranteed directly under `kubepods`).
//!
//! Every container of a pod is in a cgroup below the pod's.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::policy::{selector::Labels, Policy};

/// A pod's quality-of-service class, which places its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub qos: Qos,
}

impl Pod {
    /// The pod as egressd needs it; None without a uid, name or namespace,
    /// or with a uid that is not one (it becomes part of a path).
    pub fn from_api(pod: &k8s_openapi::api::core::v1::Pod) -> Option<Pod> {
        let meta = &pod.metadata;
        let uid = meta.uid.as_deref()?;
        if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return None;
        }
        let qos = match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
            Some("Guaranteed") => Qos::Guaranteed,
            Some("BestEffort") => Qos::BestEffort,
            _ => Qos::Burstable,
        };
        Some(Pod {
            uid: uid.to_string(),
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            labels: meta.labels.clone().unwrap_or_default(),
            qos,
        })
    }
}

/// What egressd knows of the cluster: this node's pods (by uid) and every
/// namespace's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub pods: BTreeMap<String, Pod>,
    pub namespaces: BTreeMap<String, Labels>,
}

impl Cluster {
    /// The policy that selects `pod`, if any (selectors of two policies
    /// never overlap: `policy::load` refuses that).
    pub fn policy_of<'a>(&self, policies: &'a [Policy], pod: &Pod) -> Option<&'a Policy> {
        let empty = Labels::new();
        let ns = self.namespaces.get(&pod.namespace).unwrap_or(&empty);
        policies.iter().find(|p| {
            p.pods
                .iter()
                .any(|s| s.matches(&pod.namespace, ns, &pod.labels))
        })
    }
}

/// How a pod's cgroup is to be governed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// By this policy.
    Policy(String),
    /// By none: the pod is known and no policy selects it.
    Released,
}

/// Where the pod's cgroup is, relative to `kubepods_root` (itself relative
/// to the cgroup2 root), under the systemd and the cgroupfs driver.
pub fn cgroup_candidates(kubepods_root: &Path, pod: &Pod) -> [PathBuf; 2] {
    let under = pod.uid.replace('-', "_");
    let systemd = match pod.qos {
        Qos::Guaranteed => PathBuf::from(format!("kubepods.slice/kubepods-pod{under}.slice")),
        Qos::Burstable => PathBuf::from(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice"
        )),
        Qos::BestEffort => PathBuf::from(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under}.slice"
        )),
    };
    let cgroupfs = match pod.qos {
        Qos::Guaranteed => PathBuf::from(format!("kubepods/pod{}", pod.uid)),
        Qos::Burstable => PathBuf::from(format!("kubepods/burstable/pod{}", pod.uid)),
        Qos::BestEffort => PathBuf::from(format!("kubepods/besteffort/pod{}", pod.uid)),
    };
    [kubepods_root.join(systemd), kubepods_root.join(cgroupfs)]
}

/// The directories under which pod cgroups appear (to watch for new pods).
pub fn pod_parents(kubepods_root: &Path) -> Vec<PathBuf> {
    [
        "kubepods.slice",
        "kubepods.slice/kubepods-burstable.slice",
        "kubepods.slice/kubepods-besteffort.slice",
        "kubepods",
        "kubepods/burstable",
        "kubepods/besteffort",
    ]
    .iter()
    .map(|p| kubepods_root.join(p))
    .collect()
}

/// Where the pod's cgroup is now (relative to the cgroup2 root), under
/// either driver; None if it has none yet.
pub fn pod_cgroup(cgroup_root: &Path, kubepods_root: &Path, pod: &Pod) -> Option<PathBuf> {
    cgroup_candidates(kubepods_root, pod)
        .into_iter()
        .find(|rel| cgroup_root.join(rel).join("cgroup.procs").exists())
}

/// The cgroups of the pods known now whose cgroup exists, and how each is
/// to be governed; `own_uid` (egressd's own pod) is released whatever
/// selects it.
pub fn classify(
    policies: &[Policy],
    cluster: &Cluster,
    own_uid: Option<&str>,
    cgroup_root: &Path,
    kubepods_root: &Path,
) -> BTreeMap<PathBuf, (Class, Pod)> {
    let mut out = BTreeMap::new();
    for pod in cluster.pods.values() {
        let Some(rel) = pod_cgroup(cgroup_root, kubepods_root, pod) else {
            continue;
        };
        let class = match cluster.policy_of(policies, pod) {
            Some(p) if own_uid != Some(pod.uid.as_str()) => Class::Policy(p.name.clone()),
            _ => Class::Released,
        };
        out.insert(rel, (class, pod.clone()));
    }
    out
}

/// The uid of the pod this process runs in, found by its pid among the
/// kubepods cgroups' processes (None outside a pod).
pub fn own_pod_uid(cgroup_root: &Path, kubepods_root: &Path) -> Option<String> {
    let me = std::process::id().to_string();
    let mut dirs: Vec<(PathBuf, usize)> = kubepods_cgroups(cgroup_root, kubepods_root)
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

/// The kubepods cgroups (relative to the cgroup2 root) that exist: where
/// pod cgroups appear.
pub fn kubepods_cgroups(cgroup_root: &Path, kubepods_root: &Path) -> Vec<PathBuf> {
    ["kubepods.slice", "kubepods"]
        .iter()
        .map(|p| kubepods_root.join(p))
        .filter(|rel| cgroup_root.join(rel).join("cgroup.procs").exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::parse;

    /// Recorded API objects (a trimmed PodList of one node's pods).
    const PODS: &str = r#"{"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"1"},"items":[
      {"metadata":{"name":"summarizer-7d9f","namespace":"agents","uid":"0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
                   "labels":{"app":"doc-summarizer","tier":"agent"}},
       "spec":{"nodeName":"node-a","containers":[]},"status":{"qosClass":"Burstable","phase":"Running"}},
      {"metadata":{"name":"coder-0","namespace":"agents","uid":"aa11bb22-2222-4c3b-9a55-2b1c0d9e8f71",
                   "labels":{"app":"coding-agent"}},
       "spec":{"nodeName":"node-a","containers":[]},"status":{"qosClass":"Guaranteed"}},
      {"metadata":{"name":"web","namespace":"default","uid":"cc11bb22-4444-4c3b-9a55-2b1c0d9e8f73",
                   "labels":{"app":"doc-summarizer"}},
       "spec":{"nodeName":"node-a","containers":[]},"status":{"qosClass":"BestEffort"}},
      {"metadata":{"name":"evil","namespace":"agents","uid":"../../etc","labels":{"app":"doc-summarizer"}},
       "spec":{"nodeName":"node-a","containers":[]},"status":{}}
    ]}"#;

    fn pods() -> Vec<Pod> {
        let list: k8s_openapi::List<k8s_openapi::api::core::v1::Pod> =
            serde_json::from_str(PODS).unwrap();
        list.items.iter().filter_map(Pod::from_api).collect()
    }

    fn cluster() -> Cluster {
        Cluster {
            pods: pods().into_iter().map(|p| (p.uid.clone(), p)).collect(),
            namespaces: BTreeMap::new(),
        }
    }

    fn policies() -> Vec<Policy> {
        let a = "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow: []\n";
        let b = "name: coder\npods:\n  - namespace: \"*\"\n    labels: {app: coding-agent}\nallow: []\n";
        vec![
            parse(a, Path::new("a.yaml")).unwrap(),
            parse(b, Path::new("b.yaml")).unwrap(),
        ]
    }

    #[test]
    fn reads_api_pods_and_refuses_a_path_for_a_uid() {
        let pods = pods();
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["summarizer-7d9f", "coder-0", "web"]);
        assert_eq!(pods[0].qos, Qos::Burstable);
        assert_eq!(pods[1].qos, Qos::Guaranteed);
        assert_eq!(pods[0].labels["tier"], "agent");
    }

    #[test]
    fn cgroup_paths_under_both_drivers() {
        let pods = pods();
        let [systemd, cgroupfs] = cgroup_candidates(Path::new(""), &pods[0]);
        assert_eq!(
            systemd,
            PathBuf::from("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f2c5a1e_1111_4c3b_9a55_2b1c0d9e8f70.slice")
        );
        assert_eq!(
            cgroupfs,
            PathBuf::from("kubepods/burstable/pod0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70")
        );
        let [systemd, cgroupfs] = cgroup_candidates(Path::new("k"), &pods[1]);
        assert_eq!(
            systemd,
            PathBuf::from(
                "k/kubepods.slice/kubepods-podaa11bb22_2222_4c3b_9a55_2b1c0d9e8f71.slice"
            )
        );
        assert_eq!(
            cgroupfs,
            PathBuf::from("k/kubepods/podaa11bb22-2222-4c3b-9a55-2b1c0d9e8f71")
        );
    }

    /// Against a synthetic cgroup tree: the systemd layout for one pod, the
    /// cgroupfs layout for others, and a selected pod not started yet.
    #[test]
    fn classification_against_a_cgroup_tree() {
        let root = std::env::temp_dir().join(format!("egressd-kube-{}", std::process::id()));
        let pods = pods();
        let [summarizer, _] = cgroup_candidates(Path::new(""), &pods[0]);
        let [_, coder] = cgroup_candidates(Path::new(""), &pods[1]);
        let [_, web] = cgroup_candidates(Path::new(""), &pods[2]);
        for dir in [&summarizer, &coder, &web] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("cgroup.procs"), "").unwrap();
        }
        let got = classify(&policies(), &cluster(), None, &root, Path::new(""));
        let classes: Vec<(&PathBuf, &Class)> = got.iter().map(|(r, (c, _))| (r, c)).collect();
        assert_eq!(
            classes,
            [
                (&web, &Class::Released),
                (&coder, &Class::Policy("coder".into())),
                (&summarizer, &Class::Policy("doc".into())),
            ],
            "web matches the labels, not the namespace: released"
        );
        // egressd's own pod is released whatever selects it.
        let own = classify(
            &policies(),
            &cluster(),
            Some(&pods[1].uid),
            &root,
            Path::new(""),
        );
        assert_eq!(own[&coder].0, Class::Released);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn namespace_labels_select() {
        let p = parse(
            "name: ai\npods:\n  - namespace: \"*\"\n    namespaceSelector: {matchLabels: {team: ai}}\nallow: []\n",
            Path::new("ai.yaml"),
        )
        .unwrap();
        let mut c = cluster();
        let pod = c.pods.values().find(|p| p.name == "web").unwrap().clone();
        assert!(c.policy_of(std::slice::from_ref(&p), &pod).is_none());
        c.namespaces.insert(
            "default".into(),
            [("team".to_string(), "ai".to_string())].into(),
        );
        assert_eq!(
            c.policy_of(std::slice::from_ref(&p), &pod).unwrap().name,
            "ai"
        );
    }
}
