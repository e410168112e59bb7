//! Per-rule metrics: what went out (and came back) through each allow
//! rule, and what its budget refused. Labelled by policy and rule (its
//! label, as `status` shows it): as many series as rules in the policy
//! files, never one per address or process.

use std::{collections::HashMap, sync::Mutex};

use egress_common::RuleStats;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::state::allowlist::Allowlist;

pub struct RuleMetrics {
    connections: IntCounterVec,
    datagrams: IntCounterVec,
    bytes: IntCounterVec,
    over_budget: IntCounterVec,
    names_refused: IntCounterVec,
    /// Kernel values already added, by (policy, rule), to add only the
    /// difference (a rule that leaves and comes back starts again at 0).
    seen: Mutex<HashMap<(String, String), RuleStats>>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl RuleMetrics {
    pub fn new(r: &Registry) -> RuleMetrics {
        RuleMetrics {
            connections: counter(r, "egressd_rule_connections_total",
                "TCP connections allowed, by policy and the rule that allowed them.", &["policy", "rule"]),
            datagrams: counter(r, "egressd_rule_datagrams_total",
                "UDP datagrams sent, by policy and the rule that allowed them.", &["policy", "rule"]),
            bytes: counter(r, "egressd_rule_bytes_total",
                "Payload bytes through an allowed rule, by direction (out: sent by the governed processes, in: received on those sockets).",
                &["policy", "rule", "direction"]),
            over_budget: counter(r, "egressd_rule_over_budget_total",
                "Connections, datagrams and packets refused because the rule's upload budget was spent for its window.",
                &["policy", "rule"]),
            names_refused: counter(r, "egressd_rule_names_refused_total",
                "Connections to a host rule's addresses refused because their first bytes did not name a host the policy's DNS answered with that address (or named none).",
                &["policy", "rule"]),
            seen: Mutex::default(),
        }
    }

    /// Brings the counters up to the kernel's values; drops the series of
    /// rules no longer loaded.
    pub fn sync(&self, allowlist: &Allowlist) -> anyhow::Result<()> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut live = Vec::new();
        for p in &allowlist.installed {
            let policy = p.view().policy.name.clone();
            for (rule, now) in allowlist.rule_counts(p.id)? {
                let key = (policy.clone(), rule);
                let prev = seen.entry(key.clone()).or_default();
                let l = [key.0.as_str(), key.1.as_str()];
                let add = |c: &IntCounterVec, labels: &[&str], now: u64, prev: u64| {
                    // Fewer than seen: the slot started again.
                    c.with_label_values(labels)
                        .inc_by(if now >= prev { now - prev } else { now });
                };
                add(&self.connections, &l, now.connections, prev.connections);
                add(&self.datagrams, &l, now.datagrams, prev.datagrams);
                add(
                    &self.bytes,
                    &[l[0], l[1], "out"],
                    now.bytes_out,
                    prev.bytes_out,
                );
                add(
                    &self.bytes,
                    &[l[0], l[1], "in"],
                    now.bytes_in,
                    prev.bytes_in,
                );
                add(&self.over_budget, &l, now.over_budget, prev.over_budget);
                add(
                    &self.names_refused,
                    &l,
                    now.names_refused,
                    prev.names_refused,
                );
                *prev = now;
                live.push(key);
            }
        }
        seen.retain(|key, _| {
            let keep = live.contains(key);
            if !keep {
                let l = [key.0.as_str(), key.1.as_str()];
                let _ = self.connections.remove_label_values(&l);
                let _ = self.datagrams.remove_label_values(&l);
                let _ = self.bytes.remove_label_values(&[l[0], l[1], "out"]);
                let _ = self.bytes.remove_label_values(&[l[0], l[1], "in"]);
                let _ = self.over_budget.remove_label_values(&l);
                let _ = self.names_refused.remove_label_values(&l);
            }
            keep
        });
        Ok(())
    }
}
