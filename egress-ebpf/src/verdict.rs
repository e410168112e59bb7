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

/// The policy governing the caller and its live table and mode: `None`
/// when no policy of this daemon governs it or the policy is not live.
#[inline(always)]
fn governing() -> (u32, Option<(u32, bool)>) {
    let policy = find_policy();
    if policy == 0 {
        return (0, None);
    }
    match POLICIES.get(policy) {
        Some(info) if info.table != 0 => (policy, Some((info.table, info.mode == MODE_AUDIT))),
        _ => (policy, None),
    }
}

/// Counts an attempt and, unless allowed, reports it; returns the program's
/// return value (1 allow, 0 refuse; audit mode allows).
#[inline(always)]
fn conclude(
    policy: u32,
    audit: bool,
    why: u8,
    class: u8,
    hook: u8,
    protocol: u8,
    dest: Option<Dest>,
) -> i32 {
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
    report(policy, hook, v, why, protocol, dest);
    if audit {
        RET_ALLOW
    } else {
        RET_REFUSE
    }
}

/// Judges one connect or send; returns the program's return value.
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, hook: u8, dest: Option<Dest>) -> i32 {
    // SAFETY: ctx points at the kernel's bpf_sock_addr.
    let protocol = unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).protocol) };
    let (class, proto_bit) = class_of(protocol);
    let (policy, live) = governing();
    let Some((table, audit)) = live else {
        return conclude(
            policy,
            false,
            reason::NO_POLICY,
            class,
            hook,
            protocol as u8,
            dest,
        );
    };
    let why = if class == proto_class::OTHER {
        reason::PROTOCOL
    } else {
        match &dest {
            Some(d) => check(table, proto_bit, d),
            None => reason::NO_DEST,
        }
    };
    conclude(policy, audit, why, class, hook, protocol as u8, dest)
}

/// Judges the creation of an IPv4 or IPv6 socket: raw sockets and ICMP
/// ("ping") sockets never pass the connect and sendmsg hooks, so they are
/// refused; every other socket is judged when it connects or sends.
#[inline(always)]
pub fn judge_socket(hook: u8, family: u32, sock_type: u32, protocol: u32) -> i32 {
    const SOCK_RAW: u32 = 3;
    const IPPROTO_ICMP: u32 = 1;
    const IPPROTO_ICMPV6: u32 = 58;
    let raw = sock_type == SOCK_RAW || protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6;
    if !raw {
        return RET_ALLOW;
    }
    let (policy, live) = governing();
    let audit = matches!(live, Some((_, true)));
    let why = if live.is_some() {
        reason::RAW_SOCKET
    } else {
        reason::NO_POLICY
    };
    let dest = Dest {
        family: family as u8,
        addr: [0; 16],
        port: 0,
    };
    conclude(
        policy,
        audit,
        why,
        proto_class::OTHER,
        hook,
        protocol as u8,
        Some(dest),
    )
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
