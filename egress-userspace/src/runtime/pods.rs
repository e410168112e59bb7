//! Kubernetes pods on this node, as the daemon learns of them (a PodList
//! file, polled), and the cgroups of those each policy selects.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::{kubernetes, supervisor::Governor, watch::stamp};
use crate::policy::Policy;

/// Where this node's pods are listed (a PodList file kept fresh by the
/// DaemonSet's sidecar), and where their cgroups are.
pub struct PodSource {
    pub file: PathBuf,
    /// Only pods scheduled on this node (None: every pod in the file).
    pub node: Option<String>,
    /// The directory holding `kubepods.slice` or `kubepods`, relative to
    /// the cgroup2 root (empty: the root itself).
    pub kubepods_root: PathBuf,
}

/// The pods last read, and what governs them.
pub struct Pods {
    pub source: Option<PodSource>,
    pub pods: Vec<kubernetes::Pod>,
    pub seen: Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
    /// Whether the pods file was read once (until then, an earlier run's
    /// pinned programs must stay: they govern the pods).
    pub loaded: bool,
}

impl Pods {
    /// Reads the pods file again if it changed; a file that cannot be read
    /// keeps the pods known so far. Returns whether anything changed.
    pub fn refresh(&mut self) -> bool {
        let Some(src) = &self.source else {
            return false;
        };
        let now = stamp(&src.file);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        let read = std::fs::read_to_string(&src.file)
            .map_err(anyhow::Error::from)
            .and_then(|t| kubernetes::parse_pods(&t, src.node.as_deref()));
        match read {
            Ok(pods) => {
                let changed = pods != self.pods || !self.loaded;
                self.pods = pods;
                self.loaded = true;
                changed
            }
            Err(e) => {
                tracing::warn!(file = %src.file.display(), "reading pods: {e:#}; keeping the pods known so far");
                false
            }
        }
    }

    /// `base` with each policy's cgroups extended by those of the pods it
    /// selects (that exist now); and, per policy, the pod cgroups alone.
    pub fn expand(
        &self,
        base: &[Policy],
        root: &Path,
    ) -> (Vec<Policy>, BTreeMap<String, Vec<PathBuf>>) {
        let map = match &self.source {
            Some(src) => kubernetes::pod_cgroups(base, &self.pods, root, &src.kubepods_root),
            None => BTreeMap::new(),
        };
        let expanded = base
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.cgroups
                    .extend(map.get(&p.name).cloned().unwrap_or_default());
                p
            })
            .collect();
        (expanded, map)
    }

    /// Governs the cgroups of the pods each policy selects now, and
    /// releases those of pods that are gone; one policy's failure does not
    /// stop the others (and the next poll tries again).
    pub fn sync(&self, governor: &mut Governor, base: &[Policy], root: &Path) -> Result<()> {
        let (expanded, map) = self.expand(base, root);
        let mut first_error = None;
        for p in &expanded {
            let pods = map.get(&p.name).cloned().unwrap_or_default();
            if let Err(e) = governor.set_cgroups(&p.name, &p.cgroups, &pods) {
                first_error.get_or_insert(e.context(format!("policy `{}`", p.name)));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether the pods are known (or none are used).
    pub fn ready(&self) -> bool {
        self.source.is_none() || self.loaded
    }

    /// Where pod cgroups appear, to watch.
    pub fn parents(&self, root: &Path) -> Vec<PathBuf> {
        match &self.source {
            Some(src) => kubernetes::pod_parents(&src.kubepods_root)
                .into_iter()
                .map(|p| root.join(p))
                .filter(|p| p.is_dir())
                .collect(),
            None => Vec::new(),
        }
    }
}
