//! The ports that the rules allowing one prefix add up to, as the kernel
//! reads them: TCP and UDP ranges sorted and merged, at most
//! `MAX_PORT_RANGES` of them, one spec shared by every entry that has the
//! same rules.

use std::collections::HashMap;

use egress_common::{PortRange as KernelRange, MAX_PORT_RANGES, PROTO_BIT_TCP, PROTO_BIT_UDP};

use super::{CompileError, Compiled, Entry, PortSpec};
use crate::policy::{Policy, PortRange, Protocol};

/// One range before normalising: the order of its rule group in the policy
/// (the kernel takes the first range that holds a port, so a port two
/// rules allow counts to the rule written first), the rule's slot (0: not
/// counted), the ports, and its flags (`RANGE_NAMED`).
type Range = (u32, u16, u16, u16, u8);

/// TCP and UDP ranges of a set of rules, before normalising.
#[derive(Default, Clone)]
pub(super) struct Ports {
    tcp: Vec<Range>,
    udp: Vec<Range>,
}

impl Ports {
    pub(super) fn add(
        &mut self,
        protocol: Protocol,
        ranges: &[PortRange],
        slot: u16,
        order: u32,
        flags: u8,
    ) {
        for r in ranges {
            if matches!(protocol, Protocol::Tcp | Protocol::Any) {
                self.tcp.push((order, slot, r.lo, r.hi, flags));
            }
            if matches!(protocol, Protocol::Udp | Protocol::Any) {
                self.udp.push((order, slot, r.lo, r.hi, flags));
            }
        }
    }
}

/// Sorts and merges overlapping or adjacent ranges of the same rule group.
fn merged(mut v: Vec<Range>) -> Vec<Range> {
    v.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for (order, slot, lo, hi, flags) in v {
        match out.last_mut() {
            Some(last)
                if last.0 == order && last.4 == flags && u32::from(lo) <= u32::from(last.3) + 1 =>
            {
                last.3 = last.3.max(hi)
            }
            _ => out.push((order, slot, lo, hi, flags)),
        }
    }
    out
}

fn kernel_ranges(ranges: &[Range], protos: u8) -> impl Iterator<Item = KernelRange> + '_ {
    ranges
        .iter()
        .map(move |&(_, rule, lo, hi, flags)| KernelRange {
            lo,
            hi,
            protos,
            flags,
            rule,
        })
}

fn spec(ports: Ports) -> PortSpec {
    let tcp = merged(ports.tcp);
    let udp = merged(ports.udp);
    let mut out: Vec<KernelRange> = if tcp == udp {
        kernel_ranges(&tcp, PROTO_BIT_TCP | PROTO_BIT_UDP).collect()
    } else {
        kernel_ranges(&tcp, PROTO_BIT_TCP)
            .chain(kernel_ranges(&udp, PROTO_BIT_UDP))
            .collect()
    };
    // The same ports of two rules: the kernel counts them to the first.
    // (Not when one checks names and the other does not: the kernel takes
    // the one that does not.)
    let mut seen = std::collections::HashSet::new();
    out.retain(|r| seen.insert((r.lo, r.hi, r.protos, r.flags)));
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
        ports.add(l.protocol, &l.ports, 0, 0, 0);
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

/// The rule groups (see `plan`) that allow one prefix, sorted; almost
/// always one, stored without an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Rules {
    One(u32),
    Many(Vec<u32>),
}

impl Rules {
    pub(super) fn slice(&self) -> &[u32] {
        match self {
            Rules::One(i) => std::slice::from_ref(i),
            Rules::Many(v) => v,
        }
    }

    pub(super) fn with(&self, more: &[u32]) -> Rules {
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

/// Rules that allow the same thing and count to the same slot: protocol,
/// ports, rule slot (0: not counted; uncounted rules with the same ports
/// share one group, however many there are), and the flags of their
/// ranges (`RANGE_NAMED` for a host rule that checks names).
pub(super) type Group = (Protocol, Vec<PortRange>, u16, u8);

/// One port set per distinct set of rule groups, shared by its entries.
pub(super) struct Specs<'a> {
    policy: &'a str,
    groups: &'a [Group],
    ids: HashMap<Rules, u32>,
    /// The groups behind each spec.
    pub(super) sets: Vec<Rules>,
    /// The last answer: neighbouring entries mostly share their groups.
    last: Option<(Rules, u32)>,
}

impl<'a> Specs<'a> {
    pub(super) fn new(policy: &'a str, groups: &'a [Group]) -> Specs<'a> {
        Specs {
            policy,
            groups,
            ids: HashMap::new(),
            sets: Vec::new(),
            last: None,
        }
    }

    /// The entries, each with the index of its ports in the specs made.
    pub(super) fn entries(
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

    pub(super) fn of(
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
                    let (protocol, ranges, slot, flags) = &self.groups[i as usize];
                    // Uncounted groups merge with each other, as before
                    // there were slots, and come after the counted ones.
                    let order = if *slot == 0 {
                        u32::MAX - u32::from(*flags)
                    } else {
                        i
                    };
                    ports.add(*protocol, ranges, *slot, order, *flags);
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
