//! `egressd explain DEST`: why a destination is allowed or refused now,
//! policy by policy: which rule (by its line), and for an address admitted
//! from DNS, from which name and until when. Read from what the daemon
//! wrote into the kernel's maps, not from the files on disk.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use serde_json::{json, Value};

use crate::{
    policy::resolver::search_expansion,
    policy::{unmap, Destination, Protocol},
    state::allowlist::{Allowlist, Installed},
};

/// What `explain` was asked about.
enum Asked {
    /// An address, with a port and protocol if given.
    Address(IpAddr, Option<u16>, Protocol),
    /// A DNS name.
    Name(String),
}

/// Parses `IP`, `IP:PORT`, `[IPv6]:PORT`, each with an optional `/udp`,
/// or a DNS name.
fn parse(dest: &str) -> Result<Asked, String> {
    let (dest, protocol) = match dest.rsplit_once('/') {
        Some((d, "udp")) => (d, Protocol::Udp),
        Some((d, "tcp")) => (d, Protocol::Tcp),
        Some(_) => return Err(format!("`{dest}`: the protocol is /tcp or /udp")),
        None => (dest, Protocol::Tcp),
    };
    if let Ok(ip) = dest.parse::<IpAddr>() {
        return Ok(Asked::Address(ip, None, protocol));
    }
    if let Ok(sa) = dest.parse::<SocketAddr>() {
        return Ok(Asked::Address(sa.ip(), Some(sa.port()), protocol));
    }
    let name = dest.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.contains(|c: char| !(c.is_ascii_alphanumeric() || "-._".contains(c)))
    {
        return Err(format!(
            "`{dest}` is neither an address (IP, IP:PORT, [IPv6]:PORT, with /udp for UDP) nor a DNS name"
        ));
    }
    Ok(Asked::Name(name))
}

/// The answer to `explain DEST`, as JSON.
pub fn explain(allowlist: &Allowlist, dest: &str) -> Value {
    let asked = match parse(dest) {
        Ok(a) => a,
        Err(e) => return json!({ "error": e }),
    };
    let now = Instant::now();
    let policies: Vec<Value> = allowlist
        .installed
        .iter()
        .map(|p| match &asked {
            Asked::Address(ip, port, proto) => address(p, *ip, *port, *proto, now),
            Asked::Name(name) => name_in(p, name, now),
        })
        .collect();
    json!({ "destination": dest, "policies": policies })
}

fn protocol_fits(rule: Protocol, asked: Protocol) -> bool {
    rule == Protocol::Any || rule == asked
}

fn ports_fit(rule: &crate::policy::Rule, port: Option<u16>) -> bool {
    match port {
        None => true,
        Some(p) => rule.ports.is_empty() || rule.ports.iter().any(|r| r.lo <= p && p <= r.hi),
    }
}

fn rule_text(rule: &crate::policy::Rule) -> String {
    let ports = if rule.ports.is_empty() {
        "every port".to_string()
    } else {
        rule.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let line = if rule.line > 0 {
        format!("line {}: ", rule.line)
    } else {
        String::new()
    };
    let protocol = match rule.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Any => "tcp and udp",
    };
    format!("{line}{} ({ports}, {protocol})", rule.dest)
}

/// An address under one policy: each rule that covers it, and whether it
/// allows the port and protocol asked.
fn address(p: &Installed, ip: IpAddr, port: Option<u16>, proto: Protocol, now: Instant) -> Value {
    let ip = unmap(ipnet::IpNet::from(ip)).addr();
    let view = p.view();
    let mut because = Vec::new();
    let mut allowed = false;
    for rule in &view.policy.rules {
        let via = match &rule.dest {
            Destination::Net(n) => unmap(n.0)
                .contains(&ip)
                .then(|| "its prefix covers it".to_string()),
            Destination::List(l) => l
                .nets
                .iter()
                .any(|n| unmap(*n).contains(&ip))
                .then(|| format!("a prefix in {} covers it", l.file.display())),
            Destination::Host(h) => p.admitted.get(h).and_then(|a| {
                let bound = a.bound_to(&ip);
                let (_, until) = bound.iter().max_by_key(|(_, t)| *t)?;
                let names: Vec<&str> = bound.iter().map(|(n, _)| *n).collect();
                let left = until.saturating_duration_since(now).as_secs();
                let how = format!(
                    "admitted from the DNS answer for {}, for {left}s more",
                    names.join(", ")
                );
                Some(if rule.checks_names() {
                    format!(
                        "{how}; a TCP connection must name {} (TLS server_name or HTTP Host), UDP is refused",
                        if names.len() == 1 { "it" } else { "one of them" }
                    )
                } else {
                    how
                })
            }),
        };
        let Some(via) = via else { continue };
        let fits = protocol_fits(rule.protocol, proto) && ports_fit(rule, port);
        allowed |= fits;
        because.push(json!({
            "rule": rule_text(rule),
            "how": via,
            "allows_this": fits,
        }));
    }
    let verdict = if allowed {
        "allowed"
    } else if because.is_empty() {
        "refused: no rule covers the address (destination_not_allowed)"
    } else {
        "refused: the address is allowed, not this port or protocol (port_not_allowed)"
    };
    json!({ "policy": view.policy.name, "mode": view.policy.mode.to_string(), "verdict": verdict, "rules": because })
}

