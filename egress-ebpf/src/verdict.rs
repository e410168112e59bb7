//! The verdict: is the destination allowed by the policy that governs the
//! caller (`governing`), count it, and report it when it is not.

use aya_ebpf::{
    helpers::bpf_get_netns_cookie, maps::lpm_trie::Key, programs::SockAddrContext, EbpfContext,
};
use egress_common::{
    allow, config, hook, proto_class, reason, SocketRecord, AF_INET, MAX_PORT_RANGES, NAME_FREE,
    NAME_PENDING, PROTO_BIT_TCP, PROTO_BIT_UDP, RANGE_NAMED, RECORD_ALLOWED, RECORD_AUDITED,
    TABLE_BITS,
};

use crate::{
    attempt::{Attempt, RET_ALLOW},
    dest::Dest,
    dns,
    governing::{governing, released, Caller, Live},
    maps::{ALLOW_V4, ALLOW_V6, CONFIG, PORTSETS},
};

#[inline(always)]
pub fn class_of(protocol: u32) -> (u8, u8) {
    match protocol {
        // IPPROTO_TCP, IPPROTO_MPTCP
        6 | 262 => (proto_class::TCP, PROTO_BIT_TCP),
        // IPPROTO_UDP, IPPROTO_UDPLITE
        17 | 136 => (proto_class::UDP, PROTO_BIT_UDP),
        _ => (proto_class::OTHER, 0),
    }
}

/// Why `dest` is not allowed in `table` (`reason::NONE` when it is), and
/// the slot of the rule that allows it (0: none, or not counted). With
/// `proto_bit` 0 (a fragment without ports) any port of the address passes.
#[inline(always)]
pub fn check(table: u32, proto_bit: u8, dest: &Dest) -> (u8, u32) {
    let peer = check_peer(table, proto_bit, dest);
    (peer.why, peer.rule)
}

/// What the allowlist says of a peer.
#[derive(Clone, Copy)]
pub struct Peer {
    /// `reason::NONE` when allowed.
    pub why: u8,
    /// The slot of the rule that allows it (0: none, or not counted).
    pub rule: u32,
    /// Only host rules that check names allow it: a TCP connection must
    /// present a name bound to the address (see `names`). UDP to such a
    /// peer is refused (`reason::NAME_NOT_AT_ADDRESS`): no name is judged on it.
    pub named: bool,
}

/// `check`, and whether the peer is named.
#[inline(always)]
pub fn check_peer(table: u32, proto_bit: u8, dest: &Dest) -> Peer {
    let no = |why: u8| Peer {
        why,
        rule: 0,
        named: false,
    };
    let set_id = if dest.family == AF_INET {
        let a = &dest.addr;
        let data = allow::v4_key(table, &[a[0], a[1], a[2], a[3]]);
        ALLOW_V4.get(Key::new(TABLE_BITS + 32, data)).copied()
    } else {
        let data = allow::v6_key(table, &dest.addr);
        ALLOW_V6.get(Key::new(TABLE_BITS + 128, data)).copied()
    };
    let Some(set_id) = set_id else {
        return no(reason::DESTINATION_NOT_ALLOWED);
    };
    if proto_bit == 0 {
        return no(if PORTSETS.get(set_id).is_some() {
            reason::NONE
        } else {
            reason::PORT_NOT_ALLOWED
        });
    }
    match find_range(set_id, proto_bit, dest.port) {
        Some((_, true)) if proto_bit == PROTO_BIT_UDP => no(reason::NAME_NOT_AT_ADDRESS),
        Some((rule, named)) => Peer {
            why: reason::NONE,
            rule,
            named,
        },
        None => no(reason::PORT_NOT_ALLOWED),
    }
}

/// Whether port set `set_id` holds `port` for protocol `proto_bit`: the
/// slot of the rule of the first range that does.
#[inline(always)]
pub fn in_portset(set_id: u32, proto_bit: u8, port: u16) -> Option<u32> {
    find_range(set_id, proto_bit, port).map(|(rule, _)| rule)
}

