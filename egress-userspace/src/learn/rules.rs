//! What a run reached, as allow rules: a host rule per name (several names
//! under one domain collapsed into a wildcard only where that is safe), an
//! ip rule per address reached without a lookup, with the ports and
//! transport seen, less what an existing policy already allows.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    net::IpAddr,
};

use super::observe::{Observed, Reached, Seen, Transport};
use crate::policy::{suffix, Destination, Policy, Protocol};

/// Names under one domain that make it a wildcard (`*.domain`).
const COLLAPSE_AT: usize = 3;

/// One rule to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// `host: NAME` (a wildcard is `*.domain`) or `ip: ADDRESS`.
    pub dest: LearnedDest,
    pub ports: BTreeSet<u16>,
    /// None: both TCP and UDP (`protocol: any`).
    pub transport: Option<Transport>,
    pub seen: Seen,
    /// The names a wildcard stands for.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LearnedDest {
    Host(String),
    Ip(IpAddr),
}

/// A destination's new ports, what was seen, and the names a wildcard
/// stands for.
type Gathered = (BTreeSet<u16>, Seen, Vec<String>);

/// The rules that allow what `o` saw, less what `existing` allows.
pub fn learned(o: &Observed, existing: Option<&Policy>) -> Vec<Learned> {
    let mut by_dest: BTreeMap<(LearnedDest, Transport), Gathered> = BTreeMap::new();
    let destinations = o.destinations();
    let names: Vec<String> = destinations
        .keys()
        .filter_map(|(d, _)| match d {
            Reached::Host(h) => Some(h.clone()),
            Reached::Address(_) => None,
        })
        .collect();
    let wildcards = wildcards(names.iter().map(String::as_str));
    for ((dest, t), (ports, seen)) in destinations {
        // A name is written into the file only as a valid exact host name:
        // the agent chose it, and must not write YAML of its own, nor a
        // wildcard (a query for a literal `*.name`).
        let valid = |h: &str| {
            h.parse::<crate::policy::Host>()
                .is_ok_and(|h| !h.is_wildcard())
        };
        if matches!(&dest, Reached::Host(h) if !valid(h)) {
            continue;
        }
        let (dest, name) = match dest {
            Reached::Host(h) => match wildcards.get(h.as_str()) {
                Some(w) => (LearnedDest::Host(format!("*.{w}")), Some(h)),
                None => (LearnedDest::Host(h), None),
            },
            Reached::Address(ip) => (LearnedDest::Ip(ip), None),
        };
        let new: BTreeSet<u16> = ports
            .into_iter()
            .filter(|p| !existing.is_some_and(|e| allows(e, &dest, t, *p)))
            .collect();
        if new.is_empty() {
            continue;
        }
        let entry = by_dest.entry((dest, t)).or_default();
        entry.0.extend(new);
        entry.1.merge(&seen);
        entry.2.extend(name);
    }
    // TCP and UDP to the same ports of one destination: one `any` rule.
    let mut out: Vec<Learned> = Vec::new();
    for ((dest, t), (ports, seen, names)) in by_dest {
        if let Some(prev) = out
            .last_mut()
            .filter(|p| p.dest == dest && p.ports == ports && p.transport != Some(t))
        {
            prev.transport = None;
            prev.seen.merge(&seen);
            continue;
        }
        out.push(Learned {
            dest,
            ports,
            transport: Some(t),
            seen,
            names,
        });
    }
    out
}

/// For each name that falls under a wildcard, the wildcard's domain: at
/// least `COLLAPSE_AT` names directly below one domain, where that domain
/// is below a registrable one (`*.cdn.example.test`, never `*.example.test`
/// or `*.github.io`: a wildcard never spans a whole organisation's domain,
/// nor a shared suffix where anyone can make a name).
fn wildcards<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, &'a str> {
    let mut under: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for n in names {
        if let Some((_, parent)) = n.split_once('.') {
            under.entry(parent).or_default().insert(n);
        }
    }
    let mut out = BTreeMap::new();
    for (parent, names) in under {
        if names.len() >= COLLAPSE_AT && safe_wildcard(parent) {
            out.extend(names.into_iter().map(|n| (n, parent)));
        }
    }
    out
}

