//! Bringing the running state to a set of policies, at start and on every
//! reload: each policy's DNS proxy, tables, hostname refreshers and governed
//! cgroups. Used by both `run` and `exec`.
//!
//! A policy already running is replaced atomically (`Allowlist::replace`);
//! cgroups it no longer names are released, new ones governed; policies no
//! longer present are retired. The caller validates the whole set first,
//! so that a broken file never replaces what is enforced.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use tokio::{sync::mpsc::Sender, task::JoinHandle};

use crate::{
    dns::refresh,
    dns::{
        proxy::{serve_pod, Proxy},
        sockets,
    },
    kernel::cgroup::Cgroup,
    kernel::{
        diag::{self, LET_GO_WAIT},
        pins,
    },
    policy::Policy,
    report::describe::DnsEvent,
    report::metrics::{Metrics, PodCounts},
    runtime::{kubernetes::Class, pod_memory::PodMemory, watch::Change},
    state::allowlist::Allowlist,
    state::answers::Admitter,
    state::governance::Governance,
};

/// What runs for one policy.
struct Running {
    id: u32,
    proxy: Vec<JoinHandle<()>>,
    refreshers: Vec<JoinHandle<()>>,
    /// Governed cgroups: path relative to the cgroup2 root -> cgroup id.
    cgroups: HashMap<PathBuf, u64>,
    /// A DNS proxy inside the network namespace of each pod it governs.
    pod_proxies: HashMap<PathBuf, JoinHandle<()>>,
    /// The policy's proxy, to serve pods with.
    dns: Proxy,
}

pub struct Governor {
    pub allowlist: Arc<Mutex<Allowlist>>,
    pub metrics: Arc<Metrics>,
    dns_events: Sender<DnsEvent>,
    /// Links are pinned under `pin_dir/<policy>/<cgroup id>/`.
    pin_dir: PathBuf,
    cgroup_root: PathBuf,
    running: HashMap<String, Running>,
    /// Pod cgroups below the kubepods cgroup (where the programs are
    /// attached), mapped to a policy or released: path -> (cgroup id, how).
    pods: HashMap<PathBuf, (u64, Class)>,
    /// Running policies of pods only that the last `apply` did not have:
    /// their pods are classified again (released, or handed to the policy
    /// that now selects them, not held), then they are retired.
    removed: Vec<String>,
    /// What was decided for each pod cgroup, across restarts; among it,
    /// pod cgroups a policy governed whose pod it no longer selects: held,
    /// whatever they are classified as, until the cgroup is gone.
    memory: PodMemory,
}

impl Governor {
    pub fn new(
        allowlist: Arc<Mutex<Allowlist>>,
        metrics: Arc<Metrics>,
        dns_events: Sender<DnsEvent>,
        pin_dir: PathBuf,
        cgroup_root: PathBuf,
    ) -> Governor {
        Governor {
            allowlist,
            metrics,
            dns_events,
            pin_dir,
            cgroup_root,
            running: HashMap::new(),
            pods: HashMap::new(),
            memory: PodMemory::default(),
            removed: Vec::new(),
        }
    }

