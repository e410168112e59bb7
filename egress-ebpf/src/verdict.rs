//! The verdict: which policy governs the caller, is the destination allowed,
//! count it, and report it when it is not.

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    },
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use egress_common::{
    counter_index, lost_index, proto_class, reason, verdict, Event, V4Key, V6Key, AF_INET,
    MAX_CGROUP_DEPTH, MAX_PORT_RANGES, MODE_AUDIT, PROTO_BIT_TCP, PROTO_BIT_UDP, TABLE_BITS,
};

use crate::{
    dest::Dest,
    maps::{bump, ALLOW_V4, ALLOW_V6, CGROUP_POLICY, EVENTS, POLICIES, PORTSETS},
};

const RET_REFUSE: i32 = 0;
const RET_ALLOW: i32 = 1;

/// The policy governing the calling task: its own cgroup's, else that of its
/// deepest governed ancestor; 0 if none.
#[inline(always)]
fn find_policy() -> u32 {
    // SAFETY: helper calls without pointer arguments.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the map value is a plain u32 owned by the map.
    if let Some(p) = unsafe { CGROUP_POLICY.get(own) } {
        return *p;
    }
    let mut found = 0;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: as above.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
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

#[inline(always)]
fn class_of(protocol: u32) -> (u8, u8) {
    match protocol {
        // IPPROTO_TCP, IPPROTO_MPTCP
        6 | 262 => (proto_class::TCP, PROTO_BIT_TCP),
        // IPPROTO_UDP, IPPROTO_UDPLITE
        17 | 136 => (proto_class::UDP, PROTO_BIT_UDP),
        _ => (proto_class::OTHER, 0),
    }
}

/// Why `dest` is not allowed in `table`, or `reason::NONE`.
#[inline(always)]
fn check(table: u32, proto_bit: u8, dest: &Dest) -> u8 {
    let t = table.to_be_bytes();
    let set_id = if dest.family == AF_INET {
        let mut data: V4Key = [0; 8];
        data[..4].copy_from_slice(&t);
        data[4..].copy_from_slice(&dest.addr[..4]);
        ALLOW_V4.get(Key::new(TABLE_BITS + 32, data)).copied()
    } else {
        let mut data: V6Key = [0; 20];
        data[..4].copy_from_slice(&t);
        data[4..].copy_from_slice(&dest.addr);
        ALLOW_V6.get(Key::new(TABLE_BITS + 128, data)).copied()
    };
    let Some(set_id) = set_id else {
        return reason::NO_RULE;
    };
    let Some(set) = PORTSETS.get(set_id) else {
        return reason::PORT;
    };
    let mut i = 0;
    while i < MAX_PORT_RANGES {
        if i as u32 >= set.count {
            break;
        }
        let r = &set.ranges[i];
        if r.protos & proto_bit != 0 && dest.port >= r.lo && dest.port <= r.hi {
            return reason::NONE;
        }
        i += 1;
    }
    reason::PORT
}

/// Judges one attempt; returns the program's return value (1 allow, 0 refuse).
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, hook: u8, dest: Option<Dest>) -> i32 {
    // SAFETY: ctx points at the kernel's bpf_sock_addr.
    let protocol = unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).protocol) };
    let (class, proto_bit) = class_of(protocol);
    let policy = find_policy();
    let info = if policy == 0 {
        None
    } else {
        POLICIES.get(policy).copied()
    };
    let (why, audit) = match info {
        Some(info) if info.table != 0 => {
            let why = if class == proto_class::OTHER {
                reason::PROTOCOL
            } else {
                match &dest {
                    Some(d) => check(info.table, proto_bit, d),
                    None => reason::NO_DEST,
                }
            };
            (why, info.mode == MODE_AUDIT)
        }
        _ => (reason::NO_POLICY, false),
    };
    if why == reason::NONE {
        bump(counter_index(policy, verdict::ALLOWED, class, why));
        return RET_ALLOW;
    }
    let v = if audit {
        verdict::AUDITED
    } else {
        verdict::DENIED
    };
    bump(counter_index(policy, v, class, why));
    report(policy, hook, v, why, protocol as u8, dest);
    if audit {
        RET_ALLOW
    } else {
        RET_REFUSE
    }
}

#[inline(always)]
fn report(policy: u32, hook: u8, v: u8, why: u8, protocol: u8, dest: Option<Dest>) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(lost_index(policy));
        return;
    };
    // SAFETY: helper calls without pointer arguments.
    let (pid_tgid, uid_gid, cgroup_id) = unsafe {
        (
            bpf_get_current_pid_tgid(),
            bpf_get_current_uid_gid(),
            bpf_get_current_cgroup_id(),
        )
    };
    let (family, addr, port) = match dest {
        Some(d) => (d.family, d.addr, d.port),
        None => (0, [0; 16], 0),
    };
    entry.write(Event {
        cgroup_id,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        policy_id: policy,
        port,
        family,
        protocol,
        addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        reason: why,
        verdict: v,
        hook,
        _pad: [0; 5],
    });
    entry.submit(0);
}
