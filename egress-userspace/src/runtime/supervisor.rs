//! Bringing the running state to a set of policies, at start and on every
//! reload: each policy's DNS proxy, tables, hostname refreshers and governed
//! cgroups. Used by both `run` and `exec`.
//!
//! A policy already running is replaced atomically (`Allowlist::replace`);
//! cgroups it no longer names are released, new ones governed; policies no
//! longer present are retired. The caller validates the whole set first,
//! so that a broken file never replaces what is enforced.

use std::{
    collections::HashMap,
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
    kernel::pins,
    policy::Policy,
    report::describe::DnsEvent,
    report::metrics::Metrics,
    runtime::watch::Change,
    state::allowlist::Allowlist,
    state::learn::Learner,
};

/// What runs for one policy.
struct Running {
    id: u32,
    proxy: Vec<JoinHandle<()>>,
    refreshers: Vec<JoinHandle<()>>,
    /// Governed cgroups: path relative to the cgroup2 root -> cgroup id.
    cgroups: HashMap<PathBuf, u64>,
    /// Those of them that belong to pods: when one is removed, the pod is
    /// gone; it is released, not created again.
    pod_cgroups: std::collections::HashSet<PathBuf>,
    /// A DNS proxy inside each pod's network namespace.
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
        }
    }

    /// The id of a running policy.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.running.get(name).map(|r| r.id)
    }

    /// Makes `policies` (already validated) the running set. Every cgroup
    /// is governed by its new policy before any is released by its old one,
    /// so that none is ever left ungoverned in between. A running policy
    /// missing from `policies` is an error and nothing changes: a reload
    /// never stops enforcing (an editor that saves by moving the old file
    /// aside must not open anything); `egressd detach --policy` does that.
    pub async fn apply(&mut self, policies: Vec<Policy>) -> Result<()> {
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
        let mut missing: Vec<&String> =
            self.running.keys().filter(|n| !names.contains(n)).collect();
        if !missing.is_empty() {
            missing.sort();
            bail!(
                "policies {missing:?} are no longer in the files: a reload does not stop enforcing a policy; to remove one, run `egressd detach --policy NAME` and restart egressd"
            );
        }
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
        Ok(())
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
        let learner = Learner::new(self.allowlist.clone(), id);
        tracing::info!(
            policy = name,
            port = sockets.port,
            "DNS proxy on 127.0.0.1 and ::1"
        );
        let dns = Proxy {
            view,
            learner: learner.clone(),
            metrics: self.metrics.clone(),
            events: self.dns_events.clone(),
            name: name.clone(),
            port: sockets.port,
            exchanger: Default::default(),
        };
        let proxy = dns.clone().spawn(sockets);
        let refreshers = self.refresh(&learner, &policy).await?;
        self.running.insert(
            name.clone(),
            Running {
                id,
                proxy,
                refreshers,
                cgroups: HashMap::new(),
                pod_cgroups: Default::default(),
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
        // handled by the same loop). Learned addresses of kept hosts stay;
        // new hosts are looked up at once, in the background.
        let resolver = Arc::new(refresh::resolver(&policy.dns)?);
        let hosts = policy
            .hosts()
            .into_iter()
            .map(|h| (h, std::time::Duration::ZERO))
            .collect();
        let learner = Learner::new(self.allowlist.clone(), id);
        let refreshers =
            refresh::spawn_refreshers(&learner, &resolver, &self.metrics, &policy, hosts);
        let r = self.running.get_mut(&name).expect("running");
        for t in std::mem::replace(&mut r.refreshers, refreshers) {
            t.abort();
        }
        self.govern_cgroups(&name, &policy.cgroups)
    }

    /// Resolves the policy's exact hosts now and starts keeping them fresh.
    async fn refresh(&self, learner: &Learner, policy: &Policy) -> Result<Vec<JoinHandle<()>>> {
        let resolver = Arc::new(refresh::resolver(&policy.dns)?);
        let hosts = refresh::prewarm(learner, &resolver, policy, &self.metrics).await;
        Ok(refresh::spawn_refreshers(
            learner,
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
                if r.pod_cgroups.contains(rel) {
                    continue; // a pod that is gone: nothing to create
                }
                tracing::info!(policy = name, cgroup = %cgroup.path.display(), "creating the governed cgroup");
                cgroup.create()?;
            }
            cgroup.check_not_delegated(&self.cgroup_root)?;
            let attachment = e.govern(r.id, &cgroup)?;
            let cgroup_id = cgroup.id()?;
            attachment.pin(&self.pin_dir.join(name).join(cgroup_id.to_string()))?;
            r.cgroups.insert(rel.clone(), cgroup_id);
            tracing::info!(policy = name, cgroup = %cgroup.path.display(), "governed");
        }
        Ok(())
    }

    /// Releases the cgroups policy `name` governs but no longer wants.
    fn release_cgroups(&mut self, name: &str, wanted: &[PathBuf]) -> Result<()> {
        let r = self.running.get_mut(name).expect("running");
        let mut e = self
            .allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let released: Vec<(PathBuf, u64)> = r
            .cgroups
            .iter()
            .filter(|(rel, _)| !wanted.contains(rel))
            .map(|(rel, id)| (rel.clone(), *id))
            .collect();
        for (rel, cgroup_id) in released {
            e.ungovern(r.id, cgroup_id)?;
            pins::remove_tree(&self.pin_dir.join(name).join(cgroup_id.to_string()))?;
            r.cgroups.remove(&rel);
            tracing::info!(policy = name, cgroup = %rel.display(), "no longer governed");
        }
        Ok(())
    }

    /// Makes `wanted` (static cgroups and those of selected pods, `pods`
    /// among them) the governed cgroups of running policy `name`: the new
    /// ones are governed before the old ones are released.
    pub fn set_cgroups(&mut self, name: &str, wanted: &[PathBuf], pods: &[PathBuf]) -> Result<()> {
        let Some(r) = self.running.get_mut(name) else {
            return Ok(());
        };
        r.pod_cgroups = pods.iter().cloned().collect();
        // DNS inside each pod's own network namespace.
        r.pod_proxies.retain(|rel, task| {
            let keep = pods.contains(rel);
            if !keep {
                task.abort();
            }
            keep
        });
        for rel in pods {
            if !r.pod_proxies.contains_key(rel) {
                let cgroup = Cgroup::at(&self.cgroup_root, rel);
                let task = tokio::spawn(serve_pod(r.dns.clone(), cgroup));
                r.pod_proxies.insert(rel.clone(), task);
            }
        }
        self.govern_cgroups(name, wanted)?;
        self.release_cgroups(name, wanted)
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
        for change in changes {
            let path = change.dir.join(&change.name);
            let hit = self.running.iter().find_map(|(name, r)| {
                r.cgroups
                    .keys()
                    .find(|rel| self.cgroup_root.join(rel) == path)
                    .map(|rel| (name.clone(), rel.clone()))
            });
            let Some((name, rel)) = hit else { continue };
            let is_pod = self.running[&name].pod_cgroups.contains(&rel);
            if is_pod && !change.created {
                // The pod is gone: release its cgroup (the caller recomputes
                // which pods are selected).
                let r = self.running.get_mut(&name).expect("running");
                let wanted: Vec<PathBuf> =
                    r.cgroups.keys().filter(|c| **c != rel).cloned().collect();
                r.pod_cgroups.remove(&rel);
                if let Some(proxy) = r.pod_proxies.remove(&rel) {
                    proxy.abort();
                }
                if let Err(e) = self.release_cgroups(&name, &wanted) {
                    first_error.get_or_insert(e);
                }
                continue;
            }
            if !change.created {
                tracing::warn!(policy = name, cgroup = %path.display(), "governed cgroup removed: creating it again");
            }
            if let Err(e) = self.regovern(&name, &rel) {
                tracing::error!(policy = name, cgroup = %path.display(), "governing it again: {e:#}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Governs `rel` again if it was removed (creating it) or recreated.
    fn regovern(&mut self, name: &str, rel: &PathBuf) -> Result<()> {
        let cgroup = Cgroup::at(&self.cgroup_root, rel);
        let Some(r) = self.running.get_mut(name) else {
            return Ok(());
        };
        let Some(&old_id) = r.cgroups.get(rel) else {
            return Ok(());
        };
        if !cgroup.exists() {
            if r.pod_cgroups.contains(rel) {
                return Ok(()); // a pod that is gone is released, not recreated
            }
            cgroup.create()?;
        }
        let new_id = cgroup.id()?;
        if new_id == old_id {
            return Ok(());
        }
        cgroup.check_not_delegated(&self.cgroup_root)?;
        let mut e = self.allowlist.lock().expect("allowlist lock");
        let attachment = e.govern(r.id, &cgroup)?;
        attachment.pin(&self.pin_dir.join(name).join(new_id.to_string()))?;
        e.ungovern(r.id, old_id)?;
        pins::remove_tree(&self.pin_dir.join(name).join(old_id.to_string()))?;
        r.cgroups.insert(rel.clone(), new_id);
        tracing::info!(policy = name, cgroup = %cgroup.path.display(), "governed again");
        Ok(())
    }

    /// Checks every governed cgroup against the cgroup tree (what inotify
    /// may have missed: a queue overflow, a watched parent removed): a
    /// removed one is created again (a pod's is released), a recreated one
    /// governed again.
    pub fn verify_all(&mut self) -> Result<()> {
        let all: Vec<(String, PathBuf, bool)> = self
            .running
            .iter()
            .flat_map(|(n, r)| {
                r.cgroups
                    .keys()
                    .map(|rel| (n.clone(), rel.clone(), r.pod_cgroups.contains(rel)))
            })
            .collect();
        let mut first_error = None;
        for (name, rel, is_pod) in all {
            let exists = Cgroup::at(&self.cgroup_root, &rel).exists();
            let result = if is_pod && !exists {
                let change = Change {
                    dir: self
                        .cgroup_root
                        .join(&rel)
                        .parent()
                        .map(PathBuf::from)
                        .unwrap_or_default(),
                    name: rel.file_name().map(PathBuf::from).unwrap_or_default(),
                    created: false,
                };
                self.on_changes(&[change])
            } else {
                self.regovern(&name, &rel)
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
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
