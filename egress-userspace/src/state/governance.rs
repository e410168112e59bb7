//! Which cgroups and pods are governed, and how, as `status` and the
//! metrics show it. Its one owner is `runtime::supervisor`, which decides
//! it and writes this whole after each change (`Governor::publish`);
//! nothing else writes it, and the allowlist's own methods never touch it.

use std::{collections::BTreeMap, path::PathBuf};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Governance {
    /// By policy name: the cgroups its programs are attached to (their
    /// paths, and ids).
    pub cgroups: BTreeMap<String, Vec<(PathBuf, u64)>>,
    /// By policy name: the pod cgroups mapped to it below the kubepods
    /// cgroup.
    pub pods: BTreeMap<String, Vec<(PathBuf, u64)>>,
    /// Pod cgroups no policy selects: paths.
    pub released: Vec<PathBuf>,
    /// Pod cgroups held for good (a policy governed the pod, and no longer
    /// selects it): paths below the cgroup2 root.
    pub held: Vec<PathBuf>,
}
