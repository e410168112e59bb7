//! Events as people and programs read them: JSON objects with the policy's
//! name and the hostname an address was admitted for (`Describer`), and the
//! compact text lines of `egressd events --format text`.

use std::{
    borrow::Cow,
    collections::HashMap,
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use egress_common::{hook, Event, AF_INET, AF_INET6, AF_UNIX};
use serde_json::json;

use super::{
    events::{address, comm, comm_of, hook_name, protocol_name, unix_name, Presented, Record},
    metrics::NO_POLICY_LABEL,
    pod_names::PodNames,
};
use crate::{
    kernel::counters::{reason_name, verdict_name},
    state::allowlist::{Allowlist, Names},
};

/// An event line (as `egressd run` prints it, JSON) in the compact form
/// of `egressd events --format text`: time, verdict, policy, what was
/// tried, who tried it, why.
///
/// `2026-11-30T10:00:00.000Z denied agent tcp 203.0.113.9:443 (exfil.test) by curl (pid 42, uid 1000): destination_not_allowed`
pub fn compact(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let what = if s("hook") == "dns" {
        format!("dns {} {}", s("qtype"), s("qname"))
    } else if let Some(path) = v["path"].as_str() {
        format!("unix {path}")
    } else {
        let dest = match v["daddr"].as_str() {
            Some(a) if a.contains(':') => format!("[{a}]:{}", v["dport"]),
            Some(a) => format!("{a}:{}", v["dport"]),
            None if s("hook") == "sock_create" => "(socket)".into(),
            None => "(no destination)".into(),
        };
        match v["host"].as_str() {
            Some(h) => format!("{} {dest} ({h})", s("protocol")),
            None => format!("{} {dest}", s("protocol")),
        }
    };
    let who = match v["comm"].as_str() {
        Some(c) => format!(" by {c} (pid {}, uid {})", v["pid"], v["uid"]),
        None => String::new(),
    };
    format!(
        "{} {} {} {what}{who}: {}",
        s("time"),
        s("verdict"),
        s("policy"),
        s("reason")
    )
}

/// What went through one rule, in a few words (None: nothing did).
pub fn rule_line(s: &egress_common::RuleStats) -> Option<String> {
    use crate::policy::budget::human;
    if *s == egress_common::RuleStats::default() {
        return None;
    }
    let mut parts = Vec::new();
    if s.connections > 0 || s.datagrams == 0 {
        parts.push(format!("{} connection(s)", s.connections));
    }
    if s.datagrams > 0 {
        parts.push(format!("{} datagram(s)", s.datagrams));
    }
    parts.push(format!("{} out", human(s.bytes_out)));
    parts.push(format!("{} in", human(s.bytes_in)));
    if s.over_budget > 0 {
        parts.push(format!("{} refused over its budget", s.over_budget));
    }
    if s.names_refused > 0 {
        parts.push(format!(
            "{} refused for the name presented",
            s.names_refused
        ));
    }
    Some(parts.join(", "))
}

/// RFC 3339 UTC time with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A DNS query refused (or, in audit mode, let through and reported).
#[derive(Debug, Clone)]
pub struct DnsEvent {
    pub policy: String,
    pub verdict: &'static str,
    /// `dns_name_not_allowed`, `dns_type_not_allowed`,
    /// `dns_name_budget_spent` or `dns_answer_not_allowed`.
    pub reason: &'static str,
    pub name: String,
    pub qtype: String,
    pub transport: &'static str,
    /// For `dns_answer_not_allowed`: the addresses not admitted, and why.
    pub refused: Vec<(std::net::IpAddr, &'static str)>,
    /// For a query audit mode let through: the addresses it was answered.
    pub answers: Vec<std::net::IpAddr>,
    /// For `dns_name_budget_spent`: the wildcard rule (`*.domain`).
    pub rule: Option<String>,
    /// The process that asked, when the kernel noted it.
    pub asker: Option<egress_common::DnsAsker>,
}

/// Turns events into JSON, with policy names and admitted hostnames.
pub struct Describer {
    pub policies: HashMap<u32, String>,
    pub names: Names,
    /// The Kubernetes pod of an event's cgroup (on a node: `run --kubernetes`).
    pub pods: PodNames,
}

impl Describer {
    /// A describer with `allowlist`'s policy names and admitted hostnames.
    pub fn of(allowlist: &Allowlist) -> Describer {
        Describer {
            policies: allowlist.policy_names(),
            names: allowlist.names.clone(),
            pods: PodNames::default(),
        }
    }

    pub fn policy(&self, id: u32) -> &str {
        self.policies
            .get(&id)
            .map_or(NO_POLICY_LABEL, String::as_str)
    }

    pub fn host(&self, e: &Event) -> Option<String> {
        let ip = address(e)?;
        self.names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ip)
            .cloned()
    }

    /// A DNS query the proxy refused (or audited), as a JSON object.
    pub fn dns_json(&self, e: &DnsEvent) -> serde_json::Value {
        let mut v = json!({
            "time": timestamp(SystemTime::now()),
            "policy": e.policy,
            "verdict": e.verdict,
            "reason": e.reason,
            "hook": "dns",
            "protocol": e.transport,
            "qname": e.name,
            "qtype": e.qtype,
            "refused_addresses": e.refused.iter().map(|(ip, why)| json!({"address": ip.to_string(), "why": why})).collect::<Vec<_>>(),
        });
        if let Some(rule) = &e.rule {
            v["rule"] = json!(rule);
        }
        if e.verdict == "audited" && e.refused.is_empty() {
            v["answers"] = json!(e.answers);
        }
        if let Some(a) = &e.asker {
            v["pid"] = json!(a.tgid);
            v["tid"] = json!(a.pid);
            v["uid"] = json!(a.uid);
            v["gid"] = json!(a.gid);
            v["comm"] = json!(comm_of(&a.comm));
            v["cgroup_id"] = json!(a.cgroup_id);
            if let Some(pod) = self.pods.of(a.cgroup_id) {
                v["pod_uid"] = json!(pod.uid);
                if let Some(name) = pod.name {
                    v["pod"] = json!(name);
                }
            }
        }
        v
    }

    /// One event as a JSON object.
    /// The event as a JSON object.
    pub fn json(&self, e: &Record) -> serde_json::Value {
        serde_json::to_value(self.line(e, &timestamp(SystemTime::now())))
            .expect("an event line is plain data")
    }

    /// The event as one JSON line appended to `out`, stamped `time`.
    pub fn write_line(&self, e: &Record, time: &str, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, &self.line(e, time)).expect("writing to memory");
        out.push(b'\n');
    }

    fn line<'a>(&'a self, e: &'a Record, time: &'a str) -> Line<'a> {
        let pod = self.pods.of(e.cgroup_id);
        Line {
            cgroup_id: e.cgroup_id,
            comm: comm(e),
            daddr: address(e),
            dport: e.port,
            family: match e.family {
                AF_INET => "ipv4",
                AF_INET6 => "ipv6",
                AF_UNIX => "unix",
                f if e.hook == hook::SOCKET_FAMILY => crate::policy::family::family_name(f),
                _ => "none",
            },
            gid: e.gid,
            hook: hook_name(e.hook),
            host: self.host(e),
            pid: e.tgid,
            policy: self.policy(e.policy_id),
            path: e.unix.as_deref().map(unix_name),
            presented: e.presented.as_ref().map(Presented::kind),
            name: e.presented.as_ref().and_then(Presented::name),
            pod_uid: pod.as_ref().map(|p| p.uid.clone()),
            pod: pod.and_then(|p| p.name),
            protocol: if e.family == AF_UNIX {
                "unix".into()
            } else {
                protocol_name(e.protocol)
            },
            reason: reason_name(e.reason),
            tid: e.pid,
            time,
            uid: e.uid,
            verdict: verdict_name(e.verdict),
        }
    }
}