/// The rule of the first range of port set `set_id` that holds `port` for
/// protocol `proto_bit`, and whether every range that holds it is named
/// (`RANGE_NAMED`): a range that is not, if any, is the one taken.
#[inline(always)]
pub fn find_range(set_id: u32, proto_bit: u8, port: u16) -> Option<(u32, bool)> {
    let set = PORTSETS.get(set_id)?;
    let mut named_rule = None;
    let mut i = 0;
    while i < MAX_PORT_RANGES {
        if i as u32 >= set.count {
            break;
        }
        let r = &set.ranges[i];
        if r.protos & proto_bit != 0 && port >= r.lo && port <= r.hi {
            if r.flags & RANGE_NAMED == 0 {
                return Some((u32::from(r.rule), false));
            }
            if named_rule.is_none() {
                named_rule = Some(u32::from(r.rule));
            }
        }
        i += 1;
    }
    named_rule.map(|rule| (rule, true))
}

#[inline(always)]
fn is_connect(h: u8) -> bool {
    h == hook::CONNECT4 || h == hook::CONNECT6
}

/// Loopback, or the unspecified address (0.0.0.0, ::), which the kernel
/// turns into loopback when a socket connects or sends to it.
#[inline(always)]
fn reaches_loopback(dest: &Dest) -> bool {
    is_loopback(dest)
        || match dest.family {
            AF_INET => dest.addr[..4] == [0; 4],
            _ => dest.addr == [0; 16],
        }
}

/// 127.0.0.0/8 or ::1.
#[inline(always)]
pub fn is_loopback(dest: &Dest) -> bool {
    match dest.family {
        AF_INET => dest.addr[0] == 127,
        _ => dest.addr == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    }
}

/// Is the socket in egressd's own network namespace? None where the
/// kernel cannot tell (no namespace cookie for userspace before Linux
/// 5.14). Loopback rules mean this host's loopback, not that of a
/// namespace the agent made: unknown, they refuse; but DNS must still
/// reach the proxy.
#[inline(always)]
fn in_egressd_netns(ctx: &SockAddrContext) -> Option<bool> {
    let host = CONFIG.get(config::HOST_NETNS_COOKIE).copied().unwrap_or(0);
    // SAFETY: ctx is the program's context.
    (host != 0).then(|| unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == host)
}

/// A sock_addr hook's attempt on `dest`: the calling task's, under the
/// policy that governs it (and that policy's live state), with the
/// socket's protocol and its bit in port sets.
#[inline(always)]
fn sock_addr_attempt(ctx: &SockAddrContext, hook: u8, dest: Dest) -> (Attempt, u8, Option<Live>) {
    // SAFETY: ctx points at the kernel's bpf_sock_addr.
    let protocol = unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).protocol) };
    let (class, proto_bit) = class_of(protocol);
    let caller = Caller::Task;
    let (policy, live) = governing(caller);
    let attempt = Attempt {
        caller,
        policy,
        hook,
        protocol: protocol as u8,
        class,
        dest,
    };
    (attempt, proto_bit, live)
}

