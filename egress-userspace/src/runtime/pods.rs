//! Kubernetes pods on this node, governed from their first process.
//!
//! The programs are attached once, to the kubepods cgroup (`kubepods.slice`
//! or `kubepods`), under a built-in policy, `kubernetes-pending`, that
//! allows nothing. Every pod's cgroup is below it, so a pod whose cgroup
//! appears is refused everything until egressd has classified it: then its
//! cgroup is mapped to the policy that selects it, or released (a pod no
//! policy selects passes as if no program were attached). No moment exists
//! in which a selected pod's process runs ungoverned, whatever the order in
//! which kubelet creates the cgroup and egressd learns of the pod.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};
use tokio::sync::watch;

use super::{
    kubernetes::{self, Class, Cluster},
    pod_cgroups::{self, Layout, Qos},
    supervisor::Governor,
};
use crate::policy::{validate::parse, Policy};

/// The built-in policy of pods not classified yet.
pub const PENDING: &str = "kubernetes-pending";

/// Where this node's pods come from, and where their cgroups are.
pub struct PodSource {
    /// The pods, as the API server tells them.
    pub cluster: watch::Receiver<Option<Cluster>>,
    /// The kubepods cgroups, and how kubelet names pod cgroups there.
    pub layouts: Vec<Layout>,
    /// egressd's own pod, never held.
    pub own_uid: Option<String>,
    /// Whether the watchers are hearing from the API server.
    pub health: std::sync::Arc<super::pod_watch::WatchHealth>,
}

/// The pods known, and what governs them.
pub struct Pods {
    pub source: Option<PodSource>,
    /// None until the pods and namespaces have been listed.
    pub cluster: Option<Cluster>,
}

impl Pods {
    pub fn new(source: Option<PodSource>) -> Pods {
        Pods {
            source,
            cluster: None,
        }
    }

    /// Waits for the next state of the cluster and takes it (never returns
    /// without a source, or once the watchers are gone).
    pub async fn next(&mut self) {
        let Some(src) = self.source.as_mut() else {
            return std::future::pending().await;
        };
        if src.cluster.changed().await.is_err() {
            return std::future::pending().await;
        }
        self.cluster = src.cluster.borrow_and_update().clone();
    }

    /// The policies to run: `base`, and `kubernetes-pending` on the kubepods
    /// cgroups when pods are watched.
    pub fn expand(&self, base: &[Policy], root: &Path) -> Result<Vec<Policy>> {
        let mut out = base.to_vec();
        let Some(src) = &self.source else {
            return Ok(out);
        };
        if base.iter().any(|p| p.name == PENDING) {
            bail!("policy name `{PENDING}` is egressd's own (pods not classified yet): rename the policy");
        }
        let cgroups = pod_cgroups::kubepods(&src.layouts);
        if let Some(gone) = cgroups.iter().find(|k| !root.join(k).is_dir()) {
            bail!("the kubepods cgroup {} is gone", root.join(gone).display());
        }
        if let Some(p) = base.iter().find(|p| {
            p.cgroups
                .iter()
                .any(|c| cgroups.iter().any(|k| c.starts_with(k) || k.starts_with(c)))
        }) {
            bail!(
                "policy `{}` names a cgroup at, above or below the kubepods cgroup: with --kubernetes, select pods with `pods:` instead",
                p.name
            );
        }
        let mut pending = parse(
            &format!("name: {PENDING}\nmode: enforce\nallow: []\n"),
            Path::new("(built in)"),
        )?;
        pending.cgroups = cgroups;
        out.push(pending);
        Ok(out)
    }

