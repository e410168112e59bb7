//! Prometheus metrics, and a minimal HTTP endpoint serving them.
//!
//! Attempt counters come from the kernel's per-CPU counters at scrape time,
//! so they are exact even when the ring buffer drops events. No label takes
//! a value an attacker chooses: policy names come from the operator's files.

use std::{collections::HashMap, sync::Mutex};

use anyhow::Result;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use egress_common::{proto_class, reason, verdict};

use crate::{
    kernel::counters::{proto_name, reason_name, verdict_name},
    state::allowlist::Allowlist,
};

/// The values of `egressd_dns_queries_total`'s `verdict`.
const DNS_VERDICTS: [&str; 7] = [
    "allowed",
    "denied",
    "name_budget_spent",
    "audited",
    "search_expansion",
    "error",
    "malformed",
];

/// A node's pod cgroups by state (see `Metrics::pods`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PodCounts {
    pub pending: usize,
    pub held: usize,
    pub governed: usize,
    pub released: usize,
}

/// Label value for attempts made where no policy of this daemon applied.
pub const NO_POLICY_LABEL: &str = "none";

pub struct Metrics {
    pub registry: Registry,
    attempts: IntCounterVec,
    lost: IntCounterVec,
    events: IntCounterVec,
    entries: IntGaugeVec,
    lookups: IntCounterVec,
    info: IntGaugeVec,
    cgroups: IntGaugeVec,
    dns_queries: IntCounterVec,
    dns_evictions: IntCounterVec,
    reloads: IntCounterVec,
    reload_ok: IntGauge,
    reload_ok_time: IntGauge,
    pods: IntGaugeVec,
    pod_watch_event: IntGaugeVec,
    dns_latency: HistogramVec,
    rules: super::rule_metrics::RuleMetrics,
    /// Held while a scrape brings the gauges up to date and renders them,
    /// so that no scrape sees another's half-reset gauges.
    scrape: Mutex<()>,
    /// Kernel counter values already added, to add only the difference.
    seen: Mutex<HashMap<(u32, u8, u8, u8), u64>>,
    lost_seen: Mutex<HashMap<u32, u64>>,
    /// The name each policy id was counted under.
    names: Mutex<HashMap<u32, String>>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn plain_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// `egressd_build_info`: 1, with the version and the commit.
fn build_info(r: &Registry) {
    let g = gauge(
        r,
        "egressd_build_info",
        "1, with the version of egressd that runs and the commit it was built from.",
        &["version", "commit"],
    );
    g.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("EGRESSD_COMMIT")])
        .set(1);
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::unset();
        for r in ["ok", "error"] {
            m.reloads.with_label_values(&[r]);
        }
        m
    }

    fn unset() -> Metrics {
        let r = Registry::new();
        build_info(&r);
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_start_time_seconds, ...
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
        Metrics {
            attempts: counter(&r, "egressd_egress_attempts_total",
                "Outbound connects and sends judged, by policy, verdict (allowed, denied, audited), protocol and reason.",
                &["policy", "verdict", "protocol", "reason"]),
            lost: counter(&r, "egressd_events_lost_total",
                "Deny and audit events lost: the kernel's ring buffer had no room, or the DNS proxy's writer was behind (the attempts are still counted).",
                &["policy"]),
            events: counter(&r, "egressd_events_total",
                "Deny and audit events received from the kernel.", &["policy", "verdict"]),
            entries: gauge(&r, "egressd_allowlist_entries",
                "Allowed prefixes in force, by policy and address family.", &["policy", "family"]),
            lookups: counter(&r, "egressd_resolver_lookups_total",
                "Hostname lookups made to keep allowlists fresh, by result (ok, error).", &["policy", "result"]),
            info: gauge(&r, "egressd_policy_info",
                "1 for each policy loaded, with its mode.", &["policy", "mode"]),
            cgroups: gauge(&r, "egressd_governed_cgroups",
                "Cgroups governed by each policy.", &["policy"]),
            dns_queries: counter(&r, "egressd_dns_queries_total",
                "DNS queries the proxy received, by verdict (allowed, denied, name_budget_spent: a new name below a wildcard whose names per window are spent, audited, search_expansion, error, malformed); each query once.",
                &["policy", "verdict"]),
            dns_evictions: counter(&r, "egressd_dns_evictions_total",
                "Addresses dropped because a host rule held too many.", &["policy"]),
            reloads: counter(&r, "egressd_reloads_total",
                "Policy reloads (egressd reload, SIGHUP or a changed file), by result (ok, error).", &["result"]),
            reload_ok: plain_gauge(&r, "egressd_config_last_reload_successful",
                "1 if the last policy load or reload took, 0 if the files in force are not those on disk."),
            reload_ok_time: plain_gauge(&r, "egressd_config_last_reload_success_timestamp_seconds",
                "When policies were last loaded or reloaded successfully (Unix time)."),
            pods: gauge(&r, "egressd_pods",
                "Kubernetes: this node's pod cgroups, by state: pending (not classified yet: refused everything), held (a policy governed it and no longer selects it: refused everything), governed, released.",
                &["state"]),
            pod_watch_event: gauge(&r, "egressd_pod_watch_last_event_timestamp_seconds",
                "Kubernetes: when the API server's pod or namespace watch last told egressd anything (Unix time; 0: never).",
                &[]),
            dns_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new("egressd_dns_query_duration_seconds",
                        "Time from a query's arrival at the proxy to its reply, by policy (upstream time included).")
                        .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                    &["policy"]).expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            rules: super::rule_metrics::RuleMetrics::new(&r),
            scrape: Mutex::default(),
            registry: r,
            seen: Mutex::default(),
            lost_seen: Mutex::default(),
            names: Mutex::default(),
        }
    }

    pub fn lookup(&self, policy: &str, ok: bool) {
        self.lookups
            .with_label_values(&[policy, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// A reload's result (also the first load's, with `loaded`).
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.loaded(ok);
    }

    /// Whether the policies in force are those of the files: set at the
    /// first load and at each reload.
    pub fn loaded(&self, ok: bool) {
        self.reload_ok.set(i64::from(ok));
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.reload_ok_time.set(now.as_secs() as i64);
        }
    }

    /// This node's pod cgroups in each state (`PodCounts`), and when the
    /// API server's watch was last heard.
    pub fn pods(&self, counts: PodCounts, last_event: u64) {
        for (state, n) in [
            ("pending", counts.pending),
            ("held", counts.held),
            ("governed", counts.governed),
            ("released", counts.released),
        ] {
            self.pods.with_label_values(&[state]).set(n as i64);
        }
        self.pod_watch_event
            .with_label_values::<&str>(&[])
            .set(last_event as i64);
    }

    /// How long the proxy took to answer a query of `policy`.
    pub fn dns_latency(&self, policy: &str, seconds: f64) {
        self.dns_latency
            .with_label_values(&[policy])
            .observe(seconds);
    }

    pub fn dns_query(&self, policy: &str, verdict: &str) {
        self.dns_queries.with_label_values(&[policy, verdict]).inc();
    }

    /// A DNS deny (or audit) event dropped because its writer was behind:
    /// counted with the kernel's lost events, not as a query verdict (which
    /// would count the query twice).
    pub fn dns_event_lost(&self, policy: &str) {
        self.lost.with_label_values(&[policy]).inc();
    }

    pub fn dns_evicted(&self, policy: &str, n: usize) {
        self.dns_evictions
            .with_label_values(&[policy])
            .inc_by(n as u64);
    }

    pub fn events(&self, policy: &str, verdict: u8, n: u64) {
        self.events
            .with_label_values(&[policy, verdict_name(verdict)])
            .inc_by(n);
    }

    /// Brings every metric up to date with the kernel and the allowlist,
    /// and renders them: the gauges of policies no longer loaded are gone,
    /// and so are their attempt counters.
    pub fn scrape(&self, allowlist: &Allowlist) -> (Result<()>, Vec<u8>) {
        let _one = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let synced = self.sync(allowlist);
        (synced, self.render())
    }

    fn sync(&self, allowlist: &Allowlist) -> Result<()> {
        let mut ids: Vec<(u32, String)> = vec![(0, NO_POLICY_LABEL.to_string())];
        self.entries.reset();
        self.info.reset();
        self.cgroups.reset();
        for p in &allowlist.installed {
            let view = p.view();
            ids.push((p.id, view.policy.name.clone()));
            self.initialize(&view.policy.name);
            let (v4, v6) = allowlist.tables.table_len(p.table);
            self.entries
                .with_label_values(&[&view.policy.name, "ipv4"])
                .set(v4 as i64);
            self.entries
                .with_label_values(&[&view.policy.name, "ipv6"])
                .set(v6 as i64);
            self.info
                .with_label_values(&[&view.policy.name, &view.policy.mode.to_string()])
                .set(1);
            self.cgroups.with_label_values(&[&view.policy.name]).set(
                allowlist
                    .governance
                    .cgroups
                    .get(&view.policy.name)
                    .map_or(0, Vec::len) as i64,
            );
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut lost_seen = self
            .lost_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.forget_removed(&ids, &mut seen, &mut lost_seen);
        for (id, name) in ids {
            let counts = allowlist.counts(id)?;
            for c in counts.counts {
                let prev = seen.entry((id, c.verdict, c.proto, c.reason)).or_insert(0);
                let labels = [
                    name.as_str(),
                    verdict_name(c.verdict),
                    proto_name(c.proto),
                    reason_name(c.reason),
                ];
                self.attempts
                    .with_label_values(&labels)
                    .inc_by(c.value.saturating_sub(*prev));
                *prev = c.value;
            }
            let prev = lost_seen.entry(id).or_insert(0);
            self.lost
                .with_label_values(&[&name])
                .inc_by(counts.lost.saturating_sub(*prev));
            *prev = counts.lost;
        }
        self.rules.sync(allowlist)
    }

    /// Creates a policy's bounded series at 0, so that its first refusal
    /// is an increase from 0 (a series born at 1 shows no `increase()`,
    /// and an alert on it would never fire).
    fn initialize(&self, policy: &str) {
        for v in [verdict::DENIED, verdict::AUDITED] {
            for p in 0..proto_class::COUNT as u8 {
                for r in 1..reason::COUNT as u8 {
                    self.attempts.with_label_values(&[
                        policy,
                        verdict_name(v),
                        proto_name(p),
                        reason_name(r),
                    ]);
                }
            }
            self.events.with_label_values(&[policy, verdict_name(v)]);
        }
        for v in DNS_VERDICTS {
            self.dns_queries.with_label_values(&[policy, v]);
        }
        for r in ["ok", "error"] {
            self.lookups.with_label_values(&[policy, r]);
        }
        self.lost.with_label_values(&[policy]);
        self.dns_evictions.with_label_values(&[policy]);
    }

    /// Removes the series of policies no longer loaded (their ids are
    /// never reused, and their names may come back as new policies).
    fn forget_removed(
        &self,
        ids: &[(u32, String)],
        seen: &mut HashMap<(u32, u8, u8, u8), u64>,
        lost_seen: &mut HashMap<u32, u64>,
    ) {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let live = |id: &u32| ids.iter().any(|(i, _)| i == id);
        let live_name = |n: &str| ids.iter().any(|(_, name)| name == n);
        for (id, name) in names.iter() {
            if !live(id) && !live_name(name) {
                self.remove_series(name);
            }
        }
        seen.retain(|(id, ..), _| live(id));
        lost_seen.retain(|id, _| live(id));
        names.clear();
        for (id, name) in ids {
            names.insert(*id, name.clone());
        }
    }

    /// Removes every series labelled with `policy`.
    fn remove_series(&self, policy: &str) {
        for v in 0..verdict::COUNT as u8 {
            for p in 0..proto_class::COUNT as u8 {
                for r in 0..reason::COUNT as u8 {
                    let _ = self.attempts.remove_label_values(&[
                        policy,
                        verdict_name(v),
                        proto_name(p),
                        reason_name(r),
                    ]);
                }
            }
            let _ = self.events.remove_label_values(&[policy, verdict_name(v)]);
        }
        for v in DNS_VERDICTS {
            let _ = self.dns_queries.remove_label_values(&[policy, v]);
        }
        for r in ["ok", "error"] {
            let _ = self.lookups.remove_label_values(&[policy, r]);
        }
        let _ = self.lost.remove_label_values(&[policy]);
        let _ = self.dns_evictions.remove_label_values(&[policy]);
    }

    /// The text exposition of every metric.
    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_dns_event_is_not_a_query_verdict() {
        let m = Metrics::new();
        m.dns_query("p", "denied");
        m.dns_event_lost("p");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("egressd_events_lost_total{policy=\"p\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("egressd_dns_queries_total{policy=\"p\",verdict=\"denied\"} 1"),
            "{text}"
        );
        assert!(!text.contains("event_lost\""), "{text}");
    }

    #[test]
    fn build_process_and_reload_metrics_are_there() {
        let m = Metrics::new();
        m.loaded(true);
        m.reload(false);
        m.dns_latency("p", 0.002);
        let text = String::from_utf8(m.render()).unwrap();
        for want in [
            format!(
                "egressd_build_info{{commit=\"{}\",version=\"{}\"}} 1",
                env!("EGRESSD_COMMIT"),
                env!("CARGO_PKG_VERSION")
            ),
            "process_resident_memory_bytes".into(),
            "process_start_time_seconds".into(),
            "egressd_config_last_reload_successful 0".into(),
            "egressd_config_last_reload_success_timestamp_seconds 1".into(),
            "egressd_dns_query_duration_seconds_bucket{policy=\"p\",le=\"0.0025\"} 1".into(),
        ] {
            assert!(text.contains(want.as_str()), "{want}: {text}");
        }
    }
}