    /// The id of a running policy.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.running.get(name).map(|r| r.id)
    }

    /// Makes `policies` (already validated) the running set. Every cgroup
    /// is governed by its new policy before any is released by its old one,
    /// so that none is ever left ungoverned in between. A running policy
    /// that governs cgroups and is missing from `policies` is an error and
    /// nothing changes: a reload never stops enforcing on a cgroup (an
    /// editor that saves by moving the old file aside must not open
    /// anything); `egressd detach --policy` does that. One that governs
    /// only pods (a ConfigMap's policy, removed or renamed) is retired by
    /// `retire_removed`, once its pods are classified again.
    pub async fn apply(&mut self, policies: Vec<Policy>) -> Result<()> {
        let applied = self.apply_all(policies).await;
        self.publish();
        applied
    }

    async fn apply_all(&mut self, policies: Vec<Policy>) -> Result<()> {
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
        let mut missing: Vec<&String> = self
            .running
            .iter()
            .filter(|(n, r)| !names.contains(n) && !r.cgroups.is_empty())
            .map(|(n, _)| n)
            .collect();
        if !missing.is_empty() {
            missing.sort();
            bail!(
                "policies {missing:?} are no longer in the files: a reload does not stop enforcing a policy on its cgroups; to remove one, run `egressd detach --policy NAME` and restart egressd"
            );
        }
        // Set only once this apply has succeeded: a reload that fails half
        // way must not leave pods of a policy it would have removed free
        // to be released (rather than held) by a later sync.
        self.removed.clear();
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for policy in &policies {
            let name = policy.name.clone();
            if self.running.contains_key(&name) {
                self.update(policy.clone()).await
            } else {
                self.start(policy.clone()).await
            }
            .with_context(|| format!("policy `{name}`"))?;
        }
        for policy in &policies {
            self.release_cgroups(&policy.name, &policy.cgroups)
                .with_context(|| format!("policy `{}`", policy.name))?;
        }
        self.removed = removed;
        Ok(())
    }

    /// Starts one policy that is not running, leaving the others as they
    /// are.
    pub async fn start_policy(&mut self, policy: Policy) -> Result<()> {
        let name = policy.name.clone();
        if self.running.contains_key(&name) {
            bail!("policy `{name}` is running already");
        }
        let started = self
            .start(policy)
            .await
            .with_context(|| format!("policy `{name}`"));
        self.publish();
        started
    }

    async fn start(&mut self, policy: Policy) -> Result<()> {
        let name = policy.name.clone();
        let sockets = sockets::bind().await?;
        let (id, view) = {
            let mut allowlist = self
                .allowlist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let id = allowlist.install(policy.clone(), sockets.port)?;
            (id, allowlist.get(id).context("installed")?.view_cell())
        };
        let admitter = Admitter::new(self.allowlist.clone(), id);
        tracing::info!(
            policy = name,
            port = sockets.port,
            "DNS proxy on 127.0.0.1 and ::1"
        );
        let dns = Proxy {
            view,
            admitter: admitter.clone(),
            metrics: self.metrics.clone(),
            events: self.dns_events.clone(),
            name: name.clone(),
            port: sockets.port,
            exchanger: Default::default(),
            names: Default::default(),
        };
        let proxy = dns.clone().spawn(sockets);
        let refreshers = self.refresh(&admitter, &policy).await?;
        self.running.insert(
            name.clone(),
            Running {
                id,
                proxy,
                refreshers,
                cgroups: HashMap::new(),
                pod_proxies: HashMap::new(),
                dns,
            },
        );
        self.govern_cgroups(&name, &policy.cgroups)
    }

    async fn update(&mut self, policy: Policy) -> Result<()> {
        let name = policy.name.clone();
        let id = self.running[&name].id;
        self.allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(id, policy.clone())?;
        // No lookups here: a reload must not wait on DNS (cgroup changes are
        // handled by the same loop). Admission addresses of kept hosts stay;
        // new hosts are looked up at once, in the background.
        let resolver = Arc::new(refresh::resolver(&policy.dns)?);
        let hosts = policy
            .hosts()
            .into_iter()
            .map(|h| (h, std::time::Duration::ZERO))
            .collect();
        let admitter = Admitter::new(self.allowlist.clone(), id);
        let refreshers =
            refresh::spawn_refreshers(&admitter, &resolver, &self.metrics, &policy, hosts);
        let r = self.running.get_mut(&name).expect("running");
        for t in std::mem::replace(&mut r.refreshers, refreshers) {
            t.abort();
        }
        self.govern_cgroups(&name, &policy.cgroups)
    }

    /// Resolves the policy's exact hosts now and starts keeping them fresh.
    async fn refresh(&self, admitter: &Admitter, policy: &Policy) -> Result<Vec<JoinHandle<()>>> {
        let resolver = Arc::new(refresh::resolver(&policy.dns)?);
        let hosts = refresh::prewarm(admitter, &resolver, policy, &self.metrics).await;
        Ok(refresh::spawn_refreshers(
            admitter,
            &resolver,
            &self.metrics,
            policy,
            hosts,
        ))
    }

    /// Governs the cgroups in `wanted` not yet governed, creating missing
    /// ones, so that they are governed from their first process on.
    fn govern_cgroups(&mut self, name: &str, wanted: &[PathBuf]) -> Result<()> {
        let r = self.running.get_mut(name).expect("running");
        let mut e = self
            .allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for rel in wanted {
            if r.cgroups.contains_key(rel) {
                continue;
            }
            let cgroup = Cgroup::at(&self.cgroup_root, rel);
            if !cgroup.exists() {
                tracing::info!(policy = name, cgroup = %cgroup.path.display(), "creating the governed cgroup");
                cgroup.create()?;
            }
            cgroup.check_not_delegated(&self.cgroup_root)?;
            let cgroup_id = cgroup.id()?;
            let attachment = e.govern(r.id, &cgroup)?;
            // Unpinned, the links go with `attachment`: then the map entry
            // goes too, and the next apply governs the cgroup again.
            if let Err(err) = attachment.pin(&self.pin_dir.join(name).join(cgroup_id.to_string())) {
                let _ = e.ungovern(r.id, cgroup_id);
                return Err(err);
            }
            r.cgroups.insert(rel.clone(), cgroup_id);
            tracing::info!(policy = name, cgroup = %cgroup.path.display(), "governed");
        }
        Ok(())
    }

    /// Releases the cgroups policy `name` governs but no longer wants.
    /// First, what the backstop refused while they were governed, still
    /// queued in their sockets, is destroyed (see `diag::cut_stalled`);
    /// a cgroup where that fails stays governed, and the error says why.
    fn release_cgroups(&mut self, name: &str, wanted: &[PathBuf]) -> Result<()> {
        let r = self.running.get_mut(name).expect("running");
        let released: Vec<(PathBuf, u64)> = r
            .cgroups
            .iter()
            .filter(|(rel, _)| !wanted.contains(rel))
            .map(|(rel, id)| (rel.clone(), *id))
            .collect();
        if released.is_empty() {
            return Ok(());
        }
        // One wait for all of them (a reload that releases many cgroups
        // must not block the daemon for 2 s each).
        let (mut ids, mut pids) = (HashSet::new(), Vec::new());
        for (rel, cgroup_id) in &released {
            let cgroup = Cgroup::at(&self.cgroup_root, rel);
            ids.extend(cgroup.all_ids());
            ids.insert(*cgroup_id);
            pids.extend(cgroup.all_pids());
        }
        tokio::task::block_in_place(|| diag::cut_stalled(&ids, &pids, LET_GO_WAIT)).with_context(|| {
            let rels: Vec<String> = released.iter().map(|(rel, _)| rel.display().to_string()).collect();
            format!("cgroups {rels:?} stay governed: the data their sockets hold, refused while they were governed, could not be destroyed")
        })?;
        for (rel, cgroup_id) in released {
            let mut e = self
                .allowlist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            e.ungovern(r.id, cgroup_id)?;
            pins::remove_tree(&self.pin_dir.join(name).join(cgroup_id.to_string()))?;
            r.cgroups.remove(&rel);
            tracing::info!(policy = name, cgroup = %rel.display(), "no longer governed");
        }
        Ok(())
    }

    /// Makes `classes` the pod cgroups mapped below the kubepods cgroup:
    /// each to the id of the policy that selects its pod (with a DNS proxy
    /// in the pod's network namespace), or released. A pod cgroup no longer
    /// in `classes` (the pod is gone, or not known) is unmapped, and so held
    /// again by `kubernetes-pending`; so is a pod selected by a policy that
    /// is not running, and one a policy governed that is now classified
    /// otherwise (for as long as its cgroup lives, across restarts).
    pub fn set_pods(
        &mut self,
        classes: &BTreeMap<PathBuf, Class>,
        listed: Option<&std::collections::HashSet<String>>,
    ) -> Result<()> {
        let allowlist = self.allowlist.clone();
        let mut e = allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut first_error = None;
        let stale: Vec<PathBuf> = self
            .pods
            .keys()
            .filter(|rel| !classes.contains_key(*rel))
            .cloned()
            .collect();
        for rel in stale {
            let (cgroup_id, class) = self.pods.remove(&rel).expect("listed");
            if let Err(err) = e.unmap_cgroup(cgroup_id, self.value_of(&class).unwrap_or(0)) {
                first_error.get_or_insert(err);
            }
            stop_pod_proxy(&mut self.running, &rel, &class);
            tracing::info!(cgroup = %rel.display(), "pod no longer known: held until it is");
        }
        for (rel, class) in classes {
            let cgroup = Cgroup::at(&self.cgroup_root, rel);
            let Ok(cgroup_id) = cgroup.id() else {
                continue; // gone meanwhile
            };
            if self.memory.is_held(rel) || self.pods.get(rel) == Some(&(cgroup_id, class.clone())) {
                continue;
            }
            // A pod a policy governed is never released, nor handed to
            // another policy, while it lives: its labels (or its
            // namespace's) may be changed by whoever may patch them, the
            // agent among them. It is held until it is restarted.
            // A policy removed from the files is no such change: its pods
            // are classified anew.
            // Its policy, in this run or (not mapped yet) the last.
            let was = self.pods.get(rel).cloned();
            let governed_by = match &was {
                Some((id, Class::Policy(old))) if *id == cgroup_id => Some(old.clone()),
                Some(_) => None,
                None => self.memory.policy_of(rel).map(String::from),
            };
            let leaves = governed_by
                .is_some_and(|old| !self.removed.contains(&old) && *class != Class::Policy(old));
            let value = if leaves { None } else { self.value_of(class) };
            let Some(value) = value else {
                if let Some((old_id, old_class)) = self.pods.remove(rel) {
                    if let Err(err) = e.unmap_cgroup(old_id, self.value_of(&old_class).unwrap_or(0))
                    {
                        first_error.get_or_insert(err);
                    }
                    stop_pod_proxy(&mut self.running, rel, &old_class);
                }
                if leaves {
                    self.memory.hold(rel.clone());
                    tracing::warn!(cgroup = %rel.display(), "a governed pod is no longer selected by its policy: held (refused everything) until it is restarted");
                }
                continue;
            };
            // The new value replaces the old in one update.
            if let Err(err) = e.map_cgroup(cgroup_id, value) {
                first_error.get_or_insert(err);
                continue;
            }
            if let Some((old_id, old_class)) = self.pods.remove(rel) {
                if old_id != cgroup_id {
                    let _ = e.unmap_cgroup(old_id, self.value_of(&old_class).unwrap_or(0));
                }
                stop_pod_proxy(&mut self.running, rel, &old_class);
            }
            if let Class::Policy(name) = class {
                let r = self.running.get_mut(name).expect("value_of found it");
                let task = tokio::spawn(serve_pod(r.dns.clone(), cgroup));
                r.pod_proxies.insert(rel.clone(), task);
                tracing::info!(policy = name, cgroup = %rel.display(), "pod governed");
            } else {
                tracing::info!(cgroup = %rel.display(), "pod released: no policy selects it");
            }
            self.pods.insert(rel.clone(), (cgroup_id, class.clone()));
        }
        self.memory.remember(
            self.pods.iter().map(|(rel, (_, c))| (rel, c)),
            &self.cgroup_root,
            listed,
        );
        drop(e);
        self.publish();
        first_error.map_or(Ok(()), Err)
    }

    /// How many of the pod cgroups `all` are in each state.
    pub fn pod_counts(&self, all: &[PathBuf]) -> PodCounts {
        let mut counts = PodCounts::default();
        for rel in all {
            match self.pods.get(rel) {
                _ if self.memory.is_held(rel) => counts.held += 1,
                Some((_, Class::Policy(_))) => counts.governed += 1,
                Some((_, Class::Released)) => counts.released += 1,
                None => counts.pending += 1,
            }
        }
        counts
    }

    /// Retires the policies of pods only that the last `apply` removed
    /// (call it after the pods are classified under the new set: a pod
    /// still mapped to one is held meanwhile).
    pub fn retire_removed(&mut self) -> Result<()> {
        let mut first_error = None;
        for name in std::mem::take(&mut self.removed) {
            let Some(mut r) = self.running.remove(&name) else {
                continue;
            };
            for t in r
                .proxy
                .drain(..)
                .chain(r.refreshers.drain(..))
                .chain(r.pod_proxies.drain().map(|(_, t)| t))
            {
                t.abort();
            }
            let stale: Vec<(PathBuf, u64)> = self
                .pods
                .iter()
                .filter(|(_, (_, c))| *c == Class::Policy(name.clone()))
                .map(|(rel, (id, _))| (rel.clone(), *id))
                .collect();
            let mut e = self
                .allowlist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (rel, cgroup_id) in stale {
                // Unmapped: held by `kubernetes-pending`.
                if let Err(err) = e.unmap_cgroup(cgroup_id, r.id) {
                    first_error.get_or_insert(err);
                }
                self.pods.remove(&rel);
            }
            let cgroups: Vec<u64> = r.cgroups.values().copied().collect();
            if let Err(err) = e.retire(r.id, &cgroups) {
                first_error.get_or_insert(err);
            }
            tracing::info!(policy = name, "policy removed from the files: retired");
        }
        self.publish();
        first_error.map_or(Ok(()), Err)
    }

    /// Writes which cgroups and pods are governed, and how, where `status`
    /// and the metrics read it (this is its only writer).
    fn publish(&self) {
        let at = |rel: &PathBuf, id: u64| (self.cgroup_root.join(rel), id);
        let mut g = Governance {
            held: self.memory.held(),
            ..Governance::default()
        };
        for (name, r) in &self.running {
            let mut cgroups: Vec<_> = r.cgroups.iter().map(|(rel, id)| at(rel, *id)).collect();
            cgroups.sort();
            g.cgroups.insert(name.clone(), cgroups);
            g.pods.insert(name.clone(), Vec::new());
        }
        for (rel, (id, class)) in &self.pods {
            match class {
                Class::Policy(name) => g.pods.entry(name.clone()).or_default().push(at(rel, *id)),
                Class::Released => g.released.push(self.cgroup_root.join(rel)),
            }
        }
        for pods in g.pods.values_mut() {
            pods.sort();
        }
        g.released.sort();
        self.allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .governance = g;
    }

    /// Remembers what is decided for each pod cgroup in `file` (and takes
    /// over what it remembers; `legacy`, egressd 0.1's held pods, too).
    pub fn remember_pods(&mut self, file: PathBuf, legacy: &std::path::Path) {
        self.memory = PodMemory::load(file, legacy, &self.cgroup_root);
    }

    /// The classes remembered from the previous run: how pods are governed
    /// before the API server has listed them.
    pub fn remembered(&self) -> BTreeMap<PathBuf, Class> {
        self.memory.classes()
    }

    /// The `CGROUP_POLICY` value for a pod of class `class`; None for a
    /// policy that is not running.
    fn value_of(&self, class: &Class) -> Option<u32> {
        match class {
            Class::Released => Some(egress_common::POLICY_RELEASED),
            Class::Policy(name) => self.running.get(name).map(|r| r.id),
        }
    }

    /// The directories holding governed cgroups, to watch for changes.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .running
            .values()
            .flat_map(|r| r.cgroups.keys())
            .filter_map(|rel| self.cgroup_root.join(rel).parent().map(PathBuf::from))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Reacts to cgroups created or removed next to governed ones: a
    /// governed cgroup that was removed is created again at once (so that
    /// whoever recreates it finds it governed), and one whose id changed is
    /// governed again.
    pub fn on_changes(&mut self, changes: &[Change]) -> Result<()> {
        let mut first_error = None;
        let mut changed = false;
        for change in changes {
            let path = change.dir.join(&change.name);
            let hit = self.running.iter().find_map(|(name, r)| {
                r.cgroups
                    .keys()
                    .find(|rel| self.cgroup_root.join(rel) == path)
                    .map(|rel| (name.clone(), rel.clone()))
            });
            let Some((name, rel)) = hit else { continue };
            if !change.created {
                tracing::warn!(policy = name, cgroup = %path.display(), "governed cgroup removed: creating it again");
            }
            match self.regovern(&name, &rel) {
                Ok(again) => changed |= again,
                Err(e) => {
                    tracing::error!(policy = name, cgroup = %path.display(), "governing it again: {e:#}");
                    first_error.get_or_insert(e);
                    changed = true;
                }
            }
        }
        if changed {
            self.publish();
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Governs `rel` again if it was removed (creating it) or recreated;
    /// whether it was.
    fn regovern(&mut self, name: &str, rel: &PathBuf) -> Result<bool> {
        let cgroup = Cgroup::at(&self.cgroup_root, rel);
        let Some(r) = self.running.get_mut(name) else {
            return Ok(false);
        };
        let Some(&old_id) = r.cgroups.get(rel) else {
            return Ok(false);
        };
        if !cgroup.exists() {
            cgroup.create()?;
        }
        let new_id = cgroup.id()?;
        if new_id == old_id {
            return Ok(false);
        }
        cgroup.check_not_delegated(&self.cgroup_root)?;
        let mut e = self
            .allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let attachment = e.govern(r.id, &cgroup)?;
        if let Err(err) = attachment.pin(&self.pin_dir.join(name).join(new_id.to_string())) {
            let _ = e.ungovern(r.id, new_id);
            return Err(err);
        }
        // The old cgroup's links and its entry stay until the kernel frees
        // it (see `sweep_removed`).
        r.cgroups.insert(rel.clone(), new_id);
        tracing::info!(policy = name, cgroup = %cgroup.path.display(), "governed again");
        Ok(true)
    }

    /// Checks every governed cgroup against the cgroup tree (what inotify
    /// may have missed: a queue overflow, a watched parent removed): a
    /// removed one is created again, a recreated one governed again.
    pub fn verify_all(&mut self) -> Result<()> {
        let all: Vec<(String, PathBuf)> = self
            .running
            .iter()
            .flat_map(|(n, r)| r.cgroups.keys().map(|rel| (n.clone(), rel.clone())))
            .collect();
        let mut first_error = None;
        let mut changed = false;
        for (name, rel) in all {
            match self.regovern(&name, &rel) {
                Ok(again) => changed |= again,
                Err(e) => {
                    first_error.get_or_insert(e);
                    changed = true;
                }
            }
        }
        if changed {
            self.publish();
        }
        if let Err(e) = self.sweep_removed() {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the links (and the map entry) of each cgroup that is no
    /// longer governed because it was removed, once the kernel has freed
    /// it. Until then its sockets (a process that exited leaves its unsent
    /// data queued, and TCP sends it again) are still judged by them: what
    /// the backstop refused stays refused.
    fn sweep_removed(&mut self) -> Result<()> {
        let mut e = self
            .allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, r) in &self.running {
            let Ok(dirs) = std::fs::read_dir(self.pin_dir.join(name)) else {
                continue;
            };
            for dir in dirs.flatten() {
                let Some(id) = dir.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                    continue;
                };
                if r.cgroups.values().any(|&governed| governed == id)
                    || !pins::cgroup_freed(&dir.path())
                {
                    continue;
                }
                e.ungovern(r.id, id)?;
                pins::remove_tree(&dir.path())?;
                tracing::info!(
                    policy = name,
                    cgroup_id = id,
                    "removed cgroup freed: its links removed"
                );
            }
        }
        Ok(())
    }

    /// Stops every task (the pinned links stay).
    pub fn abort_tasks(&mut self) {
        for r in self.running.values_mut() {
            for t in r.proxy.drain(..).chain(r.refreshers.drain(..)) {
                t.abort();
            }
            for (_, t) in r.pod_proxies.drain() {
                t.abort();
            }
        }
    }
}

/// Stops the DNS proxy a policy ran in a pod's network namespace.
fn stop_pod_proxy(running: &mut HashMap<String, Running>, rel: &PathBuf, class: &Class) {
    if let Class::Policy(name) = class {
        if let Some(task) = running
            .get_mut(name)
            .and_then(|r| r.pod_proxies.remove(rel))
        {
            task.abort();
        }
    }
}
