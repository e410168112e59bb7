//! Compiling a policy (and the addresses its hostnames resolved to) into
//! allow-trie entries: prefix -> the port ranges allowed there.
//!
//! The kernel does one longest-prefix lookup, so each entry must carry the
//! ports of every shorter prefix that covers it as well as its own: a /24
//! allowing port 80 and a /32 inside it allowing 443 give the /32 both.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use egress_common::{PortRange as KernelRange, MAX_PORT_RANGES, PROTO_BIT_TCP, PROTO_BIT_UDP};
use ipnet::IpNet;

use crate::policy::{Destination, Host, Policy, PortRange, Protocol};

/// The ports one prefix allows, normalised (sorted, merged), ready for the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec(pub Vec<KernelRange>);

/// A prefix of one family: address bits (host order) and length.
pub type V4Prefix = (u32, u8);
pub type V6Prefix = (u128, u8);

/// What a policy compiles to. Entries with the same ports share one spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub v4: HashMap<V4Prefix, Arc<PortSpec>>,
    pub v6: HashMap<V6Prefix, Arc<PortSpec>>,
}

impl Compiled {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("policy `{policy}`: {prefix} would need {count} port ranges (with those of the prefixes covering it), more than the {max} one destination can carry; merge ports into ranges")]
    TooManyPortRanges {
        policy: String,
        prefix: String,
        count: usize,
        max: usize,
    },
}

/// TCP and UDP ranges of a set of rules, before normalising.
#[derive(Default, Clone)]
struct Ports {
    tcp: Vec<(u16, u16)>,
    udp: Vec<(u16, u16)>,
}

impl Ports {
    fn add(&mut self, protocol: Protocol, ranges: &[PortRange]) {
        for r in ranges {
            if matches!(protocol, Protocol::Tcp | Protocol::Any) {
                self.tcp.push((r.lo, r.hi));
            }
            if matches!(protocol, Protocol::Udp | Protocol::Any) {
                self.udp.push((r.lo, r.hi));
            }
        }
    }
}

/// Sorts and merges overlapping or adjacent ranges.
fn merged(mut v: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn kernel_ranges(ranges: &[(u16, u16)], protos: u8) -> impl Iterator<Item = KernelRange> + '_ {
    ranges.iter().map(move |&(lo, hi)| KernelRange {
        lo,
        hi,
        protos,
        _pad: [0; 3],
    })
}

fn spec(ports: Ports) -> PortSpec {
    let tcp = merged(ports.tcp);
    let udp = merged(ports.udp);
    let out = if tcp == udp {
        kernel_ranges(&tcp, PROTO_BIT_TCP | PROTO_BIT_UDP).collect()
    } else {
        kernel_ranges(&tcp, PROTO_BIT_TCP)
            .chain(kernel_ranges(&udp, PROTO_BIT_UDP))
            .collect()
    };
    PortSpec(out)
}

/// IPv4-mapped IPv6 prefixes (`::ffff:0:0/96` and inside) are IPv4.
pub fn unmap(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                return IpNet::V4(
                    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("length <= 32"),
                );
            }
        }
    }
    net
}

/// The rule groups (see `compile`) that allow one prefix, sorted; almost
/// always one, stored without an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Rules {
    One(u32),
    Many(Vec<u32>),
}

impl Rules {
    fn slice(&self) -> &[u32] {
        match self {
            Rules::One(i) => std::slice::from_ref(i),
            Rules::Many(v) => v,
        }
    }

    fn with(&self, more: &[u32]) -> Rules {
        let mut v: Vec<u32> = self.slice().iter().chain(more).copied().collect();
        v.sort_unstable();
        v.dedup();
        if v.len() == 1 {
            Rules::One(v[0])
        } else {
            Rules::Many(v)
        }
    }
}

