//! The running state: which policies are installed under which ids, the
//! addresses admitted for their host rules, and the cgroups they govern.
//! Daemon and `exec` both drive the kernel through this.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use egress_common::{DnsAsker, PolicyInfo, RuleStats, MAX_POLICIES, MODE_AUDIT, MODE_ENFORCE};

use crate::{
    compile::plan::Plan,
    kernel::cgroup::Cgroup,
    kernel::{counters, rules, tables::Tables, Attachment, Kernel},
    policy::{special, Host, Mode, Policy},
    state::{
        addresses::Addresses,
        governance::Governance,
        rule_slots::RuleSlots,
        view::{PolicyView, ViewCell},
    },
};

/// Address -> the name it was answered for, for event reports.
pub type Names = Arc<RwLock<HashMap<IpAddr, String>>>;

/// One installed policy.
pub struct Installed {
    pub id: u32,
    /// The policy and where its names are resolved, shared with its proxy.
    view: ViewCell,
    /// The policy's prefix rules, compiled once; host addresses are added
    /// on each change.
    pub plan: Arc<Plan>,
    pub table: u32,
    /// Port of the policy's DNS proxy on loopback (0: none).
    pub dns_port: u16,
    /// Addresses admitted for each host rule (exact or wildcard).
    pub admitted: HashMap<Host, Addresses>,
    /// The last update of the table's admitted entries failed (it failed
    /// closed): the next answer or sweep writes them again.
    pub stale: bool,
    /// The kernel's slot of each rule, in the policy's order (0: not counted).
    pub slots: Vec<u16>,
}

impl Installed {
    /// The policy as it is in force now.
    pub fn view(&self) -> Arc<PolicyView> {
        self.view.get()
    }

    /// The cell the policy's DNS proxy reads its view from.
    pub fn view_cell(&self) -> ViewCell {
        self.view.clone()
    }
}

/// What the programs read of a policy: its table, mode and DNS proxy port.
fn policy_info(policy: &Policy, table: u32, dns_port: u16, listen_set: u32) -> PolicyInfo {
    PolicyInfo {
        table,
        mode: match policy.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        },
        dns_port: u32::from(dns_port),
        listen_set,
        families: policy
            .channels
            .families
            .iter()
            .filter(|f| f.number() < 64)
            .fold(0, |bits, f| bits | 1 << f.number()),
        budgets: u32::from(policy.rules.iter().any(|r| r.budget.is_some())),
        _pad: 0,
    }
}

pub struct Allowlist {
    kernel: Kernel,
    pub tables: Tables,
    pub installed: Vec<Installed>,
    pub names: Names,
    /// Where the kernel counts each rule.
    slots: RuleSlots,
    /// Policy ids are never reused, so a retired policy's id refers to nothing.
    next_id: u32,
    /// Which cgroups and pods are governed, as `runtime::supervisor` (its
    /// owner) last wrote it.
    pub governance: Governance,
}

