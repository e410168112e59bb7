//! Compiling a policy (and the addresses its hostnames resolved to) into
//! allow-trie entries: prefix -> the port ranges allowed there.
//!
//! The kernel does one longest-prefix lookup, so each entry must carry the
//! ports of every shorter prefix that covers it as well as its own: a /24
//! allowing port 80 and a /32 inside it allowing 443 give the /32 both.

use std::{collections::HashMap, net::IpAddr};

use egress_common::{PortRange as KernelRange, MAX_PORT_RANGES, PROTO_BIT_TCP, PROTO_BIT_UDP};
use ipnet::IpNet;

use crate::policy::{file::PolicyError, unmap, Destination, Host, Policy, PortRange, Protocol};

/// The ports one prefix allows, normalised (sorted, merged), ready for the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec(pub Vec<KernelRange>);

/// One allow-trie entry: a prefix (address bits in host order, and length)
/// and the index of its ports in `Compiled::specs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry<A> {
    pub addr: A,
    pub len: u8,
    pub spec: u32,
}

/// What a policy compiles to: entries sorted by prefix, each prefix once.
/// Entries with the same ports share one spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub v4: Vec<Entry<u32>>,
    pub v6: Vec<Entry<u128>>,
    pub specs: Vec<PortSpec>,
}

impl Compiled {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The ports of the IPv4 prefix `addr/len`, if it is an entry.
    pub fn ports_v4(&self, addr: u32, len: u8) -> Option<&PortSpec> {
        find(&self.v4, addr, len).map(|e| &self.specs[e.spec as usize])
    }
}