/// Adds, to each entry, the rules of the longest shorter prefix present
/// that covers it (which already holds those of every shorter one: lengths
/// are done in increasing order).
fn push_down<A>(entries: &mut HashMap<(A, u8), Rules>, mask: impl Fn(A, u8) -> A)
where
    A: Copy + Eq + std::hash::Hash,
{
    let lengths: BTreeSet<u8> = entries.keys().map(|k| k.1).collect();
    if lengths.len() < 2 {
        return;
    }
    let lengths: Vec<u8> = lengths.into_iter().collect();
    for (i, &len) in lengths.iter().enumerate().skip(1) {
        let shorter = &lengths[..i];
        let updates: Vec<((A, u8), Rules)> = entries
            .iter()
            .filter(|(k, _)| k.1 == len)
            .filter_map(|(&(addr, l), rules)| {
                shorter.iter().rev().find_map(|&s| {
                    entries
                        .get(&(mask(addr, s), s))
                        .map(|cover| ((addr, l), rules.with(cover.slice())))
                })
            })
            .collect();
        for (k, r) in updates {
            entries.insert(k, r);
        }
    }
}

fn mask4(a: u32, l: u8) -> u32 {
    if l == 0 {
        0
    } else {
        a & (u32::MAX << (32 - l))
    }
}

fn mask6(a: u128, l: u8) -> u128 {
    if l == 0 {
        0
    } else {
        a & (u128::MAX << (128 - l))
    }
}

