//! Who is asking, and which policy governs them: the caller's cgroup (or
//! the socket's, for a packet) looked up in `CGROUP_POLICY`, walking up to
//! its deepest governed ancestor, and that policy's live table and mode.
//! Used by the verdict and by the DNS redirect.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
};
use egress_common::{MAX_CGROUP_DEPTH, MODE_AUDIT, POLICY_RELEASED};

use crate::maps::{CGROUP_POLICY, POLICIES};

/// Who is being judged: the calling task (socket calls), or the socket a
/// packet belongs to (the egress backstop, which may run in softirq context).
#[derive(Clone, Copy)]
pub enum Caller {
    Task,
    /// The calling task, by its own cgroup only: for program types that
    /// cannot call `bpf_get_current_ancestor_cgroup_id` on older kernels
    /// (setsockopt on Linux 5.10, which has no pid or comm helpers there
    /// either: its events carry the uid only). A process in a sub-cgroup
    /// of a governed one then finds no policy, and is refused as
    /// `NO_POLICY`.
    TaskOwnCgroup,
    Packet(*mut __sk_buff),
}

impl Caller {
    #[inline(always)]
    pub fn cgroup_id(self) -> u64 {
        // SAFETY: helper calls; the skb pointer is the program's context.
        unsafe {
            match self {
                Caller::Task | Caller::TaskOwnCgroup => bpf_get_current_cgroup_id(),
                Caller::Packet(skb) => bpf_skb_cgroup_id(skb),
            }
        }
    }

    #[inline(always)]
    fn ancestor_cgroup_id(self, level: i32) -> u64 {
        // SAFETY: as above.
        unsafe {
            match self {
                Caller::Task => bpf_get_current_ancestor_cgroup_id(level),
                // Ends the walk at once.
                Caller::TaskOwnCgroup => 0,
                Caller::Packet(skb) => bpf_skb_ancestor_cgroup_id(skb, level),
            }
        }
    }
}

/// The policy governing the caller: its own cgroup's, else that of its
/// deepest governed ancestor; 0 if none.
#[inline(always)]
fn find_policy(caller: Caller) -> u32 {
    let own = caller.cgroup_id();
    // SAFETY: the map value is a plain u32 owned by the map.
    if let Some(p) = unsafe { CGROUP_POLICY.get(own) } {
        return *p;
    }
    let mut found = 0;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        let id = caller.ancestor_cgroup_id(level);
        if id == 0 || id == own {
            break;
        }
        // SAFETY: as above.
        if let Some(p) = unsafe { CGROUP_POLICY.get(id) } {
            found = *p;
        }
        level += 1;
    }
    found
}

/// Whether policy id `policy` (as `governing` returned it) says that the
/// caller's cgroup was released: then the hook lets everything pass and
/// counts nothing.
#[inline(always)]
pub fn released(policy: u32) -> bool {
    policy == POLICY_RELEASED
}

/// The policy governing the caller and its live table and mode: `None`
/// when no policy of this daemon governs it, the policy is not live, or
/// the cgroup was released (see `released`).
#[inline(always)]
pub fn governing(caller: Caller) -> (u32, Option<Live>) {
    let policy = find_policy(caller);
    if policy == 0 || released(policy) {
        return (policy, None);
    }
    match POLICIES.get(policy) {
        Some(info) if info.table != 0 => (
            policy,
            Some(Live {
                table: info.table,
                audit: info.mode == MODE_AUDIT,
                dns_port: info.dns_port,
                listen_set: info.listen_set,
                families: info.families,
                budgets: info.budgets != 0,
            }),
        ),
        _ => (policy, None),
    }
}

/// A live policy's table, mode and DNS proxy port.
#[derive(Clone, Copy)]
pub struct Live {
    pub table: u32,
    pub audit: bool,
    pub dns_port: u32,
    pub listen_set: u32,
    pub families: u64,
    /// A rule of the policy carries an upload budget.
    pub budgets: bool,
}
