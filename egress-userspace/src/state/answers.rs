//! Where a DNS answer becomes an allowed address. Every answer comes
//! through `Allowlist::admit`: the DNS proxy's answers to the agent, and
//! egressd's own lookups of exact hosts. Under the allowlist's lock, with
//! the policy in force at that moment (a reload may have come while the
//! upstream answered), the answer's special addresses are screened out
//! (`policy::special`: loopback, link-local, metadata, private unless
//! allowed; audit admits them and reports them), the rest are recorded for
//! each host rule the name matches, each allowed until its TTL (at most
//! `dns.max_ttl`) plus `dns.grace`, and the policy's kernel table is
//! rewritten in place (`compile::Plan::admitted`). `expire` takes them out
//! again when that time has passed. (A reload that makes a policy enforce
//! screens what it admitted once more: `Allowlist::replace`.)

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use egress_common::DnsAsker;

use super::{addresses::Addresses, allowlist::Allowlist};
use crate::policy::{special, Host, Mode, Policy};

/// What became of one answer.
#[derive(Debug, Default)]
pub struct Admission {
    /// Addresses not admitted (or, in audit, admitted and reported), and why.
    pub refused: Vec<(IpAddr, &'static str)>,
    /// Addresses evicted to stay within the per-rule cap.
    pub evicted: usize,
    /// The policy was in audit mode when the answer was admitted.
    pub audit: bool,
}

/// Splits addresses answered for a name under `hosts` into those that may
/// be admitted and those refused, each with why.
pub fn screen(
    policy: &Policy,
    hosts: &[Host],
    ips: Vec<IpAddr>,
) -> (Vec<IpAddr>, Vec<(IpAddr, &'static str)>) {
    let mut ok = Vec::with_capacity(ips.len());
    let mut no = Vec::new();
    for ip in ips {
        match special::refused(policy, hosts, ip) {
            Some(why) => no.push((ip, why)),
            None => ok.push(ip),
        }
    }
    (ok, no)
}

impl Allowlist {
    /// Admits that `name`, which host rules `rules` of policy `id` match,
    /// resolved to `ips`, valid for `ttl` from `now`. `None`: the policy is
    /// gone. An error: the addresses could not be written, so they are not
    /// allowed (the table fails closed and is written again by the sweep).
    pub fn admit(
        &mut self,
        id: u32,
        rules: &[Host],
        name: &str,
        ips: Vec<IpAddr>,
        ttl: Duration,
        now: Instant,
    ) -> Result<Option<Admission>> {
        let Some(p) = self.get(id) else {
            return Ok(None);
        };
        let view = p.view();
        let audit = view.policy.mode == Mode::Audit;
        let (mut ips, refused) = screen(&view.policy, rules, ips);
        if audit {
            ips.extend(refused.iter().map(|(ip, _)| *ip));
        }
        // An answer's TTL counts up to the policy's max_ttl, no longer.
        let (ttl, grace) = (ttl.min(view.policy.dns.max_ttl), view.policy.dns.grace);
        let mut evicted = 0;
        for rule in rules.iter().filter(|_| !ips.is_empty()) {
            evicted += self.record(id, rule, name, &ips, (ttl, grace), now)?;
        }
        Ok(Some(Admission {
            refused,
            evicted,
            audit,
        }))
    }

    /// Recompiles policy `id` from `admitted` and, if that works, makes it
    /// the policy's state and updates its table in place. If it cannot be
    /// compiled, nothing changes.
    fn apply(&mut self, id: u32, admitted: HashMap<Host, Addresses>) -> Result<()> {
        let p = self.get_mut(id).context("no such policy")?;
        let resolved = admitted.iter().map(|(h, a)| (h.clone(), a.ips())).collect();
        let entries = p.plan.admitted(&resolved)?;
        let names = p.plan.bound_names(&super::addresses::bindings(&admitted))?;
        p.admitted = admitted;
        let table = p.table;
        let result = self.tables.update_admitted(table, entries);
        let result = result.and(self.tables.sync_names(table, names));
        self.get_mut(id).expect("checked").stale = result.is_err();
        self.refresh_names();
        result
    }

    /// Records `ips` for host rule `rule` of policy `id`: allowed until
    /// `ttl` plus `grace` has passed. Returns how many addresses were
    /// evicted to stay within the per-rule cap.
    fn record(
        &mut self,
        id: u32,
        rule: &Host,
        name: &str,
        ips: &[IpAddr],
        (ttl, grace): (Duration, Duration),
        now: Instant,
    ) -> Result<usize> {
        let p = self.get(id).context("no such policy")?;
        let mut admitted = p.admitted.clone();
        let bound = |a: &Addresses| {
            let b = a.bindings().into_iter();
            b.map(|(ip, n)| (ip, n.to_string())).collect::<Vec<_>>()
        };
        let before = admitted.get(rule).map(bound);
        let entry = admitted.entry(rule.clone()).or_default();
        let evicted = entry.record(now, name, ips, ttl, grace);
        if before.as_ref() == Some(&bound(entry)) && !p.stale {
            // Same addresses and names: only deadlines moved.
            self.get_mut(id).expect("checked").admitted = admitted;
            return Ok(evicted);
        }
        self.apply(id, admitted)?;
        Ok(evicted)
    }

    /// Removes addresses whose TTL and grace have passed, in every policy,
    /// and tables retired long enough ago.
    pub fn expire(&mut self, now: Instant) -> Result<()> {
        let mut first_error = self.tables.bury(now).err();
        for id in self.installed.iter().map(|p| p.id).collect::<Vec<_>>() {
            let p = self.get(id).expect("listed");
            let mut admitted = p.admitted.clone();
            // A failed update is retried on every sweep.
            let mut changed = p.stale;
            for a in admitted.values_mut() {
                changed |= a.expire(now);
            }
            if changed {
                if let Err(e) = self.apply(id, admitted) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// What a DNS proxy may do to the allowlist: admit the answers of its own
/// policy, and ask which process sent a query. Each call takes the lock for
/// that call only.
#[derive(Clone)]
pub struct Admitter {
    allowlist: Arc<Mutex<Allowlist>>,
    id: u32,
}

impl Admitter {
    pub fn new(allowlist: Arc<Mutex<Allowlist>>, id: u32) -> Admitter {
        Admitter { allowlist, id }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Allowlist> {
        self.allowlist
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `Allowlist::admit` for this policy, now.
    pub fn admit(
        &self,
        rules: &[Host],
        name: &str,
        ips: Vec<IpAddr>,
        ttl: Duration,
    ) -> Result<Option<Admission>> {
        self.lock()
            .admit(self.id, rules, name, ips, ttl, Instant::now())
    }

    /// The process that sent the query received from `peer` over
    /// `protocol`, as the kernel noted it.
    pub fn asker(&self, peer: SocketAddr, protocol: u8) -> Option<DnsAsker> {
        self.lock().dns_asker(peer, protocol)
    }
}