fn find<A: Ord + Copy>(v: &[Entry<A>], addr: A, len: u8) -> Option<&Entry<A>> {
    v.binary_search_by(|e| (e.addr, e.len).cmp(&(addr, len)))
        .ok()
        .map(|i| &v[i])
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

/// The ports a policy's `listen` rules allow, ready for the kernel; `None`
/// when it has none.
pub fn listen_spec(policy: &Policy) -> Result<Option<PortSpec>, CompileError> {
    if policy.listen.is_empty() {
        return Ok(None);
    }
    let mut ports = Ports::default();
    for l in &policy.listen {
        ports.add(l.protocol, &l.ports);
    }
    let spec = spec(ports);
    if spec.0.len() > MAX_PORT_RANGES {
        return Err(CompileError::TooManyPortRanges {
            policy: policy.name.clone(),
            prefix: "listen".into(),
            count: spec.0.len(),
            max: MAX_PORT_RANGES,
        });
    }
    Ok(Some(spec))
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

/// Merges the (prefix, rule group) pairs into one entry per prefix, and
/// gives each entry the groups of every shorter prefix that covers it.
/// Sorted by address then length, a prefix comes before every prefix it
/// covers, and the prefixes covering the current one are a chain on the
/// stack (a prefix popped covers nothing that comes later).
fn merge_and_push_down<A: Copy + Ord>(
    mut pairs: Vec<(A, u8, u32)>,
    mask: impl Fn(A, u8) -> A,
) -> Vec<(A, u8, Rules)> {
    pairs.sort_unstable();
    let mut out: Vec<(A, u8, Rules)> = Vec::with_capacity(pairs.len());
    let mut stack: Vec<usize> = Vec::new();
    for (addr, len, group) in pairs {
        if let Some(last) = out.last_mut() {
            if (last.0, last.1) == (addr, len) {
                // The same prefix from another rule.
                if !last.2.slice().contains(&group) {
                    last.2 = last.2.with(&[group]);
                }
                continue;
            }
        }
        while let Some(&top) = stack.last() {
            let (a, l, _) = &out[top];
            if *l <= len && mask(addr, *l) == *a {
                break;
            }
            stack.pop();
        }
        let rules = match stack.last() {
            Some(&cover) if out[cover].2 != Rules::One(group) => out[cover].2.with(&[group]),
            _ => Rules::One(group),
        };
        stack.push(out.len());
        out.push((addr, len, rules));
    }
    out
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

/// Compiles `policy`, with `resolved` giving the current addresses of its
/// hostnames: every entry, as one list.
pub fn compile(
    policy: &Policy,
    resolved: &HashMap<Host, Vec<IpAddr>>,
) -> Result<Compiled, CompileError> {
    Plan::new(policy)?.compile(resolved)
}

/// A policy's prefix rules, compiled once (they change only on reload);
/// `learned` compiles its hostnames' current addresses against them, in
/// time that grows with the addresses, not with the prefixes: a DNS answer
/// under a policy of a million prefixes does not compile them again.
pub struct Plan {
    name: String,
    /// Rules are grouped by what they allow (protocol and ports): entries
    /// carry group ids, so that a million rules with the same ports share one.
    groups: Vec<(Protocol, Vec<PortRange>)>,
    /// Each host rule, with its group.
    hosts: Vec<(Host, u32)>,
    /// The prefix rules' entries.
    pub prefixes: Compiled,
    /// The groups behind each spec of `prefixes` (same index).
    sets: Vec<Rules>,
    /// The `UNIX_ALLOW` entries of `channels.unix` (and the name-service
    /// sockets it refuses quietly).
    pub unix: Vec<crate::policy::unix::UnixEntry>,
    /// The prefix lengths present, longest first.
    lengths4: Vec<u8>,
    lengths6: Vec<u8>,
}

impl Plan {
    pub fn new(policy: &Policy) -> Result<Plan, CompileError> {
        let mut groups: Vec<(Protocol, Vec<PortRange>)> = Vec::new();
        let mut group_ids: HashMap<(Protocol, Vec<PortRange>), u32> = HashMap::new();
        let mut hosts = Vec::new();
        let mut v4: Vec<(u32, u8, u32)> = Vec::new();
        let mut v6: Vec<(u128, u8, u32)> = Vec::new();
        for rule in &policy.rules {
            let sig = (rule.protocol, rule.port_ranges());
            let i = *group_ids.entry(sig.clone()).or_insert_with(|| {
                groups.push(sig);
                groups.len() as u32 - 1
            });
            if let Destination::List(list) = &rule.dest {
                match list.nets.first() {
                    Some(IpNet::V4(_)) => v4.reserve(list.nets.len()),
                    Some(IpNet::V6(_)) => v6.reserve(list.nets.len()),
                    None => {}
                }
            }
            let mut add = |net: IpNet| match unmap(net) {
                IpNet::V4(n) => v4.push((u32::from(n.network()), n.prefix_len(), i)),
                IpNet::V6(n) => v6.push((u128::from(n.network()), n.prefix_len(), i)),
            };
            match &rule.dest {
                Destination::Net(n) => add(n.0),
                Destination::List(list) => list.nets.iter().for_each(|n| add(*n)),
                Destination::Host(h) => hosts.push((h.clone(), i)),
            }
        }
        let v4 = merge_and_push_down(v4, mask4);
        let v6 = merge_and_push_down(v6, mask6);
        let mut specs = Specs::new(&policy.name, &groups);
        let prefixes = specs.entries(v4, v6)?;
        // A host rule's own ports must fit one entry (with those of the
        // prefixes that will cover its addresses, only known when answered).
        for (host, group) in &hosts {
            let prefix = || host.to_string();
            Specs::new(&policy.name, &groups).of(Rules::One(*group), &mut Vec::new(), &prefix)?;
        }
        let lengths = |l: &mut dyn Iterator<Item = u8>| {
            let set: std::collections::BTreeSet<u8> = l.collect();
            set.into_iter().rev().collect::<Vec<u8>>()
        };
        Ok(Plan {
            name: policy.name.clone(),
            lengths4: lengths(&mut prefixes.v4.iter().map(|e| e.len)),
            lengths6: lengths(&mut prefixes.v6.iter().map(|e| e.len)),
            sets: specs.sets,
            unix: crate::policy::unix::entries(&policy.channels.unix),
            groups,
            hosts,
            prefixes,
        })
    }

    /// Entries for the addresses `resolved` gives the hostnames: each with
    /// the ports of its host rules and of the prefix rules covering it. An
    /// address that is also a prefix entry replaces that entry.
    pub fn learned(&self, resolved: &HashMap<Host, Vec<IpAddr>>) -> Result<Compiled, CompileError> {
        let (mut l4, mut l6) = (Vec::new(), Vec::new());
        for (host, group) in &self.hosts {
            for ip in resolved.get(host).into_iter().flatten() {
                match unmap(IpNet::from(*ip)) {
                    IpNet::V4(n) => l4.push((u32::from(n.network()), n.prefix_len(), *group)),
                    IpNet::V6(n) => l6.push((u128::from(n.network()), n.prefix_len(), *group)),
                }
            }
        }
        let cover4 = |a, l| self.cover(&self.prefixes.v4, &self.lengths4, mask4, a, l);
        let cover6 = |a, l| self.cover(&self.prefixes.v6, &self.lengths6, mask6, a, l);
        let l4 = covered(learned(l4), cover4);
        let l6 = covered(learned(l6), cover6);
        Specs::new(&self.name, &self.groups).entries(l4, l6)
    }

    /// The groups of the longest prefix entry covering `addr/len` (its own
    /// prefix included), which holds those of every shorter one.
    fn cover<A: Copy + Ord>(
        &self,
        prefixes: &[Entry<A>],
        lengths: &[u8],
        mask: fn(A, u8) -> A,
        addr: A,
        len: u8,
    ) -> Option<&Rules> {
        lengths
            .iter()
            .filter(|l| **l <= len)
            .find_map(|&l| find(prefixes, mask(addr, l), l).map(|e| &self.sets[e.spec as usize]))
    }

    /// Every entry: the prefix entries with the learned ones merged in.
    pub fn compile(&self, resolved: &HashMap<Host, Vec<IpAddr>>) -> Result<Compiled, CompileError> {
        let learned = self.learned(resolved)?;
        let base = self.prefixes.specs.len() as u32;
        let mut specs = self.prefixes.specs.clone();
        specs.extend(learned.specs.iter().cloned());
        Ok(Compiled {
            v4: in_order(&self.prefixes.v4, &shifted(&learned.v4, base)),
            v6: in_order(&self.prefixes.v6, &shifted(&learned.v6, base)),
            specs,
        })
    }
}

fn shifted<A: Copy>(v: &[Entry<A>], by: u32) -> Vec<Entry<A>> {
    v.iter()
        .map(|e| Entry {
            spec: e.spec + by,
            ..*e
        })
        .collect()
}

/// `prefixes` and `learned` merged in prefix order; on the same prefix,
/// the learned entry.
fn in_order<A: Copy + Ord>(prefixes: &[Entry<A>], learned: &[Entry<A>]) -> Vec<Entry<A>> {
    let mut out: Vec<Entry<A>> = learned.to_vec();
    out.extend(
        prefixes
            .iter()
            .filter(|p| find(learned, p.addr, p.len).is_none()),
    );
    out.sort_unstable_by_key(|e| (e.addr, e.len));
    out
}

/// Learned host addresses as entries, one per address with all its groups.
fn learned<A: Copy + Ord>(mut pairs: Vec<(A, u8, u32)>) -> Vec<(A, u8, Rules)> {
    pairs.sort_unstable();
    pairs.dedup();
    let mut out: Vec<(A, u8, Rules)> = Vec::with_capacity(pairs.len());
    for (addr, len, group) in pairs {
        match out.last_mut() {
            Some(last) if (last.0, last.1) == (addr, len) => last.2 = last.2.with(&[group]),
            _ => out.push((addr, len, Rules::One(group))),
        }
    }
    out
}

/// Gives each learned entry the groups `cover` finds for it (learned
/// entries are whole addresses: they cover no prefix entry).
fn covered<'a, A: Copy + Ord>(
    mut learned: Vec<(A, u8, Rules)>,
    cover: impl Fn(A, u8) -> Option<&'a Rules>,
) -> Vec<(A, u8, Rules)> {
    for (addr, len, rules) in &mut learned {
        if let Some(c) = cover(*addr, *len) {
            *rules = rules.with(c.slice());
        }
    }
    learned
}

/// One port set per distinct set of rule groups, shared by its entries.
struct Specs<'a> {
    policy: &'a str,
    groups: &'a [(Protocol, Vec<PortRange>)],
    ids: HashMap<Rules, u32>,
    /// The groups behind each spec.
    sets: Vec<Rules>,
    /// The last answer: neighbouring entries mostly share their groups.
    last: Option<(Rules, u32)>,
}

impl<'a> Specs<'a> {
    fn new(policy: &'a str, groups: &'a [(Protocol, Vec<PortRange>)]) -> Specs<'a> {
        Specs {
            policy,
            groups,
            ids: HashMap::new(),
            sets: Vec::new(),
            last: None,
        }
    }

    /// The entries, each with the index of its ports in the specs made.
    fn entries(
        &mut self,
        v4: Vec<(u32, u8, Rules)>,
        v6: Vec<(u128, u8, Rules)>,
    ) -> Result<Compiled, CompileError> {
        let mut out = Compiled::default();
        out.v4.reserve_exact(v4.len());
        for (addr, len, r) in v4 {
            let prefix = || format!("{}/{len}", std::net::Ipv4Addr::from(addr));
            let spec = self.of(r, &mut out.specs, &prefix)?;
            out.v4.push(Entry { addr, len, spec });
        }
        out.v6.reserve_exact(v6.len());
        for (addr, len, r) in v6 {
            let prefix = || format!("{}/{len}", std::net::Ipv6Addr::from(addr));
            let spec = self.of(r, &mut out.specs, &prefix)?;
            out.v6.push(Entry { addr, len, spec });
        }
        Ok(out)
    }

    fn of(
        &mut self,
        rules: Rules,
        specs: &mut Vec<PortSpec>,
        prefix: &dyn Fn() -> String,
    ) -> Result<u32, CompileError> {
        if let Some((r, s)) = &self.last {
            if *r == rules {
                return Ok(*s);
            }
        }
        let s = match self.ids.get(&rules) {
            Some(s) => *s,
            None => {
                let mut ports = Ports::default();
                for &i in rules.slice() {
                    let (protocol, ranges) = &self.groups[i as usize];
                    ports.add(*protocol, ranges);
                }
                let spec = spec(ports);
                if spec.0.len() > MAX_PORT_RANGES {
                    return Err(CompileError::TooManyPortRanges {
                        policy: self.policy.to_string(),
                        prefix: prefix(),
                        count: spec.0.len(),
                        max: MAX_PORT_RANGES,
                    });
                }
                specs.push(spec);
                self.sets.push(rules.clone());
                let s = specs.len() as u32 - 1;
                self.ids.insert(rules.clone(), s);
                s
            }
        };
        self.last = Some((rules, s));
        Ok(s)
    }
}