/// Whether `*.domain` stays inside one owner's names, below the
/// registrable domain.
fn safe_wildcard(domain: &str) -> bool {
    if suffix::wildcard_opens(domain).is_some() {
        return false;
    }
    // The public suffix it is under: as the list says, or its last label
    // for a top-level domain the list does not know (`.test`).
    let suffix_labels = suffix::suffix_of(domain).map_or(1, |(s, _)| s.split('.').count());
    domain.split('.').count() > suffix_labels + 1
}

/// Whether `existing` already allows `port` over `t` to `dest`.
fn allows(existing: &Policy, dest: &LearnedDest, t: Transport, port: u16) -> bool {
    let proto_ok = |p: Protocol| {
        p == Protocol::Any
            || (p == Protocol::Tcp && t == Transport::Tcp)
            || (p == Protocol::Udp && t == Transport::Udp)
    };
    existing.rules.iter().any(|r| {
        let dest_ok = match (&r.dest, dest) {
            (Destination::Host(h), LearnedDest::Host(n)) => match n.strip_prefix("*.") {
                Some(domain) => h.is_wildcard() && h.matches(&format!("x.{domain}")),
                None => h.matches(n),
            },
            (Destination::Net(net), LearnedDest::Ip(ip)) => net.0.contains(ip),
            (Destination::List(l), LearnedDest::Ip(ip)) => l.nets.iter().any(|n| n.contains(ip)),
            _ => false,
        };
        dest_ok
            && proto_ok(r.protocol)
            && (r.ports.is_empty() || r.ports.iter().any(|p| p.lo <= port && port <= p.hi))
    })
}

/// The rules as YAML sequence items, each under a comment saying what was
/// seen, indented by `indent` spaces.
pub fn render(rules: &[Learned], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for r in rules {
        let (key, value, what) = match &r.dest {
            LearnedDest::Host(h) => ("host", h.clone(), h.clone()),
            LearnedDest::Ip(ip @ IpAddr::V6(_)) => ("ip", format!("\"{ip}\""), ip.to_string()),
            LearnedDest::Ip(ip) => (
                "ip",
                ip.to_string(),
                format!("{ip}, reached without a lookup"),
            ),
        };
        let transport = r.transport.map_or("tcp and udp", Transport::name);
        let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
        let mut comment = format!(
            "{what}: seen {} time(s) on {transport} port(s) {}",
            r.seen.count,
            ports.join(", ")
        );
        if !r.seen.by.is_empty() {
            let by: Vec<&str> = r.seen.by.iter().map(String::as_str).collect();
            let _ = write!(comment, ", by {}", by.join(", "));
        }
        let _ = writeln!(out, "{pad}# {}", comment_text(&comment));
        if !r.names.is_empty() {
            let _ = writeln!(out, "{pad}# for {}", comment_text(&r.names.join(", ")));
        }
        let _ = writeln!(out, "{pad}- {key}: {value}");
        let _ = writeln!(out, "{pad}  ports: [{}]", ports.join(", "));
        match r.transport {
            Some(Transport::Tcp) => {}
            Some(Transport::Udp) => {
                let _ = writeln!(out, "{pad}  protocol: udp");
            }
            None => {
                let _ = writeln!(out, "{pad}  protocol: any");
            }
        }
    }
    out
}

