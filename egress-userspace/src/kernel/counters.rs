//! Reading the per-CPU counters the programs keep.

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use egress_common::{counter_index, lost_index, proto_class, reason, verdict};

/// One counter: what it counts and its value summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub verdict: u8,
    pub proto: u8,
    pub reason: u8,
    pub value: u64,
}

/// A policy's counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Non-zero counters only.
    pub counts: Vec<Count>,
    /// Events the ring buffer had no room for.
    pub lost: u64,
}

impl PolicyCounts {
    /// Sum over the counters matching a verdict.
    pub fn total(&self, v: u8) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.verdict == v)
            .map(|c| c.value)
            .sum()
    }
}

fn sum(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64> {
    Ok(map
        .get(&index, 0)
        .with_context(|| format!("reading counter {index}"))?
        .iter()
        .sum())
}

/// Reads the counters of policy `policy` (0: attempts no policy governed).
pub fn read(map: &PerCpuArray<MapData, u64>, policy: u32) -> Result<PolicyCounts> {
    let mut out = PolicyCounts {
        lost: sum(map, lost_index(policy))?,
        ..Default::default()
    };
    for v in 0..verdict::COUNT as u8 {
        for p in 0..proto_class::COUNT as u8 {
            for r in 0..reason::COUNT as u8 {
                let value = sum(map, counter_index(policy, v, p, r))?;
                if value > 0 {
                    out.counts.push(Count {
                        verdict: v,
                        proto: p,
                        reason: r,
                        value,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Label values for the counters.
pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::ALLOWED => "allowed",
        verdict::DENIED => "denied",
        verdict::AUDITED => "audited",
        _ => "unknown",
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        proto_class::TCP => "tcp",
        proto_class::UDP => "udp",
        _ => "other",
    }
}

pub fn reason_name(r: u8) -> &'static str {
    match r {
        reason::NONE => "none",
        reason::NO_RULE => "destination_not_allowed",
        reason::PORT => "port_not_allowed",
        reason::PROTOCOL => "protocol_not_allowed",
        reason::NO_POLICY => "no_policy",
        reason::NO_DEST => "no_destination",
        reason::SOCKET => "socket_not_allowed",
        reason::IP_OPTIONS => "ip_options",
        reason::PACKET => "packet_destination_not_allowed",
        reason::OTHER_NETNS_LOOPBACK => "loopback_of_another_netns",
        reason::LISTEN => "listen_not_allowed",
        reason::UNIX => "unix_not_allowed",
        reason::NAME_SERVICE => "name_service_socket",
        reason::BUDGET => "budget_spent",
        reason::NAME => "name_not_at_address",
        _ => "unknown",
    }
}