    /// How each pod cgroup that exists now is to be governed: those of the
    /// pods known (selected or released), or before the first list, what
    /// the previous run decided (`remembered`); static pods no API object
    /// claims (released); and egressd's own (released).
    fn classes(
        &self,
        base: &[Policy],
        root: &Path,
        remembered: BTreeMap<PathBuf, Class>,
    ) -> BTreeMap<PathBuf, Class> {
        let Some(src) = &self.source else {
            return BTreeMap::new();
        };
        let empty = Cluster::default();
        let mut out: BTreeMap<PathBuf, Class> = match &self.cluster {
            // Only pod cgroups: an entry naming a kubepods or QoS cgroup
            // would map every pod below it.
            None => {
                let pods: Vec<PathBuf> = pod_cgroups::existing(root, &src.layouts)
                    .into_iter()
                    .map(|(rel, _)| rel)
                    .collect();
                remembered
                    .into_iter()
                    .filter(|(rel, _)| pods.contains(rel))
                    .collect()
            }
            Some(cluster) => {
                kubernetes::classify(base, cluster, src.own_uid.as_deref(), root, &src.layouts)
                    .into_iter()
                    .map(|(rel, (class, _))| (rel, class))
                    .collect()
            }
        };
        // A static pod runs before the API server answers, and the control
        // plane's must reach it: released until one API object (its
        // mirror) classifies it. Two objects claiming it (a pod with a
        // forged mirror annotation) leave it released, not held: holding
        // it would let whoever may create pods cut a control plane off.
        let cluster = self.cluster.as_ref().unwrap_or(&empty);
        for (rel, hash) in pod_cgroups::static_pods(root, &src.layouts) {
            let claims = cluster
                .pods
                .values()
                .filter(|p| p.cgroup_uid == hash)
                .count();
            if claims != 1 {
                out.entry(rel).or_insert(Class::Released);
            }
        }
        if let Some(uid) = &src.own_uid {
            for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
                if let Some(rel) = pod_cgroups::pod_cgroup(root, &src.layouts, qos, uid) {
                    out.insert(rel, Class::Released);
                }
            }
        }
        out
    }

    /// Maps each pod cgroup to its policy (or releases it), and forgets
    /// those of pods that are gone: they are held again (pending).
    pub fn sync(&self, governor: &mut Governor, base: &[Policy], root: &Path) -> Result<()> {
        if self.source.is_none() {
            return Ok(());
        }
        let remembered = governor.remembered();
        let listed: Option<std::collections::HashSet<String>> = self
            .cluster
            .as_ref()
            .map(|c| c.pods.values().map(|p| p.cgroup_uid.clone()).collect());
        let synced = governor.set_pods(&self.classes(base, root, remembered), listed.as_ref());
        if let Some(src) = &self.source {
            let all: Vec<PathBuf> = pod_cgroups::existing(root, &src.layouts)
                .into_iter()
                .map(|(rel, _)| rel)
                .collect();
            governor
                .metrics
                .pods(governor.pod_counts(&all), src.health.last_event());
        }
        synced
    }

    /// Whether pods are watched (`--kubernetes`).
    pub fn watched(&self) -> bool {
        self.source.is_some()
    }

    /// Whether the pods are known, and the API server is heard (or no
    /// pods are watched).
    pub fn ready(&self) -> bool {
        match &self.source {
            None => true,
            Some(src) => self.cluster.is_some() && src.health.ok(),
        }
    }

    /// Each known pod's `namespace/name`, by uid.
    pub fn names(&self) -> std::collections::HashMap<String, String> {
        self.cluster
            .iter()
            .flat_map(|c| c.pods.values())
            .map(|p| (p.cgroup_uid.clone(), format!("{}/{}", p.namespace, p.name)))
            .collect()
    }

    /// Where pod cgroups appear, to watch.
    pub fn parents(&self, root: &Path) -> Vec<PathBuf> {
        match &self.source {
            Some(src) => pod_cgroups::parents(&src.layouts)
                .into_iter()
                .map(|p| root.join(p))
                .filter(|p| p.is_dir())
                .collect(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(root: &Path) -> Pods {
        std::fs::create_dir_all(root.join("k/kubepods")).unwrap();
        std::fs::write(root.join("k/kubepods/cgroup.procs"), "").unwrap();
        Pods::new(Some(PodSource {
            cluster: watch::channel(None).1,
            layouts: pod_cgroups::discover(root, Some(Path::new("k"))).unwrap(),
            own_uid: None,
            health: Default::default(),
        }))
    }

    #[test]
    fn pending_holds_the_kubepods_cgroup_and_nothing_else_may() {
        let root = std::env::temp_dir().join(format!("egressd-pods-{}", std::process::id()));
        let pods = pods(&root);
        let policy = |cgroups: &str| {
            parse(
                &format!("name: p\ncgroups: [{cgroups}]\nallow: []\n"),
                Path::new("p.yaml"),
            )
            .unwrap()
        };
        let run = pods.expand(&[policy("agents.slice")], &root).unwrap();
        assert_eq!(run[1].name, PENDING);
        assert_eq!(run[1].cgroups, [PathBuf::from("k/kubepods")]);
        assert!(run[1].rules.is_empty());
        for clash in ["k/kubepods/besteffort", "k/kubepods", "k"] {
            let e = pods.expand(&[policy(clash)], &root).unwrap_err();
            assert!(
                e.to_string().contains("select pods with `pods:`"),
                "{clash}: {e}"
            );
        }
        let mut named = policy("agents.slice");
        named.name = PENDING.into();
        assert!(pods.expand(&[named], &root).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
