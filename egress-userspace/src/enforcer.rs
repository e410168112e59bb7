//! The running state: which policies are installed under which ids, the
//! addresses their hostnames currently resolve to, and the cgroups they
//! govern. Daemon and `exec` both drive the kernel through this.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use anyhow::{bail, Context, Result};
use egress_common::{PolicyInfo, MAX_POLICIES, MODE_AUDIT, MODE_ENFORCE};

use crate::{
    cgroup::Cgroup,
    compile::compile,
    kernel::{counters, tables::Tables, Attachment, Kernel},
    policy::{Host, Mode, Policy},
};

/// Address -> the hostname it was learned from, for event reports.
pub type Names = Arc<RwLock<HashMap<IpAddr, Host>>>;

/// One installed policy.
pub struct Installed {
    pub id: u32,
    pub policy: Policy,
    pub table: u32,
    /// Current addresses of each hostname the policy names.
    pub resolved: HashMap<Host, Vec<IpAddr>>,
    /// Governed cgroups: path and id.
    pub cgroups: Vec<(Cgroup, u64)>,
}

pub struct Enforcer {
    kernel: Kernel,
    pub tables: Tables,
    pub installed: Vec<Installed>,
    pub names: Names,
}

impl Enforcer {
    /// Loads the programs and takes their maps; returns the ring buffer too.
    pub fn load(
        ring_bytes: Option<u32>,
    ) -> Result<(Enforcer, aya::maps::RingBuf<aya::maps::MapData>)> {
        let mut kernel = Kernel::load(ring_bytes)?;
        let (maps, events) = kernel.take_maps()?;
        Ok((
            Enforcer {
                kernel,
                tables: Tables::new(maps),
                installed: Vec::new(),
                names: Names::default(),
            },
            events,
        ))
    }

    pub fn get(&self, id: u32) -> Option<&Installed> {
        self.installed.iter().find(|p| p.id == id)
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut Installed> {
        self.installed.iter_mut().find(|p| p.id == id)
    }

    /// Policy id -> name, for reports.
    pub fn policy_names(&self) -> HashMap<u32, String> {
        self.installed
            .iter()
            .map(|p| (p.id, p.policy.name.clone()))
            .collect()
    }

    /// Compiles and writes a policy, with its hostnames' first addresses,
    /// and makes it live. Returns its id. No cgroup is governed yet.
    pub fn install(&mut self, policy: Policy, resolved: HashMap<Host, Vec<IpAddr>>) -> Result<u32> {
        let id = self.installed.len() as u32 + 1;
        if id >= MAX_POLICIES {
            bail!(
                "at most {} policies can be loaded at once",
                MAX_POLICIES - 1
            );
        }
        let compiled = compile(&policy, &resolved)?;
        let table = self.tables.write_table(&compiled)?;
        let mode = match policy.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        };
        self.tables.set_policy(id, PolicyInfo { table, mode })?;
        self.installed.push(Installed {
            id,
            policy,
            table,
            resolved,
            cgroups: Vec::new(),
        });
        self.refresh_names();
        Ok(id)
    }

    /// Rebuilds address -> hostname from the current answers of every
    /// policy (so it holds only addresses allowed now).
    fn refresh_names(&self) {
        let mut names = self.names.write().expect("names lock");
        names.clear();
        for p in &self.installed {
            for (host, ips) in &p.resolved {
                for ip in ips {
                    names.insert(*ip, host.clone());
                }
            }
        }
    }

    /// Replaces the addresses of one hostname of policy `id` and updates its
    /// table in place. If the new answer cannot be compiled, nothing changes.
    pub fn set_resolved(&mut self, id: u32, host: &Host, ips: Vec<IpAddr>) -> Result<()> {
        let p = self.get_mut(id).context("no such policy")?;
        if p.resolved.get(host) == Some(&ips) {
            return Ok(());
        }
        let mut resolved = p.resolved.clone();
        resolved.insert(host.clone(), ips);
        let compiled = compile(&p.policy, &resolved)?;
        p.resolved = resolved;
        let table = p.table;
        let result = self.tables.update_table(table, &compiled);
        self.refresh_names();
        result
    }

    /// Governs `cgroup` by policy `id`: records it, then attaches the programs.
    pub fn govern(&mut self, id: u32, cgroup: &Cgroup) -> Result<Attachment> {
        let cgroup_id = cgroup.id()?;
        self.tables.set_cgroup(cgroup_id, id)?;
        let attachment = self.kernel.attach(cgroup)?;
        let p = self.get_mut(id).context("no such policy")?;
        p.cgroups.push((cgroup.clone(), cgroup_id));
        Ok(attachment)
    }

    /// The counters of policy `id`.
    pub fn counts(&self, id: u32) -> Result<counters::PolicyCounts> {
        counters::read(&self.tables.maps.counters, id)
    }
}