impl Allowlist {
    /// Loads the programs and takes their maps; returns the ring buffer too.
    pub fn load(
        ring_bytes: Option<u32>,
    ) -> Result<(Allowlist, aya::maps::RingBuf<aya::maps::MapData>)> {
        let mut kernel = Kernel::load(ring_bytes)?;
        let (mut maps, events) = kernel.take_maps()?;
        // Loopback rules mean the loopback of egressd's own namespace. Before
        // Linux 5.14 its cookie cannot be read: then no namespace's loopback
        // is taken for egressd's, and loopback rules refuse (fail closed).
        let cookie = match crate::kernel::netns_cookie() {
            Ok(c) => c,
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                tracing::warn!(
                    "this kernel cannot tell egressd its network namespace (SO_NETNS_COOKIE, Linux 5.14): loopback rules refuse every loopback connection"
                );
                0
            }
            Err(e) => {
                return Err(anyhow::Error::from(e)
                    .context("reading this network namespace's cookie (Linux 5.14 or later)"))
            }
        };
        maps.config
            .set(egress_common::config::HOST_NETNS_COOKIE, cookie, 0)
            .context("writing the configuration map")?;
        Ok((
            Allowlist {
                kernel,
                tables: Tables::new(maps),
                installed: Vec::new(),
                names: Names::default(),
                slots: RuleSlots::default(),
                next_id: 1,
                governance: Governance::default(),
            },
            events,
        ))
    }

    /// Whether sockets of every family are judged (BPF LSM): `Err` says why not.
    pub fn family_hook(&self) -> Result<(), &str> {
        self.kernel.families()
    }

    /// Whether UNIX sockets are judged (Linux 6.7's hooks): `Err` says why not.
    pub fn unix_hooks(&self) -> Result<(), &str> {
        self.kernel.unix()
    }

    pub fn get(&self, id: u32) -> Option<&Installed> {
        self.installed.iter().find(|p| p.id == id)
    }

    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut Installed> {
        self.installed.iter_mut().find(|p| p.id == id)
    }

    /// Policy id -> name, for reports.
    pub fn policy_names(&self) -> HashMap<u32, String> {
        self.installed
            .iter()
            .map(|p| (p.id, p.view().policy.name.clone()))
            .collect()
    }

    /// Compiles and writes a policy (its host rules without addresses yet)
    /// and makes it live, with DNS redirected to `dns_port` (0: not
    /// redirected). Returns its id. No cgroup is governed yet.
    pub fn install(&mut self, policy: Policy, dns_port: u16) -> Result<u32> {
        let id = self.next_id;
        if id >= MAX_POLICIES {
            bail!(
                "at most {} policies can be loaded in one run",
                MAX_POLICIES - 1
            );
        }
        let view = PolicyView::new(policy)?;
        let slots = self.slots.assign(&view.policy, &mut self.tables.maps)?;
        let plan = Arc::new(Plan::counted(&view.policy, &slots)?);
        let admitted = plan.admitted(&HashMap::new())?;
        let listen = crate::compile::ports::listen_spec(&view.policy)?;
        let listen_set = self.tables.listen_set(listen.as_ref())?;
        let table = self.tables.write_table(plan.clone(), admitted)?;
        self.tables
            .set_policy(id, policy_info(&view.policy, table, dns_port, listen_set))?;
        self.next_id += 1;
        self.installed.push(Installed {
            id,
            view: ViewCell::new(view),
            plan,
            table,
            dns_port,
            admitted: HashMap::new(),
            stale: false,
            slots,
        });
        Ok(id)
    }

    /// Replaces policy `id` by `policy` (same name): its table is written
    /// whole, then switched to in one map update, then the old one deleted;
    /// at no moment is the union or the empty set in force. Addresses admitted
    /// for host rules the new policy keeps stay allowed.
    pub fn replace(&mut self, id: u32, policy: Policy) -> Result<()> {
        let p = self.get(id).context("no such policy")?;
        let view = PolicyView::new(policy)?;
        let policy = &view.policy;
        let dns_port = p.dns_port;
        let mut admitted = p.admitted.clone();
        admitted.retain(|h, _| {
            policy
                .rules
                .iter()
                .any(|r| matches!(&r.dest, crate::policy::Destination::Host(x) if x == h))
        });
        // What audit admitted, or `dns.private_answers: allow` let in, is
        // judged again by the new policy: special addresses do not carry
        // over into an enforcing table.
        if policy.mode != crate::policy::Mode::Audit {
            for (host, addresses) in admitted.iter_mut() {
                let hosts = std::slice::from_ref(host);
                addresses.retain(|ip| special::refused(policy, hosts, *ip).is_none());
            }
        }
        let resolved = admitted.iter().map(|(h, a)| (h.clone(), a.ips())).collect();
        let slots = self.slots.assign(policy, &mut self.tables.maps)?;
        let plan = Arc::new(Plan::counted(policy, &slots)?);
        let entries = plan.admitted(&resolved)?;
        let names = plan.bound_names(&super::addresses::bindings(&admitted))?;
        let listen = crate::compile::ports::listen_spec(policy)?;
        let listen_set = self.tables.listen_set(listen.as_ref())?;
        let table = self.tables.write_table(plan.clone(), entries)?;
        if let Err(e) = self.tables.sync_names(table, names) {
            let _ = self.tables.drop_table(table);
            return Err(e);
        }
        if let Err(e) = self
            .tables
            .set_policy(id, policy_info(policy, table, dns_port, listen_set))
        {
            let _ = self.tables.drop_table(table);
            return Err(e);
        }
        let p = self.get_mut(id).expect("checked");
        let old = std::mem::replace(&mut p.table, table);
        p.view.set(view);
        p.plan = plan;
        p.slots = slots;
        p.admitted = admitted;
        // The new table holds every admitted address (or the reload failed).
        p.stale = false;
        self.refresh_names();
        self.tables.retire_table(old, Instant::now());
        Ok(())
    }

    /// Stops policy `id`: `cgroups` (the ids of those it governs) are no
    /// longer governed by it (their links must be removed by the caller),
    /// its table is emptied.
    pub fn retire(&mut self, id: u32, cgroups: &[u64]) -> Result<()> {
        let Some(pos) = self.installed.iter().position(|p| p.id == id) else {
            return Ok(());
        };
        let p = self.installed.remove(pos);
        self.slots.release(&p.view().policy.name);
        for cgroup_id in cgroups {
            self.tables.remove_cgroup(*cgroup_id, id)?;
        }
        self.tables.set_policy(id, PolicyInfo::default())?;
        self.refresh_names();
        self.tables.retire_table(p.table, Instant::now());
        Ok(())
    }

    /// Stops governing one cgroup by policy `id` (its links must be removed
    /// by the caller).
    pub fn ungovern(&mut self, id: u32, cgroup_id: u64) -> Result<()> {
        self.tables.remove_cgroup(cgroup_id, id)
    }

    /// Maps a cgroup below a governed one (a pod's, below the kubepods
    /// cgroup) to policy id `value` (or `POLICY_RELEASED`), without
    /// attaching anything: the programs of its ancestor judge it.
    pub fn map_cgroup(&mut self, cgroup_id: u64, value: u32) -> Result<()> {
        self.tables.set_cgroup(cgroup_id, value)
    }

    /// Undoes `map_cgroup` (if the cgroup is still mapped to `value`).
    pub fn unmap_cgroup(&mut self, cgroup_id: u64, value: u32) -> Result<()> {
        self.tables.remove_cgroup(cgroup_id, value)
    }

    /// Rebuilds address -> name from what every policy holds now.
    pub(super) fn refresh_names(&self) {
        let mut names = self
            .names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names.clear();
        for p in &self.installed {
            for a in p.admitted.values() {
                for (ip, name) in a.names() {
                    names.insert(*ip, name.to_string());
                }
            }
        }
    }

    /// Governs `cgroup` by policy `id`: maps it to the policy, then
    /// attaches the programs.
    pub fn govern(&mut self, id: u32, cgroup: &Cgroup) -> Result<Attachment> {
        self.get(id).context("no such policy")?;
        let cgroup_id = cgroup.id()?;
        self.tables.set_cgroup(cgroup_id, id)?;
        self.kernel.attach(cgroup).inspect_err(|_| {
            // Not governed after all: no entry is left for a caller that
            // does not know of it.
            let _ = self.tables.remove_cgroup(cgroup_id, id);
        })
    }

    /// The process that sent the query the DNS proxy received from `peer`
    /// over `protocol` (6, 17), as the backstop noted it.
    pub fn dns_asker(&self, peer: std::net::SocketAddr, protocol: u8) -> Option<DnsAsker> {
        let family = if peer.is_ipv4() {
            egress_common::AF_INET
        } else {
            egress_common::AF_INET6
        };
        let key = egress_common::asker_key(family, protocol, peer.port());
        self.tables.maps.dns_askers.get(&key, 0).ok()
    }

    /// The counters of policy `id`.
    pub fn counts(&self, id: u32) -> Result<counters::PolicyCounts> {
        counters::read(&self.tables.maps.counters, id)
    }

    /// What went through each counted rule of policy `id`, by its label.
    pub fn rule_counts(&self, id: u32) -> Result<Vec<(String, RuleStats)>> {
        let Some(p) = self.get(id) else {
            return Ok(Vec::new());
        };
        let view = p.view();
        let mut out: Vec<(String, RuleStats)> = Vec::new();
        for (label, slot) in super::rule_slots::labels(&view.policy)
            .into_iter()
            .zip(&p.slots)
        {
            if *slot != 0 {
                out.push((label, rules::stats(&self.tables.maps, *slot)?));
            }
        }
        Ok(out)
    }
}
