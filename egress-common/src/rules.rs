//! `RULE_STATS`, `BUDGETS` and `BUDGET_STATE`: what went out (and came
//! back) through each allow rule, and the upload budgets some rules carry.
//! A rule is known to the kernel by its slot, carried in the port ranges it
//! allows ([`crate::PortRange::rule`]): the allowlist lookup of a packet's
//! peer finds it. Slot 0 is no rule (not counted). Userspace gives each
//! policy's rules their slots.

/// `PerCpuArray<RuleStats>` indexed by rule slot.
pub const RULE_STATS: &str = "RULE_STATS";
/// `Array<Budget>` indexed by rule slot: written by userspace.
pub const BUDGETS: &str = "BUDGETS";
/// `Array<BudgetState>` indexed by rule slot: written by the programs.
pub const BUDGET_STATE: &str = "BUDGET_STATE";

/// Rule slots over all policies of one daemon (slot 0 is none).
pub const MAX_RULE_SLOTS: u32 = 4096;

/// What went through one rule, per CPU (userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// TCP connections allowed (connect calls).
    pub connections: u64,
    /// UDP datagrams sent.
    pub datagrams: u64,
    /// Payload bytes sent (TCP and UDP, without headers).
    pub bytes_out: u64,
    /// Payload bytes received from the rule's destinations.
    pub bytes_in: u64,
    /// Connections, datagrams and packets refused because the rule's
    /// upload budget was spent.
    pub over_budget: u64,
    /// Connections to the rule's addresses refused for the name they
    /// presented (or for presenting none; see `crate::names`).
    pub names_refused: u64,
}

/// An upload budget: at most `bytes` of payload per `window_ns`. `bytes`
/// 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub window_ns: u64,
}

/// Where a budget's window stands: when it began (`bpf_ktime_get_ns`) and
/// the bytes spent in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetState {
    pub start_ns: u64,
    pub spent: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, u64 fields only (no padding), any bits valid.
    unsafe impl aya::Pod for super::RuleStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Budget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BudgetState {}
}

const _: () = assert!(core::mem::size_of::<RuleStats>() == 48);
const _: () = assert!(core::mem::size_of::<Budget>() == 16);
const _: () = assert!(core::mem::size_of::<BudgetState>() == 16);
const _: () = assert!(MAX_RULE_SLOTS <= u16::MAX as u32 + 1);
