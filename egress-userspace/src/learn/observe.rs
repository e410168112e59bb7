//! What a run reached, read from its event lines (the JSON objects that
//! `exec --events-json`, `egressd run` and `egressd events` write): the
//! names it looked up (audit mode reports a query with the addresses it
//! was answered), the addresses, ports and protocols it connected or sent
//! to, and what no allow rule can name.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use serde_json::Value;

/// The transport a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    fn of(protocol: &str) -> Option<Transport> {
        match protocol {
            "tcp" | "mptcp" => Some(Transport::Tcp),
            "udp" | "udplite" => Some(Transport::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// How often something was seen, and by which programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub by: BTreeSet<String>,
}

impl Seen {
    fn add(&mut self, comm: Option<&str>) {
        self.count += 1;
        if let Some(c) = comm.filter(|c| !c.is_empty()) {
            self.by.insert(c.to_string());
        }
    }

    pub fn merge(&mut self, other: &Seen) {
        self.count += other.count;
        self.by.extend(other.by.iter().cloned());
    }
}

/// Everything learned from a run's events.
#[derive(Debug, Default)]
pub struct Observed {
    /// Names looked up, and how often.
    pub lookups: BTreeMap<String, Seen>,
    /// The name each answered address was last answered for.
    answered: HashMap<IpAddr, String>,
    /// Addresses reached, by transport and port.
    reached: BTreeMap<(IpAddr, Transport, u16), Seen>,
    /// The name an event itself gave an address (learned for a rule).
    named: HashMap<IpAddr, String>,
    /// Names a connection presented (TLS server_name, HTTP Host) where
    /// the policy refused them at the address (`name_not_at_address`),
    /// by port: each is learned as a host rule of its own.
    presented: BTreeMap<(String, u16), Seen>,
    /// What no allow rule can allow, described for a person.
    pub unlearnable: BTreeMap<String, Seen>,
    /// The policies the events came from.
    pub policies: BTreeSet<String>,
    /// Event lines read.
    pub events: u64,
}

/// One destination reached: by name (`host`) or by address alone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reached {
    Host(String),
    Address(IpAddr),
}

impl Observed {
    /// Reads one event (of policy `only`, when given).
    pub fn add(&mut self, v: &Value, only: Option<&str>) {
        let policy = v["policy"].as_str().unwrap_or("");
        if only.is_some_and(|p| p != policy) {
            return;
        }
        let s = |k: &str| v[k].as_str();
        let (Some(hook), Some(verdict)) = (s("hook"), s("verdict")) else {
            return;
        };
        if verdict == "allowed" {
            return;
        }
        self.events += 1;
        self.policies.insert(policy.to_string());
        let comm = s("comm");
        if hook == "dns" {
            let name = s("qname").unwrap_or("").to_string();
            if s("reason") == Some("dns_type_not_allowed") {
                let qtype = s("qtype").unwrap_or("?");
                self.unlearnable
                    .entry(format!("dns {qtype} {name}: no policy allows queries of type {qtype}, which carry data rather than addresses"))
                    .or_default()
                    .add(comm);
                return;
            }
            if name.is_empty() {
                return;
            }
            if s("reason") == Some("dns_name_budget_spent") {
                let rule = s("rule").unwrap_or("?");
                self.unlearnable
                    .entry(format!("dns {name}: below {rule}, whose names per window were spent; raise its `lookups` if the agent really uses that many"))
                    .or_default()
                    .add(comm);
                return;
            }
            for a in v["answers"].as_array().into_iter().flatten() {
                if let Some(ip) = a.as_str().and_then(|a| a.parse().ok()) {
                    self.answered.insert(ip, name.clone());
                }
            }
            self.lookups.entry(name).or_default().add(comm);
            return;
        }
        let protocol = s("protocol").unwrap_or("");
        if let Some(path) = s("path") {
            let why = format!("unix {path}: name it under channels.unix if the agent needs it");
            self.unlearnable.entry(why).or_default().add(comm);
            return;
        }
        let daddr: Option<IpAddr> = s("daddr").and_then(|a| a.parse().ok());
        let port = v["dport"].as_u64().unwrap_or(0) as u16;
        let reason = s("reason").unwrap_or("");
        if reason == "name_not_at_address" {
            self.add_presented(v, daddr, port, comm);
            return;
        }
        let transport = Transport::of(protocol);
        let learnable = matches!(
            hook,
            "connect4" | "connect6" | "sendmsg4" | "sendmsg6" | "packet_egress"
        ) && matches!(
            reason,
            "destination_not_allowed" | "port_not_allowed" | "packet_destination_not_allowed"
        );
        match (daddr, transport) {
            (Some(ip), Some(t)) if learnable && port != 0 => {
                if let Some(h) = s("host") {
                    self.named.insert(ip, h.to_string());
                }
                self.reached.entry((ip, t, port)).or_default().add(comm);
            }
            _ => {
                let what = match daddr {
                    Some(ip) => format!("{protocol} {ip}:{port}"),
                    None => format!("{hook} ({protocol})"),
                };
                self.unlearnable
                    .entry(format!("{what}: {reason}, which no allow rule can allow"))
                    .or_default()
                    .add(comm);
            }
        }
    }

