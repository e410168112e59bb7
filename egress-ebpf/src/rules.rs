//! What goes out through each allow rule, and its upload budget. The
//! allowlist lookup finds the rule a peer is allowed by (the slot in the
//! port range that holds its port): at connect for the connection count,
//! and for each packet that carries payload, both ways, for the bytes.
//! Nothing is kept per socket, so nothing can be pushed out or outlive
//! it: every byte counts to the rule that allows where it goes. Bytes are
//! payload bytes (what the peer's application reads).
//!
//! A budget is charged by each packet as it leaves: a packet that would
//! take the rule past its budget is dropped (TCP sends it again later, and
//! it is dropped again until the window turns), and while the budget is
//! spent, new connections and datagrams to the rule's destinations are
//! refused. So no more than the budget leaves in a window, give or take
//! what CPUs charging the same rule at the same instant add.

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::{BUDGETS, BUDGET_STATE, RULE_STATS};

/// Adds `v` to `*p` atomically, the result unused (BPF's plain atomic add).
///
/// # Safety
/// `p` points at a live, aligned u64.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    // SAFETY: as the caller promises.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// As above, where the crate is only checked (clippy on the host).
///
/// # Safety
/// `p` points at a live, aligned u64.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    use core::sync::atomic::{AtomicU64, Ordering};
    // SAFETY: as the caller promises.
    unsafe { AtomicU64::from_ptr(p).fetch_add(v, Ordering::Relaxed) };
}

/// This CPU's counters of rule `slot`.
#[inline(always)]
fn stats(slot: u32) -> Option<*mut egress_common::RuleStats> {
    if slot == 0 {
        return None;
    }
    RULE_STATS.get_ptr_mut(slot)
}

/// A TCP connection allowed by rule `slot`.
#[inline(always)]
pub fn connection(slot: u32) {
    if let Some(s) = stats(slot) {
        // SAFETY: a per-CPU slot, touched only by this CPU while this program runs.
        unsafe { (*s).connections += 1 };
    }
}

/// Whether rule `slot`'s budget is spent for the current window: new
/// connections and datagrams are refused.
#[inline(always)]
pub fn spent(slot: u32) -> bool {
    matches!(window(slot), Some((state, bytes)) if unsafe { (*state).spent } >= bytes)
}

/// Rule `slot`'s budget window (a new one begins when the last has run
/// out), and its bytes; None for a rule without a budget.
#[inline(always)]
fn window(slot: u32) -> Option<(*mut egress_common::BudgetState, u64)> {
    if slot == 0 {
        return None;
    }
    let budget = BUDGETS.get(slot)?;
    if budget.bytes == 0 {
        return None;
    }
    let state = BUDGET_STATE.get_ptr_mut(slot)?;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `state` points at the map's value; its fields are u64, read
    // and written whole (CPUs racing at a window's turn lose at most the
    // bytes charged in that instant).
    unsafe {
        if now.wrapping_sub((*state).start_ns) >= budget.window_ns {
            (*state).start_ns = now;
            (*state).spent = 0;
        }
    }
    Some((state, budget.bytes))
}

/// Charges `bytes` of payload leaving through rule `slot` (a `datagram`,
/// or part of a TCP stream): false when they would take the rule past its
/// budget (then it is counted as over budget, and the budget is spent for
/// the rest of the window: what is left is less than one packet). A packet
/// without payload (an ACK) always passes.
#[inline(always)]
pub fn charge(slot: u32, bytes: u64, datagram: bool) -> bool {
    let Some(s) = stats(slot) else {
        return true;
    };
    if bytes > 0 {
        if let Some((state, budget)) = window(slot) {
            // SAFETY: `state` points at the map's value (see `window`).
            let spent = unsafe { core::ptr::addr_of_mut!((*state).spent) };
            // SAFETY: as above.
            if unsafe { *spent } + bytes > budget {
                // SAFETY: a per-CPU slot, touched only by this CPU; and
                // `spent` as above. What is left is less than this packet:
                // the budget is spent, new connections are refused.
                unsafe {
                    (*s).over_budget += 1;
                    *spent = budget;
                }
                return false;
            }
            // SAFETY: `spent` is a u64 in the map's value; the add is
            // atomic and its result unused (the plain atomic add that
            // every kernel takes, not the fetching kind of Linux 5.12;
            // the BPF target has no `AtomicU64::fetch_add`).
            unsafe { atomic_add(spent, bytes) };
        }
    }
    // SAFETY: a per-CPU slot, touched only by this CPU.
    unsafe {
        (*s).bytes_out += bytes;
        if datagram {
            (*s).datagrams += 1;
        }
    }
    true
}

/// Counts a connection to rule `slot`'s addresses refused for its name.
#[inline(always)]
pub fn name_refused(slot: u32) {
    if let Some(s) = stats(slot) {
        // SAFETY: a per-CPU slot, touched only by this CPU.
        unsafe { (*s).names_refused += 1 };
    }
}

/// Counts a refusal because rule `slot`'s budget is spent.
#[inline(always)]
pub fn over_budget(slot: u32) {
    if let Some(s) = stats(slot) {
        // SAFETY: a per-CPU slot, touched only by this CPU.
        unsafe { (*s).over_budget += 1 };
    }
}

/// `bytes` of payload received on a socket rule `slot` allowed.
#[inline(always)]
pub fn received(slot: u32, bytes: u64) {
    if let Some(s) = stats(slot) {
        // SAFETY: a per-CPU slot, touched only by this CPU.
        unsafe { (*s).bytes_in += bytes };
    }
}