/// Compiles `policy`, with `resolved` giving the current addresses of its hostnames.
pub fn compile(
    policy: &Policy,
    resolved: &HashMap<Host, Vec<IpAddr>>,
) -> Result<Compiled, CompileError> {
    // Rules are grouped by what they allow (protocol and ports): entries
    // carry group ids, so that a million rules with the same ports share one.
    let mut groups: Vec<(Protocol, Vec<PortRange>)> = Vec::new();
    let mut group_ids: HashMap<(Protocol, Vec<PortRange>), u32> = HashMap::new();
    let mut v4: HashMap<(u32, u8), Rules> = HashMap::new();
    let mut v6: HashMap<(u128, u8), Rules> = HashMap::new();
    for rule in &policy.rules {
        let sig = (rule.protocol, rule.port_ranges());
        let i = *group_ids.entry(sig.clone()).or_insert_with(|| {
            groups.push(sig);
            groups.len() as u32 - 1
        });
        let mut add = |net: IpNet| match unmap(net) {
            IpNet::V4(n) => {
                let k = (u32::from(n.network()), n.prefix_len());
                let r = v4.get(&k).map_or(Rules::One(i), |r| r.with(&[i]));
                v4.insert(k, r);
            }
            IpNet::V6(n) => {
                let k = (u128::from(n.network()), n.prefix_len());
                let r = v6.get(&k).map_or(Rules::One(i), |r| r.with(&[i]));
                v6.insert(k, r);
            }
        };
        match &rule.dest {
            Destination::Net(n) => add(n.0),
            Destination::List(list) => list.nets.iter().for_each(|n| add(*n)),
            Destination::Host(h) => {
                for ip in resolved.get(h).into_iter().flatten() {
                    add(IpNet::from(*ip));
                }
            }
        }
    }
    push_down(&mut v4, mask4);
    push_down(&mut v6, mask6);
    // One port set per distinct set of rules, shared by its entries.
    let mut specs: HashMap<Rules, Arc<PortSpec>> = HashMap::new();
    let mut spec_of =
        |rules: &Rules, prefix: &dyn Fn() -> String| -> Result<Arc<PortSpec>, CompileError> {
            if let Some(s) = specs.get(rules) {
                return Ok(s.clone());
            }
            let mut ports = Ports::default();
            for &i in rules.slice() {
                let (protocol, ranges) = &groups[i as usize];
                ports.add(*protocol, ranges);
            }
            let s = spec(ports);
            if s.0.len() > MAX_PORT_RANGES {
                return Err(CompileError::TooManyPortRanges {
                    policy: policy.name.clone(),
                    prefix: prefix(),
                    count: s.0.len(),
                    max: MAX_PORT_RANGES,
                });
            }
            let s = Arc::new(s);
            specs.insert(rules.clone(), s.clone());
            Ok(s)
        };
    let mut out = Compiled::default();
    out.v4.reserve(v4.len());
    out.v6.reserve(v6.len());
    for ((a, l), r) in v4 {
        let s = spec_of(&r, &|| format!("{}/{l}", std::net::Ipv4Addr::from(a)))?;
        out.v4.insert((a, l), s);
    }
    for ((a, l), r) in v6 {
        let s = spec_of(&r, &|| format!("{}/{l}", std::net::Ipv6Addr::from(a)))?;
        out.v6.insert((a, l), s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::file::parse;
    use std::path::Path;

    fn policy(allow: &str) -> Policy {
        parse(&format!("name: t\nallow:\n{allow}"), Path::new("t.yaml")).unwrap()
    }

    fn r(lo: u16, hi: u16, protos: u8) -> KernelRange {
        KernelRange {
            lo,
            hi,
            protos,
            _pad: [0; 3],
        }
    }

    const TCP: u8 = PROTO_BIT_TCP;
    const UDP: u8 = PROTO_BIT_UDP;

    #[test]
    fn covering_prefix_ports_are_pushed_down() {
        let p = policy(
            "  - cidr: 203.0.113.0/24\n    ports: [80]\n  - ip: 203.0.113.5\n    ports: [443]\n",
        );
        let c = compile(&p, &HashMap::new()).unwrap();
        let a = u32::from(std::net::Ipv4Addr::new(203, 0, 113, 5));
        assert_eq!(c.v4[&(a, 32)].0, vec![r(80, 80, TCP), r(443, 443, TCP)]);
        assert_eq!(c.v4[&(a & 0xffff_ff00, 24)].0, vec![r(80, 80, TCP)]);
    }

    #[test]
    fn ranges_merge_and_protocols_split() {
        let p = policy(concat!(
            "  - cidr: 198.51.100.0/24\n    ports: [\"1000-2000\", \"1500-3000\", 3001]\n",
            "  - cidr: 198.51.100.0/24\n    ports: [53]\n    protocol: udp\n",
        ));
        let c = compile(&p, &HashMap::new()).unwrap();
        let s = &c.v4.values().next().unwrap().0;
        assert_eq!(s, &vec![r(1000, 3001, TCP), r(53, 53, UDP)]);
        let p = policy("  - cidr: 198.51.100.0/24\n    ports: [53]\n    protocol: any\n");
        let c = compile(&p, &HashMap::new()).unwrap();
        assert_eq!(c.v4.values().next().unwrap().0, vec![r(53, 53, TCP | UDP)]);
    }

    #[test]
    fn hosts_use_resolved_addresses_and_mapped_is_ipv4() {
        let p =
            policy("  - host: api.model.test\n    ports: [443]\n  - ip: \"::ffff:198.51.100.9\"\n");
        let host: Host = "api.model.test".parse().unwrap();
        let resolved = HashMap::from([(
            host,
            vec![
                "198.51.100.7".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
        )]);
        let c = compile(&p, &resolved).unwrap();
        assert_eq!(c.v4.len(), 2);
        assert_eq!(c.v6.len(), 1);
        assert!(c
            .v4
            .contains_key(&(u32::from(std::net::Ipv4Addr::new(198, 51, 100, 9)), 32)));
        assert_eq!(
            c.v4[&(u32::from(std::net::Ipv4Addr::new(198, 51, 100, 9)), 32)].0,
            vec![r(1, 65535, TCP)]
        );
        // unresolved: nothing, never everything
        assert_eq!(compile(&p, &HashMap::new()).unwrap().len(), 1);
    }

    #[test]
    fn too_many_ranges_is_an_error() {
        let ports: Vec<String> = (1..=17).map(|i| (i * 10).to_string()).collect();
        let p = policy(&format!(
            "  - ip: 198.51.100.1\n    ports: [{}]\n",
            ports.join(", ")
        ));
        assert!(matches!(
            compile(&p, &HashMap::new()),
            Err(CompileError::TooManyPortRanges { count: 17, .. })
        ));
    }
}