    /// A connection refused (or audited) for the name it presented: the
    /// name, if it is a host name, is learned for the port; a connection
    /// that named none cannot be allowed by a host rule.
    fn add_presented(&mut self, v: &Value, daddr: Option<IpAddr>, port: u16, comm: Option<&str>) {
        let kind = v["presented"].as_str().unwrap_or("no_name");
        let name = v["name"]
            .as_str()
            .filter(|_| matches!(kind, "tls_server_name" | "http_host"))
            .and_then(|n| n.parse::<crate::policy::Host>().ok())
            .filter(|h| !h.is_wildcard());
        match name {
            Some(host) if port != 0 => {
                self.presented
                    .entry((host.to_string(), port))
                    .or_default()
                    .add(comm);
            }
            _ => {
                let at = daddr.map_or_else(|| "?".to_string(), |ip| format!("{ip}:{port}"));
                self.unlearnable
                    .entry(format!("tcp {at}: the connection presented {kind}, and a host rule needs a host name in its first bytes (`any_name_at_address: true` on the rule lets it through, with every name its front door serves)"))
                    .or_default()
                    .add(comm);
            }
        }
    }

    /// What was reached, by name where the address was answered for one
    /// (or named by the event, or presented by the connection), with its
    /// transports and ports.
    pub fn destinations(&self) -> BTreeMap<(Reached, Transport), (BTreeSet<u16>, Seen)> {
        let mut out: BTreeMap<(Reached, Transport), (BTreeSet<u16>, Seen)> = BTreeMap::new();
        for ((name, port), seen) in &self.presented {
            let entry = out
                .entry((Reached::Host(name.clone()), Transport::Tcp))
                .or_default();
            entry.0.insert(*port);
            entry.1.merge(seen);
        }
        for ((ip, t, port), seen) in &self.reached {
            let dest = match self.named.get(ip).or_else(|| self.answered.get(ip)) {
                Some(name) => Reached::Host(name.clone()),
                None => Reached::Address(*ip),
            };
            let entry = out.entry((dest, *t)).or_default();
            entry.0.insert(*port);
            entry.1.merge(seen);
        }
        out
    }

    /// Names looked up whose addresses were never reached.
    pub fn unreached(&self) -> Vec<&str> {
        let reached: BTreeSet<&str> = self
            .reached
            .keys()
            .filter_map(|(ip, _, _)| self.named.get(ip).or_else(|| self.answered.get(ip)))
            .chain(self.presented.keys().map(|(name, _)| name))
            .map(String::as_str)
            .collect();
        self.lookups
            .keys()
            .map(String::as_str)
            .filter(|n| !reached.contains(n))
            .collect()
    }

