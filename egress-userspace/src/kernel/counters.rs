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
    static LOWER: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        reason::NAMES
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect()
    });
    LOWER.get(usize::from(r)).map_or("unknown", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason has a name of its own, which is its constant's.
    #[test]
    fn each_reason_is_named_once_as_its_constant() {
        let names: Vec<&str> = (0..reason::COUNT as u8).map(reason_name).collect();
        assert!(names.iter().all(|n| !n.is_empty()), "{names:?}");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(
            reason_name(reason::DESTINATION_NOT_ALLOWED),
            "destination_not_allowed"
        );
        assert_eq!(
            reason_name(reason::NAME_NOT_AT_ADDRESS),
            "name_not_at_address"
        );
        assert_eq!(reason_name(reason::COUNT as u8), "unknown");
    }
}