/// Judges one connect or send; returns the program's return value.
#[inline(always)]
pub fn judge(ctx: &SockAddrContext, hook: u8, dest: Dest) -> i32 {
    let (attempt, proto_bit, live) = sock_addr_attempt(ctx, hook, dest);
    if released(attempt.policy) {
        return RET_ALLOW;
    }
    let class = attempt.class;
    let Some(Live {
        table,
        audit,
        dns_port,
        ..
    }) = live
    else {
        return attempt.conclude(false, reason::NO_POLICY);
    };
    if class != proto_class::OTHER && dns_port != 0 {
        // DNS, to any address, goes to egressd's proxy; the proxy itself
        // is reachable (a connected socket sending with control messages).
        let to_proxy = Attempt {
            protocol: 0,
            ..attempt
        };
        if dest.port == 53 && dest.family != 0 {
            dns::redirect(ctx, hook, &dest, dns_port);
            return to_proxy.conclude(audit, reason::NONE);
        }
        // A TCP connect only to egressd's own proxy: loopback in a
        // network namespace the agent made is judged as loopback
        // elsewhere (below). No client connects there on its own (DNS to
        // port 53 is redirected above); a datagram sent on a redirected
        // UDP socket (with control messages, it comes here) may be in a
        // pod's namespace, where egressd serves that pod's proxy.
        let own_proxy = class != proto_class::TCP || in_egressd_netns(ctx) != Some(false);
        if dns::is_proxy(&dest, dns_port) && own_proxy {
            return to_proxy.conclude(audit, reason::NONE);
        }
    }
    let no = |why: u8| Peer {
        why,
        rule: 0,
        named: false,
    };
    let Peer { why, rule, named } = if class == proto_class::OTHER {
        no(reason::PROTOCOL_NOT_ALLOWED)
    } else if dest.family == 0 {
        no(reason::NO_DESTINATION)
    } else if reaches_loopback(&dest) && in_egressd_netns(ctx) != Some(true) {
        no(reason::LOOPBACK_OF_ANOTHER_NETNS)
    } else {
        check_peer(table, proto_bit, &dest)
    };
    // Allowed by a rule whose upload budget is spent: refused until its
    // window turns.
    let why = if why == reason::NONE && crate::rules::spent(rule) {
        crate::rules::over_budget(rule);
        reason::BUDGET_SPENT
    } else {
        why
    };
    // A UDP connect sends nothing: its verdict waits for the first datagram
    // (see `udp`).
    if class == proto_class::UDP && is_connect(hook) && crate::udp::waits(why) {
        let e = attempt.event(0, why);
        crate::udp::defer(ctx, &e);
        return RET_ALLOW;
    }
    // A send the sendmsg hook reports itself: the backstop must not report
    // it again from a connect that waited.
    if class == proto_class::UDP && !is_connect(hook) && why != reason::NONE {
        crate::udp::forget_socket(ctx);
    }
    let ret = attempt.conclude(audit, why);
    if class == proto_class::TCP && is_connect(hook) {
        // The socket's record: its segments pass the backstop on it. A
        // connect audit mode let through (reported here) passes only while
        // the policy audits: once it enforces, its segments are judged
        // again. A refused connect leaves no record.
        let verdict = if why == reason::NONE {
            crate::rules::connection(rule);
            RECORD_ALLOWED
        } else if ret == RET_ALLOW {
            RECORD_AUDITED
        } else {
            0
        };
        // A peer only host rules allow: the first bytes must name a
        // host bound to it (see `names`); a refusal reports the process
        // that connected. (Read only then: connect() is the hot path.)
        let (name, tgid, uid) = if named {
            let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
            let uid = aya_ebpf::helpers::bpf_get_current_uid_gid() as u32;
            (NAME_PENDING, (pid_tgid >> 32) as u32, uid)
        } else {
            (NAME_FREE, 0, 0)
        };
        let record = SocketRecord {
            verdict,
            name,
            rule,
            policy: attempt.policy,
            table,
            tgid,
            uid,
            ..SocketRecord::default()
        };
        crate::record::on_connect(ctx, (verdict != 0).then_some(record));
    }
    ret
}

/// Judges the creation of an IPv4 or IPv6 socket. Only TCP (and MPTCP)
/// stream sockets and UDP (and UDP-Lite) datagram sockets pass: those are
/// judged again when they connect or send. Everything else (raw sockets,
/// ICMP "ping" sockets, SCTP, L2TP/IP, ...) may send without passing the
/// connect and sendmsg hooks, so it is refused here: default deny.
#[inline(always)]
pub fn judge_socket(hook: u8, family: u32, sock_type: u32, protocol: u32) -> i32 {
    const SOCK_STREAM: u32 = 1;
    const SOCK_DGRAM: u32 = 2;
    let known = match sock_type {
        // IPPROTO_TCP, IPPROTO_MPTCP
        SOCK_STREAM => matches!(protocol, 6 | 262),
        // IPPROTO_UDP, IPPROTO_UDPLITE
        SOCK_DGRAM => matches!(protocol, 17 | 136),
        _ => false,
    };
    if known {
        return RET_ALLOW;
    }
    let dest = Dest {
        family: family as u8,
        addr: [0; 16],
        port: 0,
    };
    refuse(
        Caller::Task,
        reason::SOCKET_NOT_ALLOWED,
        hook,
        protocol as u8,
        dest,
    )
}