    /// Answered addresses that a policy's DNS screening refuses (private,
    /// loopback, link-local...): the name's rule alone will not reach them.
    pub fn screened_answers(&self) -> Vec<(String, IpAddr, &'static str)> {
        let mut out: Vec<_> = self
            .answered
            .iter()
            .filter_map(|(ip, name)| {
                crate::policy::special::special(*ip, true).map(|why| (name.clone(), *ip, why))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_what_was_reached_by_its_lookup() {
        let mut o = Observed::default();
        for v in [
            json!({"policy": "p", "hook": "connect4", "verdict": "audited", "protocol": "tcp",
                   "daddr": "198.51.100.1", "dport": 443, "reason": "destination_not_allowed", "comm": "curl"}),
            json!({"policy": "p", "hook": "dns", "verdict": "audited", "qname": "api.model.test",
                   "qtype": "A", "reason": "dns_name_not_allowed", "answers": ["198.51.100.1"], "comm": "curl"}),
            json!({"policy": "p", "hook": "sendmsg4", "verdict": "audited", "protocol": "udp",
                   "daddr": "203.0.113.7", "dport": 9000, "reason": "destination_not_allowed"}),
            json!({"policy": "p", "hook": "dns", "verdict": "audited", "qname": "unused.test",
                   "qtype": "A", "reason": "dns_name_not_allowed", "answers": []}),
            json!({"policy": "p", "hook": "sock_create", "verdict": "audited", "protocol": "raw",
                   "reason": "socket_not_allowed"}),
            json!({"policy": "other", "hook": "connect4", "verdict": "denied", "protocol": "tcp",
                   "daddr": "203.0.113.8", "dport": 22, "reason": "destination_not_allowed"}),
        ] {
            o.add(&v, Some("p"));
        }
        let d = o.destinations();
        let keys: Vec<_> = d.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                (Reached::Host("api.model.test".into()), Transport::Tcp),
                (
                    Reached::Address("203.0.113.7".parse().unwrap()),
                    Transport::Udp
                ),
            ]
        );
        assert_eq!(o.unreached(), vec!["unused.test"]);
        assert_eq!(o.unlearnable.len(), 1);
        assert_eq!(o.events, 5);
    }

    /// Under a policy that allows api.model.test, the agent reached its
    /// address presenting another name: that name is learned as a host
    /// rule of its own; a connection that presented none is not learnable.
    #[test]
    fn learns_the_names_connections_presented() {
        let mut o = Observed::default();
        for v in [
            json!({"policy": "p", "hook": "packet_egress", "verdict": "audited", "protocol": "tcp",
                   "daddr": "198.51.100.1", "dport": 443, "reason": "name_not_at_address",
                   "presented": "tls_server_name", "name": "uploads.model.test", "host": "api.model.test"}),
            json!({"policy": "p", "hook": "packet_egress", "verdict": "audited", "protocol": "tcp",
                   "daddr": "198.51.100.1", "dport": 80, "reason": "name_not_at_address",
                   "presented": "http_host", "name": "uploads.model.test"}),
            json!({"policy": "p", "hook": "packet_egress", "verdict": "audited", "protocol": "tcp",
                   "daddr": "198.51.100.1", "dport": 443, "reason": "name_not_at_address",
                   "presented": "tls_without_server_name"}),
            json!({"policy": "p", "hook": "packet_egress", "verdict": "audited", "protocol": "tcp",
                   "daddr": "198.51.100.1", "dport": 443, "reason": "name_not_at_address",
                   "presented": "tls_server_name", "name": "bad\\x00name"}),
        ] {
            o.add(&v, Some("p"));
        }
        let d = o.destinations();
        let (ports, seen) = &d[&(Reached::Host("uploads.model.test".into()), Transport::Tcp)];
        assert_eq!(ports.iter().copied().collect::<Vec<_>>(), vec![80, 443]);
        assert_eq!(seen.count, 2);
        assert_eq!(d.len(), 1);
        assert_eq!(o.unlearnable.len(), 2, "{:?}", o.unlearnable);
    }
}
