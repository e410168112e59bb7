//! Where a policy becomes map entries. `Plan::new` compiles the prefix
//! rules once (they change only on reload); `Plan::admitted` compiles the
//! hostnames' current addresses against them, in time that grows with the
//! addresses, not the prefixes.

use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;

use super::{
    find,
    ports::{Group, Rules, Specs},
    CompileError, Compiled, Entry, PortSpec,
};
use crate::policy::{unmap, Destination, Host, Policy};

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

/// A policy's prefix rules, compiled once (they change only on reload);
/// `admitted` compiles its hostnames' current addresses against them, in
/// time that grows with the addresses, not with the prefixes: a DNS answer
/// under a policy of a million prefixes does not compile them again.
pub struct Plan {
    name: String,
    /// Rules are grouped by what they allow (protocol and ports): entries
    /// carry group ids, so that a million rules with the same ports share one.
    groups: Vec<Group>,
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
    /// The plan of a policy whose rules are not counted.
    pub fn new(policy: &Policy) -> Result<Plan, CompileError> {
        Plan::counted(policy, &[])
    }

    /// The plan of a policy whose rule `i` counts to slot `slots[i]` (0, or
    /// past the end: not counted).
    pub fn counted(policy: &Policy, slots: &[u16]) -> Result<Plan, CompileError> {
        let mut groups: Vec<Group> = Vec::new();
        let mut group_ids: HashMap<Group, u32> = HashMap::new();
        let mut hosts = Vec::new();
        let mut v4: Vec<(u32, u8, u32)> = Vec::new();
        let mut v6: Vec<(u128, u8, u32)> = Vec::new();
        for (n, rule) in policy.rules.iter().enumerate() {
            let slot = slots.get(n).copied().unwrap_or(0);
            let flags = if rule.checks_names() {
                egress_common::RANGE_NAMED
            } else {
                0
            };
            let sig = (rule.protocol, rule.port_ranges(), slot, flags);
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
    pub fn admitted(
        &self,
        resolved: &HashMap<Host, Vec<IpAddr>>,
    ) -> Result<Compiled, CompileError> {
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
        let l4 = covered(admitted(l4), cover4);
        let l6 = covered(admitted(l6), cover6);
        Specs::new(&self.name, &self.groups).entries(l4, l6)
    }

    /// The `NAMES` entries of the policy (see `egress_common::names`):
    /// each name the policy's DNS answered with an address (`bound`: host
    /// rule, address, name), with the ports of the host rules that check
    /// names and admitted it there. Names are lower case, without a final
    /// dot; IPv4-mapped addresses are IPv4.
    pub fn bound_names(
        &self,
        bound: &[(&Host, IpAddr, &str)],
    ) -> Result<Vec<(IpAddr, String, PortSpec)>, CompileError> {
        // Several rules may name one host (one per port, say).
        let mut groups_of: HashMap<&Host, Vec<u32>> = HashMap::new();
        for (h, g) in &self.hosts {
            if self.groups[*g as usize].3 & egress_common::RANGE_NAMED != 0 {
                groups_of.entry(h).or_default().push(*g);
            }
        }
        let mut by: std::collections::BTreeMap<(IpAddr, String), Vec<u32>> = Default::default();
        for (host, ip, name) in bound {
            let Some(groups) = groups_of.get(host) else {
                continue;
            };
            let ip = unmap(IpNet::from(*ip)).addr();
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            by.entry((ip, name)).or_default().extend(groups);
        }
        let mut specs = Specs::new(&self.name, &self.groups);
        let mut made = Vec::new();
        let mut out = Vec::with_capacity(by.len());
        for ((ip, name), groups) in by {
            let rules = Rules::One(groups[0]).with(&groups);
            let i = specs.of(rules, &mut made, &|| ip.to_string())?;
            out.push((ip, name, made[i as usize].clone()));
        }
        Ok(out)
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
}

/// Admission host addresses as entries, one per address with all its groups.
fn admitted<A: Copy + Ord>(mut pairs: Vec<(A, u8, u32)>) -> Vec<(A, u8, Rules)> {
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

/// Gives each admitted entry the groups `cover` finds for it (admitted
/// entries are whole addresses: they cover no prefix entry).
fn covered<'a, A: Copy + Ord>(
    mut admitted: Vec<(A, u8, Rules)>,
    cover: impl Fn(A, u8) -> Option<&'a Rules>,
) -> Vec<(A, u8, Rules)> {
    for (addr, len, rules) in &mut admitted {
        if let Some(c) = cover(*addr, *len) {
            *rules = rules.with(c.slice());
        }
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::parse;
    use egress_common::{PortRange as KernelRange, PROTO_BIT_TCP, PROTO_BIT_UDP};
    use std::path::Path;

    fn policy(allow: &str) -> Policy {
        parse(&format!("name: t\nallow:\n{allow}"), Path::new("t.yaml")).unwrap()
    }

    fn r(lo: u16, hi: u16, protos: u8) -> KernelRange {
        KernelRange {
            lo,
            hi,
            protos,
            flags: 0,
            rule: 0,
        }
    }

    /// The ports of the IPv4 prefix `addr/len` in `c`, if it is an entry.
    fn ports_v4(c: &Compiled, addr: u32, len: u8) -> Option<&[KernelRange]> {
        find(&c.v4, addr, len).map(|e| c.specs[e.spec as usize].0.as_slice())
    }

    const TCP: u8 = PROTO_BIT_TCP;
    const UDP: u8 = PROTO_BIT_UDP;

    #[test]
    fn covering_prefix_ports_are_pushed_down() {
        let p = policy(
            "  - cidr: 203.0.113.0/24\n    ports: [80]\n  - ip: 203.0.113.5\n    ports: [443]\n",
        );
        let c = Plan::new(&p).unwrap().prefixes;
        let a = u32::from(std::net::Ipv4Addr::new(203, 0, 113, 5));
        assert_eq!(
            ports_v4(&c, a, 32).unwrap(),
            [r(80, 80, TCP), r(443, 443, TCP)]
        );
        assert_eq!(ports_v4(&c, a & 0xffff_ff00, 24).unwrap(), [r(80, 80, TCP)]);
    }

    #[test]
    fn ranges_merge_and_protocols_split() {
        let p = policy(concat!(
            "  - cidr: 198.51.100.0/24\n    ports: [\"1000-2000\", \"1500-3000\", 3001]\n",
            "  - cidr: 198.51.100.0/24\n    ports: [53]\n    protocol: udp\n",
        ));
        let c = Plan::new(&p).unwrap().prefixes;
        let s = &c.specs[c.v4[0].spec as usize].0;
        assert_eq!(s, &vec![r(1000, 3001, TCP), r(53, 53, UDP)]);
        let p = policy("  - cidr: 198.51.100.0/24\n    ports: [53]\n    protocol: any\n");
        let c = Plan::new(&p).unwrap().prefixes;
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
        let plan = Plan::new(&p).unwrap();
        let admitted = plan.admitted(&resolved).unwrap();
        assert_eq!((plan.prefixes.v4.len(), plan.prefixes.v6.len()), (1, 0));
        assert_eq!((admitted.v4.len(), admitted.v6.len()), (1, 1));
        let mapped = u32::from(std::net::Ipv4Addr::new(198, 51, 100, 9));
        assert_eq!(
            ports_v4(&plan.prefixes, mapped, 32).unwrap(),
            [r(1, 65535, TCP)]
        );
        let learned4 = u32::from(std::net::Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(
            ports_v4(&admitted, learned4, 32).unwrap(),
            [KernelRange {
                flags: egress_common::RANGE_NAMED,
                ..r(443, 443, TCP)
            }]
        );
        // unresolved: nothing, never everything
        let none = plan.admitted(&HashMap::new()).unwrap();
        assert!(none.v4.is_empty() && none.v6.is_empty());
    }

    #[test]
    fn a_port_two_rules_allow_counts_to_the_first_written() {
        let p = policy(
            "  - cidr: 203.0.113.0/24\n    ports: [443]\n  - ip: 203.0.113.5\n    ports: [443, 8443]\n",
        );
        // Slots handed out in another order than the rules' (as after a reload).
        let c = Plan::counted(&p, &[9, 3]).unwrap().prefixes;
        let a = u32::from(std::net::Ipv4Addr::new(203, 0, 113, 5));
        let ranges = ports_v4(&c, a, 32).unwrap();
        let first = ranges.iter().find(|r| r.lo <= 443 && 443 <= r.hi).unwrap();
        assert_eq!(first.rule, 9, "{ranges:?}");
        assert!(
            ranges.iter().any(|r| r.lo == 8443 && r.rule == 3),
            "{ranges:?}"
        );
    }

    #[test]
    fn a_host_rule_checks_names_unless_it_opts_out_and_an_ip_rule_is_kept_beside_it() {
        let p = policy(concat!(
            "  - host: api.model.test\n    ports: [443]\n",
            "  - host: git.model.test\n    ports: [22]\n    any_name_at_address: true\n",
            "  - ip: 198.51.100.7\n    ports: [443]\n",
            "  - host: api.model.test\n    ports: [80]\n",
        ));
        let (api, git): (Host, Host) = (
            "api.model.test".parse().unwrap(),
            "git.model.test".parse().unwrap(),
        );
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let plan = Plan::counted(&p, &[1, 2, 3, 4]).unwrap();
        let resolved = HashMap::from([(api.clone(), vec![ip]), (git.clone(), vec![ip])]);
        let admitted = plan.admitted(&resolved).unwrap();
        let a = u32::from(std::net::Ipv4Addr::new(198, 51, 100, 7));
        let ranges = ports_v4(&admitted, a, 32).unwrap();
        // The host rule's 443 (named) and the ip rule's 443 (not) both stay:
        // the kernel takes the one that is not.
        let at443: Vec<_> = ranges.iter().filter(|r| r.lo == 443).collect();
        assert_eq!(at443.len(), 2, "{ranges:?}");
        assert!(at443
            .iter()
            .any(|r| r.flags == egress_common::RANGE_NAMED && r.rule == 1));
        assert!(at443.iter().any(|r| r.flags == 0 && r.rule == 3));
        let at22: Vec<_> = ranges.iter().filter(|r| r.lo == 22).collect();
        assert_eq!((at22.len(), at22[0].flags), (1, 0), "{ranges:?}");
        // Only the host rule that checks names binds its names.
        let bound = plan
            .bound_names(&[(&api, ip, "API.model.test."), (&git, ip, "git.model.test")])
            .unwrap();
        assert_eq!(bound.len(), 1, "{bound:?}");
        assert_eq!((bound[0].0, bound[0].1.as_str()), (ip, "api.model.test"));
        // Both rules that name the host, each with its port and slot.
        let ports: Vec<(u16, u16)> = bound[0].2 .0.iter().map(|r| (r.lo, r.rule)).collect();
        assert_eq!(ports, [(443, 1), (80, 4)]);
    }

    #[test]
    fn too_many_ranges_is_an_error() {
        let ports: Vec<String> = (1..=17).map(|i| (i * 10).to_string()).collect();
        let p = policy(&format!(
            "  - ip: 198.51.100.1\n    ports: [{}]\n",
            ports.join(", ")
        ));
        assert!(matches!(
            Plan::new(&p),
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