/// A DNS name under one policy: whether its queries are forwarded, and the
/// addresses admitted for it.
fn name_in(p: &Installed, name: &str, now: Instant) -> Value {
    let view = p.view();
    let hosts = view.policy.host_rules_for(name);
    let rules: Vec<Value> = view
        .policy
        .rules
        .iter()
        .filter(|r| matches!(&r.dest, Destination::Host(h) if hosts.contains(h)))
        .map(|r| {
            let admitted: Vec<Value> = match &r.dest {
                Destination::Host(h) => p
                    .admitted
                    .get(h)
                    .map(|a| {
                        a.bindings()
                            .into_iter()
                            .filter(|(_, n)| n.eq_ignore_ascii_case(name))
                            .map(|(ip, n)| {
                                let left = a
                                    .bound_to(&ip)
                                    .iter()
                                    .find(|(b, _)| *b == n)
                                    .map_or(0, |(_, t)| t.saturating_duration_since(now).as_secs());
                                json!({ "address": ip.to_string(), "for_seconds": left })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            json!({ "rule": rule_text(r), "admitted": admitted })
        })
        .collect();
    let verdict = if !rules.is_empty() {
        "allowed: lookups are forwarded, and the addresses answered are allowed on the rule's ports"
    } else if search_expansion(name, &view.search, |n| {
        !view.policy.host_rules_for(n).is_empty()
    }) {
        "a search-list expansion of an allowed name: answered NXDOMAIN, not forwarded, not a denial"
    } else {
        "refused: no rule allows the name (dns_name_not_allowed); nothing is forwarded"
    };
    json!({ "policy": view.policy.name, "mode": view.policy.mode.to_string(), "verdict": verdict, "rules": rules })
}

/// The human form of an `explain` answer.
pub fn text(doc: &Value) -> String {
    if let Some(e) = doc["error"].as_str() {
        return format!("egressd explain: {e}");
    }
    let mut out = String::new();
    for p in doc["policies"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "policy {} ({}): {}\n",
            p["policy"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("?"),
            p["verdict"].as_str().unwrap_or("?")
        ));
        for r in p["rules"].as_array().into_iter().flatten() {
            let rule = r["rule"].as_str().unwrap_or("?");
            match r["how"].as_str() {
                Some(how) => out.push_str(&format!(
                    "  {rule}: {how}{}\n",
                    if r["allows_this"] == true {
                        ""
                    } else {
                        "; not this port or protocol"
                    }
                )),
                None => {
                    out.push_str(&format!("  {rule}\n"));
                    for l in r["admitted"].as_array().into_iter().flatten() {
                        out.push_str(&format!(
                            "    {} for {}s more\n",
                            l["address"].as_str().unwrap_or("?"),
                            l["for_seconds"]
                        ));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        out.push_str("no policy is loaded\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert!(matches!(
            parse("203.0.113.9"),
            Ok(Asked::Address(_, None, Protocol::Tcp))
        ));
        assert!(matches!(
            parse("[2001:db8::1]:53/udp"),
            Ok(Asked::Address(_, Some(53), Protocol::Udp))
        ));
        assert!(matches!(parse("API.model.test."), Ok(Asked::Name(n)) if n == "api.model.test"));
        assert!(parse("a b").is_err());
        assert!(parse("1.2.3.4:5/sctp").is_err());
    }
}
