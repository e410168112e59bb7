//! Kubernetes: the pods on this node and which policy each belongs to.
//! Pods come from the API server (`pod_watch`); here they are plain data;
//! where their cgroups are is `pod_cgroups`'s.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::pod_cgroups::{pod_cgroup, Layout, Qos};
use crate::policy::{selector::Labels, Policy};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    /// The uid kubelet names the pod's cgroup by: its own, or for a static
    /// pod's mirror, the config hash kubelet gave the static pod (the
    /// `kubernetes.io/config.mirror` annotation).
    pub cgroup_uid: String,
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
        let mirror = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.mirror"))
            .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        Some(Pod {
            uid: uid.to_string(),
            cgroup_uid: mirror.map_or(uid, String::as_str).to_string(),
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
    /// None while the pod's namespace is not known (its labels could
    /// select it): the pod cannot be classified yet.
    pub fn policy_of<'a>(&self, policies: &'a [Policy], pod: &Pod) -> Option<Option<&'a Policy>> {
        let ns = self.namespaces.get(&pod.namespace)?;
        Some(policies.iter().find(|p| {
            p.pods
                .iter()
                .any(|s| s.matches(&pod.namespace, ns, &pod.labels))
        }))
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

/// The cgroups of the pods known now whose cgroup exists, and how each is
/// to be governed; `own_uid` (egressd's own pod) is released whatever
/// selects it. Left out, and so held: a pod whose namespace is not known
/// yet, and a cgroup two API objects claim (a pod posing as another's
/// static pod mirror).
pub fn classify(
    policies: &[Policy],
    cluster: &Cluster,
    own_uid: Option<&str>,
    cgroup_root: &Path,
    layouts: &[Layout],
) -> BTreeMap<PathBuf, (Class, Pod)> {
    let mut claims: BTreeMap<&str, usize> = BTreeMap::new();
    for pod in cluster.pods.values() {
        *claims.entry(pod.cgroup_uid.as_str()).or_default() += 1;
    }
    let mut out = BTreeMap::new();
    for pod in cluster.pods.values() {
        if claims[pod.cgroup_uid.as_str()] > 1 {
            tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), "two pods claim one cgroup: held");
            continue;
        }
        let Some(rel) = pod_cgroup(cgroup_root, layouts, pod.qos, &pod.cgroup_uid) else {
            continue;
        };
        let Some(policy) = cluster.policy_of(policies, pod) else {
            continue;
        };
        let class = match policy {
            Some(p) if own_uid != Some(pod.cgroup_uid.as_str()) => Class::Policy(p.name.clone()),
            _ => Class::Released,
        };
        out.insert(rel, (class, pod.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::parse;
    use crate::runtime::pod_cgroups::{candidates, discover};

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
            namespaces: [("agents", Labels::new()), ("default", Labels::new())]
                .into_iter()
                .map(|(n, l)| (n.to_string(), l))
                .collect(),
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
        assert_eq!(pods[0].cgroup_uid, pods[0].uid);
    }

    /// A static pod's cgroup is named by its config hash, which its mirror
    /// pod carries in an annotation.
    #[test]
    fn a_static_pods_cgroup_is_its_config_hash() {
        let json = r#"{"metadata":{"name":"kube-apiserver-node-a","namespace":"kube-system",
            "uid":"9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d",
            "annotations":{"kubernetes.io/config.mirror":"5f4dcc3b5aa765d61d8327deb882cf99"}},
            "spec":{"containers":[]},"status":{"qosClass":"Burstable"}}"#;
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_str(json).unwrap();
        let pod = Pod::from_api(&pod).unwrap();
        assert_eq!(pod.cgroup_uid, "5f4dcc3b5aa765d61d8327deb882cf99");
    }

    /// Against a synthetic cgroup tree: the systemd layout for one pod, the
    /// cgroupfs layout for others, and a selected pod not started yet.
    #[test]
    fn classification_against_a_cgroup_tree() {
        let root = std::env::temp_dir().join(format!("egressd-kube-{}", std::process::id()));
        for k in ["kubepods", "kubepods.slice"] {
            std::fs::create_dir_all(root.join(k)).unwrap();
        }
        let layouts = discover(&root, Some(Path::new(""))).unwrap();
        let pods = pods();
        // Under kubepods, then kubepods.slice.
        let [_, summarizer] =
            <[PathBuf; 2]>::try_from(candidates(&layouts, pods[0].qos, &pods[0].cgroup_uid))
                .unwrap();
        let [coder, _] =
            <[PathBuf; 2]>::try_from(candidates(&layouts, pods[1].qos, &pods[1].cgroup_uid))
                .unwrap();
        let [web, _] =
            <[PathBuf; 2]>::try_from(candidates(&layouts, pods[2].qos, &pods[2].cgroup_uid))
                .unwrap();
        for dir in [&summarizer, &coder, &web] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("cgroup.procs"), "").unwrap();
        }
        let layouts = &layouts;
        let got = classify(&policies(), &cluster(), None, &root, layouts);
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
        let own = classify(&policies(), &cluster(), Some(&pods[1].uid), &root, layouts);
        assert_eq!(own[&coder].0, Class::Released);
        // A pod whose namespace is not known yet is not classified.
        let mut c = cluster();
        c.namespaces.remove("agents");
        let held = classify(&policies(), &c, None, &root, layouts);
        assert!(!held.contains_key(&summarizer) && held.contains_key(&web));
        // A pod claiming another's cgroup (a forged mirror annotation): both held.
        let mut c = cluster();
        let mut forged = c.pods.values().find(|p| p.name == "web").unwrap().clone();
        forged.uid = "ffffffff-0000-4c3b-9a55-2b1c0d9e8f79".into();
        forged.cgroup_uid = pods[0].uid.clone();
        forged.labels.clear();
        c.pods.insert(forged.uid.clone(), forged);
        let held = classify(&policies(), &c, None, &root, layouts);
        assert!(!held.contains_key(&summarizer), "{held:?}");
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
        c.namespaces.remove("default");
        assert!(
            c.policy_of(std::slice::from_ref(&p), &pod).is_none(),
            "namespace unknown: not classified"
        );
        c.namespaces.insert("default".into(), Labels::new());
        assert_eq!(c.policy_of(std::slice::from_ref(&p), &pod), Some(None));
        c.namespaces.insert(
            "default".into(),
            [("team".to_string(), "ai".to_string())].into(),
        );
        assert_eq!(
            c.policy_of(std::slice::from_ref(&p), &pod)
                .unwrap()
                .unwrap()
                .name,
            "ai"
        );
    }
}
