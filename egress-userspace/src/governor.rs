//! Bringing the running state to a set of policies, at start and on every
//! reload: each policy's DNS proxy, tables, hostname refreshers and governed
//! cgroups. Used by both `run` and `exec`.
//!
//! A policy already running is replaced atomically (`Enforcer::replace`);
//! cgroups it no longer names are released, new ones governed; policies no
//! longer present are retired. The caller validates the whole set first,
//! so that a broken file never replaces what is enforced.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle};

use crate::{
    cgroup::Cgroup,
    dns::{self, DnsEvent, Proxy},
    enforcer::Enforcer,
    kernel::pins,
    metrics::Metrics,
    policy::Policy,
    resolve,
    watch::Change,
};

/// What runs for one policy.
struct Running {
    id: u32,
    proxy: Vec<JoinHandle<()>>,
    refreshers: Vec<JoinHandle<()>>,
    /// Governed cgroups: path relative to the cgroup2 root -> cgroup id.
    cgroups: HashMap<PathBuf, u64>,
}

pub struct Governor {
    pub enforcer: Arc<Mutex<Enforcer>>,
    pub metrics: Arc<Metrics>,
    dns_events: UnboundedSender<DnsEvent>,
    /// Links are pinned under `pin_dir/<policy>/<cgroup id>/`.
    pin_dir: PathBuf,
    cgroup_root: PathBuf,
    running: HashMap<String, Running>,
}

impl Governor {
    pub fn new(
        enforcer: Arc<Mutex<Enforcer>>,
        metrics: Arc<Metrics>,
        dns_events: UnboundedSender<DnsEvent>,
        pin_dir: PathBuf,
        cgroup_root: PathBuf,
    ) -> Governor {
        Governor {
            enforcer,
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
    /// so that none is ever left ungoverned in between.
    pub async fn apply(&mut self, policies: Vec<Policy>) -> Result<()> {
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
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
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            self.stop(&name)
                .with_context(|| format!("retiring policy `{name}`"))?;
        }
        Ok(())
    }

    async fn start(&mut self, policy: Policy) -> Result<()> {
        let name = policy.name.clone();
        let sockets = dns::bind().await?;
        let id = self
            .enforcer
            .lock()
            .expect("enforcer lock")
            .install(policy.clone(), sockets.port)?;
        tracing::info!(
            policy = name,
            port = sockets.port,
            "DNS proxy on 127.0.0.1 and ::1"
        );
        let proxy = Proxy {
            enforcer: self.enforcer.clone(),
            metrics: self.metrics.clone(),
            events: self.dns_events.clone(),
            id,
            name: name.clone(),
        }
        .spawn(sockets);
        let refreshers = self.refresh(id, &policy).await?;
        self.running.insert(
            name.clone(),
            Running {
                id,
                proxy,
                refreshers,
                cgroups: HashMap::new(),
            },
        );
        self.govern_cgroups(&name, &policy.cgroups)
    }

    async fn update(&mut self, policy: Policy) -> Result<()> {
        let name = policy.name.clone();
        let id = self.running[&name].id;
        self.enforcer
            .lock()
            .expect("enforcer lock")
            .replace(id, policy.clone())?;
        let refreshers = self.refresh(id, &policy).await?;
        let r = self.running.get_mut(&name).expect("running");
        for t in std::mem::replace(&mut r.refreshers, refreshers) {
            t.abort();
        }
        self.govern_cgroups(&name, &policy.cgroups)
    }

    /// Resolves the policy's exact hosts now and starts keeping them fresh.
    async fn refresh(&self, id: u32, policy: &Policy) -> Result<Vec<JoinHandle<()>>> {
        let resolver = Arc::new(resolve::resolver(&policy.dns)?);
        let hosts = resolve::prewarm(&self.enforcer, &resolver, id, policy, &self.metrics).await;
        Ok(resolve::spawn_refreshers(
            &self.enforcer,
            &resolver,
            &self.metrics,
            id,
            policy,
            hosts,
        ))
    }

    /// Governs the cgroups in `wanted` not yet governed, creating missing
    /// ones, so that they are governed from their first process on.
    fn govern_cgroups(&mut self, name: &str, wanted: &[PathBuf]) -> Result<()> {
        let r = self.running.get_mut(name).expect("running");
        let mut e = self.enforcer.lock().expect("enforcer lock");
        for rel in wanted {
            if r.cgroups.contains_key(rel) {
                continue;
            }
            let cgroup = Cgroup::at(&self.cgroup_root, rel);
            if !cgroup.exists() {
                tracing::info!(policy = name, cgroup = %cgroup.path.display(), "creating the governed cgroup");
                cgroup.create()?;
            }
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
        let mut e = self.enforcer.lock().expect("enforcer lock");
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

    fn stop(&mut self, name: &str) -> Result<()> {
        let Some(r) = self.running.remove(name) else {
            return Ok(());
        };
        for t in r.proxy.into_iter().chain(r.refreshers) {
            t.abort();
        }
        self.enforcer.lock().expect("enforcer lock").retire(r.id)?;
        pins::remove_tree(&self.pin_dir.join(name))?;
        tracing::info!(policy = name, "retired");
        Ok(())
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
        if !cgroup.exists() {
            cgroup.create()?;
        }
        let r = self.running.get_mut(name).expect("running");
        let new_id = cgroup.id()?;
        let old_id = r.cgroups[rel];
        if new_id == old_id {
            return Ok(());
        }
        let mut e = self.enforcer.lock().expect("enforcer lock");
        let attachment = e.govern(r.id, &cgroup)?;
        attachment.pin(&self.pin_dir.join(name).join(new_id.to_string()))?;
        e.ungovern(r.id, old_id)?;
        pins::remove_tree(&self.pin_dir.join(name).join(old_id.to_string()))?;
        r.cgroups.insert(rel.clone(), new_id);
        tracing::info!(policy = name, cgroup = %cgroup.path.display(), "governed again");
        Ok(())
    }

    /// Stops every task (the pinned links stay).
    pub fn abort_tasks(&mut self) {
        for r in self.running.values_mut() {
            for t in r.proxy.drain(..).chain(r.refreshers.drain(..)) {
                t.abort();
            }
        }
    }
}