/// `text` made safe to stand in a one-line YAML comment: what the agent
/// chose (its process names, the names it asked for, socket paths) cannot
/// end the comment and write YAML of its own. Only printable ASCII stays;
/// anything else (control characters, and U+2028 and U+2029, which YAML
/// reads as line breaks) is written as `\u{..}`.
pub fn comment_text(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(400) {
        match c {
            '\n' | '\t' => out.push(' '),
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn connect(o: &mut Observed, name: &str, ip: &str, proto: &str, port: u16) {
        o.add(
            &json!({"policy": "p", "hook": "dns", "verdict": "audited", "qname": name,
                    "qtype": "A", "reason": "dns_name_not_allowed", "answers": [ip]}),
            None,
        );
        o.add(
            &json!({"policy": "p", "hook": "connect4", "verdict": "audited", "protocol": proto,
                    "daddr": ip, "dport": port, "reason": "destination_not_allowed"}),
            None,
        );
    }

    fn dests(rules: &[Learned]) -> Vec<String> {
        rules
            .iter()
            .map(|r| match &r.dest {
                LearnedDest::Host(h) => h.clone(),
                LearnedDest::Ip(ip) => ip.to_string(),
            })
            .collect()
    }

    #[test]
    fn collapses_only_below_a_registrable_domain() {
        let mut o = Observed::default();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            connect(
                &mut o,
                &format!("{n}.cdn.model.test"),
                &format!("198.51.100.{}", i + 1),
                "tcp",
                443,
            );
            connect(
                &mut o,
                &format!("{n}.model.test"),
                &format!("198.51.100.{}", i + 11),
                "tcp",
                443,
            );
            connect(
                &mut o,
                &format!("{n}.github.io"),
                &format!("198.51.100.{}", i + 21),
                "tcp",
                443,
            );
            connect(
                &mut o,
                &format!("{n}.example.co.uk"),
                &format!("198.51.100.{}", i + 31),
                "tcp",
                443,
            );
        }
        let d = dests(&learned(&o, None));
        assert!(d.contains(&"*.cdn.model.test".to_string()), "{d:?}");
        for kept in ["a.model.test", "a.github.io", "a.example.co.uk"] {
            assert!(d.contains(&kept.to_string()), "{kept} was collapsed: {d:?}");
        }
        assert!(!d.iter().any(|n| n == "*.model.test"
            || n == "*.github.io"
            || n == "*.co.uk"
            || n == "*.example.co.uk"));
    }

    #[test]
    fn what_the_agent_names_cannot_write_rules() {
        let mut o = Observed::default();
        connect(
            &mut o,
            "x.test\n  - cidr: 0.0.0.0/0",
            "198.51.100.1",
            "tcp",
            443,
        );
        o.add(
            &json!({"policy": "p", "hook": "connect4", "verdict": "audited", "protocol": "tcp",
                    "daddr": "203.0.113.5", "dport": 443, "reason": "destination_not_allowed",
                    "comm": "sh\n  - cidr: 0.0.0.0/0"}),
            None,
        );
        let r = learned(&o, None);
        assert_eq!(dests(&r), vec!["203.0.113.5"]);
        let text = render(&r, 2);
        assert_eq!(
            text.lines().filter(|l| l.contains("cidr")).count(),
            1,
            "{text}"
        );
        assert!(
            text.lines().all(|l| !l.trim_start().starts_with("- cidr")),
            "{text}"
        );
        // Line and paragraph separators are line breaks to YAML.
        assert_eq!(
            comment_text("a\u{2028}b\u{2029}c\u{85}d \u{e9}"),
            "a\\u{2028}b\\u{2029}c\\u{85}d \\u{e9}"
        );
        // A query for a literal wildcard name writes no rule.
        let mut o = Observed::default();
        connect(&mut o, "*.corp.test", "198.51.100.9", "tcp", 443);
        assert!(learned(&o, None).is_empty());
    }

    #[test]
    fn same_ports_over_both_transports_make_one_any_rule() {
        let mut o = Observed::default();
        connect(&mut o, "q.model.test", "198.51.100.1", "tcp", 443);
        connect(&mut o, "q.model.test", "198.51.100.1", "udp", 443);
        connect(&mut o, "q.model.test", "198.51.100.1", "udp", 3478);
        let r = learned(&o, None);
        assert_eq!(r.len(), 2, "{r:?}");
        let text = render(&r, 2);
        assert!(
            text.contains("  - host: q.model.test\n    ports: [443]\n"),
            "{text}"
        );
        assert!(
            text.contains("    ports: [443, 3478]\n    protocol: udp\n"),
            "{text}"
        );
    }

    #[test]
    fn leaves_out_what_the_policy_allows() {
        let mut o = Observed::default();
        connect(&mut o, "api.model.test", "198.51.100.1", "tcp", 443);
        connect(&mut o, "api.model.test", "198.51.100.1", "tcp", 8443);
        o.add(
            &json!({"policy": "p", "hook": "connect4", "verdict": "audited", "protocol": "tcp",
                    "daddr": "203.0.113.5", "dport": 443, "reason": "destination_not_allowed"}),
            None,
        );
        let existing = crate::policy::validate::parse(
            "name: p\nallow:\n  - host: api.model.test\n    ports: [443]\n  - cidr: 203.0.113.0/24\n",
            std::path::Path::new("p.yaml"),
        )
        .unwrap();
        let r = learned(&o, Some(&existing));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].ports, BTreeSet::from([8443]));
    }
}
