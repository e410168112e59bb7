//! Kubernetes: which pods on this node a policy selects, and where their
//! cgroups are. Pods come from a PodList (the API's JSON, as `kubectl get
//! pods -o json` writes it; the DaemonSet's sidecar keeps such a file
//! fresh). A pod's cgroup is found under both cgroup drivers:
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice`
//!   (Guaranteed pods directly under `kubepods.slice`; `-` in the uid becomes `_`);
//! - cgroupfs: `kubepods/<qos>/pod<uid>` (Guaranteed directly under `kubepods`).
//!
//! Governing the pod's cgroup governs every container in it (sub-cgroups).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::policy::Policy;

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
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub qos: Qos,
}

/// The pods of a PodList (or a single Pod) that run on `node`.
pub fn parse_pods(json: &str, node: Option<&str>) -> Result<Vec<Pod>> {
    let v: Value = serde_json::from_str(json).context("the pods file is not JSON")?;
    let items: Vec<&Value> = match v.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![&v],
    };
    let mut pods = Vec::new();
    for item in items {
        let meta = &item["metadata"];
        let (Some(uid), Some(namespace), Some(name)) = (
            meta["uid"].as_str(),
            meta["namespace"].as_str(),
            meta["name"].as_str(),
        ) else {
            continue;
        };
        // A uid becomes part of a path: accept only what uids look like.
        if !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') || uid.is_empty() {
            continue;
        }
        let pod_node = item["spec"]["nodeName"].as_str().unwrap_or("");
        if node.is_some_and(|n| n != pod_node) {
            continue;
        }
        let qos = match item["status"]["qosClass"].as_str() {
            Some("Guaranteed") => Qos::Guaranteed,
            Some("BestEffort") => Qos::BestEffort,
            _ => Qos::Burstable,
        };
        let labels = meta["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        pods.push(Pod {
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            node: pod_node.to_string(),
            labels,
            qos,
        });
    }
    Ok(pods)
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

/// For each policy with pod selectors: the cgroups (relative to the cgroup2
/// root `cgroup_root`) of the pods it selects whose cgroup exists now.
/// A pod selected by two policies is governed by the first (in file order).
pub fn pod_cgroups(
    policies: &[Policy],
    pods: &[Pod],
    cgroup_root: &Path,
    kubepods_root: &Path,
) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for pod in pods {
        let Some(policy) = policies.iter().find(|p| {
            p.pods
                .iter()
                .any(|s| s.matches(&pod.namespace, &pod.labels))
        }) else {
            continue;
        };
        let found = cgroup_candidates(kubepods_root, pod)
            .into_iter()
            .find(|rel| cgroup_root.join(rel).join("cgroup.procs").exists());
        if let Some(rel) = found {
            out.entry(policy.name.clone()).or_default().push(rel);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::parse;

    /// Recorded API objects (trimmed `kubectl get pods -A -o json`).
    const PODS: &str = r#"{"apiVersion":"v1","kind":"PodList","items":[
      {"metadata":{"name":"summarizer-7d9f","namespace":"agents","uid":"0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
                   "labels":{"app":"doc-summarizer","tier":"agent"}},
       "spec":{"nodeName":"node-a"},"status":{"qosClass":"Burstable","phase":"Running"}},
      {"metadata":{"name":"coder-0","namespace":"agents","uid":"aa11bb22-2222-4c3b-9a55-2b1c0d9e8f71",
                   "labels":{"app":"coding-agent"}},
       "spec":{"nodeName":"node-a"},"status":{"qosClass":"Guaranteed"}},
      {"metadata":{"name":"summarizer-other-node","namespace":"agents","uid":"bb11bb22-3333-4c3b-9a55-2b1c0d9e8f72",
                   "labels":{"app":"doc-summarizer"}},
       "spec":{"nodeName":"node-b"},"status":{"qosClass":"BestEffort"}},
      {"metadata":{"name":"web","namespace":"default","uid":"cc11bb22-4444-4c3b-9a55-2b1c0d9e8f73",
                   "labels":{"app":"doc-summarizer"}},
       "spec":{"nodeName":"node-a"},"status":{"qosClass":"BestEffort"}},
      {"metadata":{"name":"evil","namespace":"agents","uid":"../../etc","labels":{"app":"doc-summarizer"}},
       "spec":{"nodeName":"node-a"},"status":{}}
    ]}"#;

    fn policies() -> Vec<Policy> {
        let a = "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow: []\n";
        let b = "name: coder\npods:\n  - namespace: \"*\"\n    labels: {app: coding-agent}\nallow: []\n";
        vec![
            parse(a, Path::new("a.yaml")).unwrap(),
            parse(b, Path::new("b.yaml")).unwrap(),
        ]
    }

    #[test]
    fn parses_pods_on_this_node_only() {
        let pods = parse_pods(PODS, Some("node-a")).unwrap();
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["summarizer-7d9f", "coder-0", "web"],
            "a path in a uid is refused"
        );
        assert_eq!(pods[0].qos, Qos::Burstable);
        assert_eq!(pods[1].qos, Qos::Guaranteed);
        assert_eq!(parse_pods(PODS, None).unwrap().len(), 4);
    }

    #[test]
    fn cgroup_paths_under_both_drivers() {
        let pods = parse_pods(PODS, Some("node-a")).unwrap();
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
    /// cgroupfs layout for another, and a selected pod not started yet.
    #[test]
    fn selection_and_mapping_against_a_cgroup_tree() {
        let root = std::env::temp_dir().join(format!("egressd-kube-{}", std::process::id()));
        let pods = parse_pods(PODS, Some("node-a")).unwrap();
        let [systemd, _] = cgroup_candidates(Path::new(""), &pods[0]);
        let [_, cgroupfs] = cgroup_candidates(Path::new(""), &pods[1]);
        for dir in [&systemd, &cgroupfs] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("cgroup.procs"), "").unwrap();
        }
        let got = pod_cgroups(&policies(), &pods, &root, Path::new(""));
        assert_eq!(
            got["doc"],
            vec![systemd.clone()],
            "only agents/app=doc-summarizer, started"
        );
        assert_eq!(got["coder"], vec![cgroupfs]);
        // `web` matches the labels but not the namespace: governed by no one.
        assert_eq!(got.values().map(Vec::len).sum::<usize>(), 2);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
