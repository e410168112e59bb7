//! The per-rule maps (see `egress_common::rules`): reading what went
//! through a rule slot, starting a slot afresh, writing its budget.

use anyhow::{Context, Result};
use aya::maps::PerCpuValues;
use egress_common::{Budget, BudgetState, RuleStats};

use super::Maps;

/// What went through rule `slot`, summed over CPUs.
pub fn stats(maps: &Maps, slot: u16) -> Result<RuleStats> {
    let per_cpu = maps
        .rule_stats
        .get(&u32::from(slot), 0)
        .with_context(|| format!("reading the counters of rule slot {slot}"))?;
    Ok(per_cpu.iter().fold(RuleStats::default(), |mut a, s| {
        a.connections += s.connections;
        a.datagrams += s.datagrams;
        a.bytes_out += s.bytes_out;
        a.bytes_in += s.bytes_in;
        a.over_budget += s.over_budget;
        a.names_refused += s.names_refused;
        a
    }))
}

/// Zeroes rule `slot`'s counters and budget window, before a rule takes it.
pub fn reset(maps: &mut Maps, slot: u16) -> Result<()> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting CPUs")?;
    let zeros =
        PerCpuValues::try_from(vec![RuleStats::default(); cpus]).context("per-CPU zeros")?;
    maps.rule_stats
        .set(u32::from(slot), zeros, 0)
        .with_context(|| format!("zeroing rule slot {slot}"))?;
    maps.budget_state
        .set(u32::from(slot), BudgetState::default(), 0)
        .with_context(|| format!("zeroing the budget of rule slot {slot}"))
}

/// Writes rule `slot`'s upload budget (`None`: none). Its window goes on.
pub fn set_budget(
    maps: &mut Maps,
    slot: u16,
    budget: Option<crate::policy::budget::Budget>,
) -> Result<()> {
    let value = budget.map_or(Budget::default(), |b| Budget {
        bytes: b.bytes,
        window_ns: u64::try_from(b.window.as_nanos()).unwrap_or(u64::MAX),
    });
    maps.budgets
        .set(u32::from(slot), value, 0)
        .with_context(|| format!("writing the budget of rule slot {slot}"))
}