/// Judges socket() of any family (BPF LSM): UNIX, IPv4, IPv6 and netlink's
/// NETLINK_ROUTE pass (IP sockets are judged when they connect and send;
/// NETLINK_ROUTE reaches no process without CAP_NET_ADMIN), as do the
/// kernel's own sockets; any other family, and any other netlink protocol
/// (NETLINK_USERSOCK reaches processes of any uid), only where the
/// governing policy names it.
#[inline(always)]
pub fn judge_family(family: u32, protocol: u32, kern: bool) -> i32 {
    const AF_NETLINK: u32 = 16;
    const NETLINK_ROUTE: u32 = 0;
    if kern || matches!(family, 1 | 2 | 10) || (family == AF_NETLINK && protocol == NETLINK_ROUTE) {
        return RET_ALLOW;
    }
    let caller = Caller::Task;
    let (policy, live) = governing(caller);
    if released(policy) {
        return RET_ALLOW;
    }
    let named = matches!(live, Some(l) if family < 64 && l.families & (1 << family) != 0);
    let dest = Dest {
        family: family as u8,
        addr: [0; 16],
        port: 0,
    };
    if named {
        let attempt = Attempt {
            caller,
            policy,
            hook: hook::SOCKET_FAMILY,
            protocol: protocol as u8,
            class: proto_class::OTHER,
            dest,
        };
        return attempt.conclude(false, reason::NONE);
    }
    refuse(
        caller,
        reason::SOCKET_NOT_ALLOWED,
        hook::SOCKET_FAMILY,
        protocol as u8,
        dest,
    )
}

/// Refuses something no rule can allow (audit mode lets it through,
/// reported): `why` when a policy governs the caller, `NO_POLICY` otherwise.
#[inline(always)]
pub fn refuse(caller: Caller, why: u8, hook: u8, protocol: u8, dest: Dest) -> i32 {
    let (policy, live) = governing(caller);
    if released(policy) {
        return RET_ALLOW;
    }
    let audit = matches!(live, Some(Live { audit: true, .. }));
    let why = if live.is_some() {
        why
    } else {
        reason::NO_POLICY
    };
    let attempt = Attempt {
        caller,
        policy,
        hook,
        protocol,
        class: proto_class::OTHER,
        dest,
    };
    attempt.conclude(audit, why)
}

/// setsockopt(): refuses the options that source-route packets past the
/// connect/sendmsg verdict (IPv4 IP_OPTIONS; IPv6 routing, hop-by-hop and
/// destination-options headers). Returns 1 to let the call proceed.
#[inline(always)]
pub fn judge_option(caller: Caller, level: i32, optname: i32) -> i32 {
    const SOL_IP: i32 = 0;
    const IP_OPTIONS: i32 = 4;
    const SOL_IPV6: i32 = 41;
    // IPV6_2292HOPOPTS 3, _2292DSTOPTS 4, _2292RTHDR 5, _2292PKTOPTIONS 6,
    // IPV6_HOPOPTS 54, IPV6_RTHDRDSTOPTS 55, IPV6_RTHDR 57, IPV6_DSTOPTS 59.
    let routing = match level {
        SOL_IP => optname == IP_OPTIONS,
        SOL_IPV6 => matches!(optname, 3..=6 | 54 | 55 | 57 | 59),
        _ => false,
    };
    if !routing {
        return RET_ALLOW;
    }
    refuse(caller, reason::IP_OPTIONS, hook::SETSOCKOPT, 0, Dest::NONE)
}

/// Judges a bind(): port 0 (the kernel picks one: a client binding before
/// it connects) and loopback addresses pass; a port on any other address,
/// the unspecified one included, makes a socket others could reach, and
/// needs a `listen` rule for that port and protocol. Peers that connect in
/// are judged by the backstop like any destination.
#[inline(always)]
pub fn judge_bind(ctx: &SockAddrContext, hook: u8, local: Dest) -> i32 {
    // Free whatever governs the caller: checked first, as clients bind
    // port 0 often and should pay nothing for it.
    if local.port == 0 || is_loopback(&local) {
        return RET_ALLOW;
    }
    let (attempt, proto_bit, live) = sock_addr_attempt(ctx, hook, local);
    if released(attempt.policy) {
        return RET_ALLOW;
    }
    let (audit, why) = match live {
        None => (false, reason::NO_POLICY),
        Some(_) if attempt.class == proto_class::OTHER => (false, reason::PROTOCOL_NOT_ALLOWED),
        Some(l)
            if l.listen_set != 0 && in_portset(l.listen_set, proto_bit, local.port).is_some() =>
        {
            (l.audit, reason::NONE)
        }
        Some(l) => (l.audit, reason::LISTEN_NOT_ALLOWED),
    };
    attempt.conclude(audit, why)
}