/// Compiles `policy` with no hostname resolved, to find what only
/// compilation can (too many port ranges on one prefix), so that what
/// `check` accepts will load. The error names the policy's file.
pub fn check_compiles(policy: &Policy) -> Result<(), PolicyError> {
    Plan::new(policy).map(drop).map_err(|e| PolicyError {
        file: policy.source.clone().into(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })
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
        assert_eq!(
            c.ports_v4(a, 32).unwrap().0,
            vec![r(80, 80, TCP), r(443, 443, TCP)]
        );
        assert_eq!(
            c.ports_v4(a & 0xffff_ff00, 24).unwrap().0,
            vec![r(80, 80, TCP)]
        );
    }

    #[test]
    fn ranges_merge_and_protocols_split() {
        let p = policy(concat!(
            "  - cidr: 198.51.100.0/24\n    ports: [\"1000-2000\", \"1500-3000\", 3001]\n",
            "  - cidr: 198.51.100.0/24\n    ports: [53]\n    protocol: udp\n",
        ));
        let c = compile(&p, &HashMap::new()).unwrap();
        let s = &c.specs[c.v4[0].spec as usize].0;
        assert_eq!(s, &vec![r(1000, 3001, TCP), r(53, 53, UDP)]);
        let p = policy("  - cidr: 198.51.100.0/24\n    ports: [53]\n    protocol: any\n");
        let c = compile(&p, &HashMap::new()).unwrap();
        assert_eq!(c.specs[c.v4[0].spec as usize].0, vec![r(53, 53, TCP | UDP)]);
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
        assert_eq!(
            c.ports_v4(u32::from(std::net::Ipv4Addr::new(198, 51, 100, 9)), 32)
                .unwrap()
                .0,
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
        // A host rule's too, before any address is known.
        let p = policy(&format!(
            "  - host: api.model.test\n    ports: [{}]\n",
            ports.join(", ")
        ));
        assert!(matches!(
            Plan::new(&p),
            Err(CompileError::TooManyPortRanges { count: 17, .. })
        ));
    }
}