/// One event line; fields in alphabetical order, as before they were typed.
#[derive(serde::Serialize)]
struct Line<'a> {
    cgroup_id: u64,
    comm: Cow<'a, str>,
    daddr: Option<IpAddr>,
    dport: u16,
    family: &'static str,
    gid: u32,
    hook: &'static str,
    host: Option<String>,
    /// The name a connection presented (escaped, cut at 128 bytes), for
    /// `name_not_at_address` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    pid: u32,
    /// The UNIX socket name, for UNIX events only.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// The Kubernetes pod (`namespace/name`), where egressd knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<String>,
    /// The pod's uid, for a process in a pod's cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<String>,
    policy: &'a str,
    /// What the first bytes were, for `name_not_at_address` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    presented: Option<&'static str>,
    protocol: Cow<'static, str>,
    reason: &'static str,
    tid: u32,
    time: &'a str,
    uid: u32,
    verdict: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_564_800_123);
        assert_eq!(timestamp(t), "2026-11-25T00:00:00.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn compact_lines_say_what_who_and_why() {
        let v = json!({"time": "T", "verdict": "denied", "policy": "agent", "hook": "connect4",
            "protocol": "tcp", "daddr": "203.0.113.9", "dport": 443, "host": "exfil.test",
            "comm": "curl", "pid": 42, "uid": 1000, "reason": "destination_not_allowed"});
        assert_eq!(
            compact(&v),
            "T denied agent tcp 203.0.113.9:443 (exfil.test) by curl (pid 42, uid 1000): destination_not_allowed"
        );
        let dns = json!({"time": "T", "verdict": "denied", "policy": "agent", "hook": "dns",
            "qtype": "A", "qname": "x.attacker.test", "reason": "dns_name_not_allowed"});
        assert_eq!(
            compact(&dns),
            "T denied agent dns A x.attacker.test: dns_name_not_allowed"
        );
        let v6 = json!({"time": "T", "verdict": "audited", "policy": "p", "hook": "sendmsg6",
            "protocol": "udp", "daddr": "2001:db8::1", "dport": 53, "reason": "port_not_allowed"});
        assert_eq!(
            compact(&v6),
            "T audited p udp [2001:db8::1]:53: port_not_allowed"
        );
    }
}
