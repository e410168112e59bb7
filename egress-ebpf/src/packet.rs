//! The egress backstop: every packet a governed socket sends is checked
//! against the same allowlist, by its real destination. It drops packets
//! carrying IPv4 options or IPv6 routing, hop-by-hop or destination-options
//! headers (source routing can send a packet somewhere other than the
//! address the connect/sendmsg hooks approved), and anything else the
//! socket hooks missed. Allowed packets are not counted as attempts (the
//! socket calls were); dropped ones are, with reason `ip_options` or
//! `packet`. An allowed packet's payload is counted to the rule that
//! allows its destination, and charged to that rule's upload budget (see
//! `rules`); `count_received` does the same for what arrives. A TCP
//! socket's segments are judged by its record (see `record`): one lookup,
//! no allowlist, once its peer passed.

use aya_ebpf::{bindings::bpf_sock, programs::SkBuffContext};
use egress_common::{
    hook, proto_class, reason, SocketRecord, AF_INET, AF_INET6, MODE_AUDIT, NAME_FREE, NAME_PASSED,
    NAME_PENDING, NAME_REFUSED, PROTO_BIT_TCP, RECORD_ALLOWED, RECORD_AUDITED,
};

use crate::{
    attempt::{conclude_deferred, Attempt},
    dest::Dest,
    dns,
    governing::{governing, released, Caller, Live},
    maps::POLICIES,
    names, record, rules, udp,
    verdict::{check, check_peer, class_of, in_portset, is_loopback},
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// IPv6 extension headers that route or carry options.
#[inline(always)]
fn is_option_header(next: u8) -> bool {
    // hop-by-hop 0, routing 43, destination options 60
    matches!(next, 0 | 43 | 60)
}

/// What the backstop needs of a packet.
struct Parsed {
    proto: u8,
    dest: Dest,
    /// IPv4 options, or an IPv6 routing/hop-by-hop/destination-options header.
    options: bool,
    /// A TCP SYN-ACK: a listening socket answering.
    syn_ack: bool,
    /// A fragment after the first: it carries no ports (its first
    /// fragment's were judged). Port 0 in a first fragment is port 0.
    later_fragment: bool,
    /// Where the transport header starts.
    l4: usize,
}

/// Reads a `T` at `off` from the start of the IP header: straight from the
/// packet when that part is in its linear data (the common case, and much
/// cheaper than a helper call), else with `bpf_skb_load_bytes`.
#[inline(always)]
fn read<T: Copy>(ctx: &SkBuffContext, off: usize) -> Option<T> {
    // SAFETY: data and data_end are readable fields of the context; the
    // read below is bounds-checked against data_end (the verifier checks
    // this too).
    unsafe {
        let start = (*ctx.skb.skb).data as usize;
        let end = (*ctx.skb.skb).data_end as usize;
        if start + off + core::mem::size_of::<T>() <= end {
            return Some(core::ptr::read_unaligned((start + off) as *const T));
        }
    }
    ctx.load(off).ok()
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// The flags of the TCP header at `l4` (None: cannot be read).
#[inline(always)]
fn tcp_flags(ctx: &SkBuffContext, l4: usize) -> Option<u8> {
    read(ctx, l4 + 13)
}

/// Parses the packet; None when it cannot be parsed (dropped: fail closed).
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Parsed> {
    let eth = u16::from_be(ctx.skb.protocol() as u16);
    if eth == ETH_P_IP {
        // Two bytes, not one: a bounds check for one byte at offset 0
        // compiles to a comparison the verifier draws no range from.
        let [b0, _]: [u8; 2] = read(ctx, 0)?;
        let proto: u8 = read(ctx, 9)?;
        let frag = u16::from_be(read::<u16>(ctx, 6)?);
        let addr4: [u8; 4] = read(ctx, 16)?;
        let options = b0 & 0x0f != 5;
        let first = frag & 0x1fff == 0;
        let port = if first && !options && matches!(proto, 6 | 17 | 136) {
            u16::from_be(read::<u16>(ctx, 22)?)
        } else {
            0
        };
        let flags = if first && !options && proto == 6 {
            tcp_flags(ctx, 20)?
        } else {
            0
        };
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&addr4);
        let dest = Dest {
            family: AF_INET,
            addr,
            port,
        };
        return Some(Parsed {
            proto,
            dest,
            options,
            syn_ack: flags & (SYN | ACK) == SYN | ACK,
            later_fragment: !first,
            l4: 20,
        });
    }
    if eth == ETH_P_IPV6 {
        let mut next: u8 = read(ctx, 6)?;
        let addr: [u8; 16] = read(ctx, 24)?;
        let mut l4 = 40;
        let mut first = true;
        if next == 44 {
            // A fragment header: the real next header follows it.
            next = read(ctx, 40)?;
            first = u16::from_be(read::<u16>(ctx, 42)?) & 0xfff8 == 0;
            l4 = 48;
        }
        let options = is_option_header(next);
        let port = if first && !options && matches!(next, 6 | 17 | 136) {
            u16::from_be(read::<u16>(ctx, l4 + 2)?)
        } else {
            0
        };
        let flags = if first && !options && next == 6 {
            tcp_flags(ctx, l4)?
        } else {
            0
        };
        let dest = Dest {
            family: AF_INET6,
            addr,
            port,
        };
        return Some(Parsed {
            proto: next,
            dest,
            options,
            syn_ack: flags & (SYN | ACK) == SYN | ACK,
            later_fragment: !first,
            l4,
        });
    }
    None
}

/// Judges one outgoing packet: 1 to pass it, 0 to drop it.
#[inline(always)]
pub fn judge_packet(ctx: &SkBuffContext) -> i32 {
    let parsed = parse(ctx);
    // A TCP socket's own segment (a raw socket, made before its cgroup was
    // governed, could write segments to anywhere): its record, if it has
    // one, says whether its peer passed (see `record`).
    let sk = match &parsed {
        Some(p) if p.proto == 6 && !p.options && !p.later_fragment => record::tcp_socket_of(ctx),
        _ => core::ptr::null_mut(),
    };
    let mut stale = NOT_STALE;
    if let (Some(p), false) = (&parsed, sk.is_null()) {
        match on_record(ctx, p, sk) {
            Recorded::Verdict(v) => return v,
            Recorded::Stale(name) => stale = name,
            Recorded::None => {}
        }
    }
    judge_unrecorded(ctx, parsed, sk, stale)
}

/// `judge_unrecorded`'s `stale` for a socket without a stale record (else
/// it is where the record's name check stood).
const NOT_STALE: u8 = u8::MAX;

/// What a socket's record says of its segment.
enum Recorded {
    /// The record is live: this is the verdict.
    Verdict(i32),
    /// Its peer passed under a table the policy has since replaced: judged
    /// again, and passes as before where it no longer would (see
    /// `judge_unrecorded`). Where its name check stood.
    Stale(u8),
    /// No record, or one that passed only while the policy audited.
    None,
}

/// The fast path: one lookup of the socket's record, one of its policy.
/// A segment of an allowed peer is counted to the record's rule and
/// charged to its budget (a segment without payload, an ACK, passes).
#[inline(always)]
fn on_record(ctx: &SkBuffContext, p: &Parsed, sk: *mut bpf_sock) -> Recorded {
    let Some(r) = record::get(sk) else {
        return Recorded::None;
    };
    let live = matches!(POLICIES.get(r.policy), Some(i) if i.table != 0 && i.table == r.table);
    let audit = matches!(POLICIES.get(r.policy), Some(i) if i.mode == MODE_AUDIT);
    match r.verdict {
        RECORD_ALLOWED if live => {
            let bytes = payload(ctx, p.proto, p.l4);
            if bytes == 0 {
                return Recorded::Verdict(PASS);
            }
            let v = match r.name {
                NAME_PENDING => {
                    let off = payload_offset(ctx, p.l4);
                    names::judge(ctx, &p.dest, off, bytes, sk, r, audit)
                }
                // Reported once, when refused; audit lets it go on.
                NAME_REFUSED if audit => PASS,
                NAME_REFUSED => DROP,
                _ if rules::charge(r.rule, bytes, false) || audit => PASS,
                _ => DROP,
            };
            Recorded::Verdict(v)
        }
        RECORD_ALLOWED => Recorded::Stale(r.name),
        RECORD_AUDITED if live && audit => Recorded::Verdict(PASS),
        _ => Recorded::None,
    }
}

/// The slow path: a packet of a socket without a live record (an accepted
/// TCP socket, UDP, a connect's SYN where no record could be made), judged
/// by its destination under the policy that governs its cgroup. A TCP
/// socket (`sk`, null for any other packet) whose peer passes gets its
/// record here.
#[inline(always)]
fn judge_unrecorded(
    ctx: &SkBuffContext,
    parsed: Option<Parsed>,
    sk: *mut bpf_sock,
    stale: u8,
) -> i32 {
    let caller = Caller::Packet(ctx.skb.skb);
    let (policy, live) = governing(caller);
    if released(policy) {
        return PASS;
    }
    // An attempt with no protocol or destination known yet.
    let unparsed = Attempt {
        caller,
        policy,
        hook: hook::PACKET_EGRESS,
        protocol: 0,
        class: proto_class::OTHER,
        dest: Dest::NONE,
    };
    let Some(Live {
        table,
        audit,
        dns_port,
        listen_set,
        budgets,
        ..
    }) = live
    else {
        unparsed.conclude(false, reason::NO_POLICY);
        return DROP;
    };
    let Some(Parsed {
        proto,
        dest,
        options,
        later_fragment,
        l4,
        syn_ack,
        ..
    }) = parsed
    else {
        return unparsed.conclude(audit, reason::PACKET_DESTINATION_NOT_ALLOWED);
    };
    let (class, bit) = class_of(u32::from(proto));
    let attempt = Attempt {
        protocol: proto,
        class,
        dest,
        ..unparsed
    };
    if class != proto_class::OTHER && !options && dns::is_proxy(&dest, dns_port) {
        if !later_fragment {
            if let Some(sport) = read::<u16>(ctx, l4) {
                dns::note_asker(ctx, dest.family, proto, u16::from_be(sport));
            }
        }
        return PASS;
    }
    // A SYN-ACK answers for a listening socket: only from a port a listen
    // rule allows (a socket that listens without bind() took its port
    // where the bind hook could not see), except to loopback.
    if syn_ack && !options && !is_loopback(&dest) {
        let sport = read::<u16>(ctx, l4).map_or(0, u16::from_be);
        if listen_set == 0 || in_portset(listen_set, PROTO_BIT_TCP, sport).is_none() {
            return attempt.conclude(audit, reason::LISTEN_NOT_ALLOWED);
        }
    }
    let fragment_without_ports = later_fragment && class != proto_class::OTHER;
    let record = |verdict: u8, rule: u32, name: u8| SocketRecord {
        verdict,
        name,
        rule,
        policy,
        table,
        ..SocketRecord::default()
    };
    let remember = |verdict: u8, rule: u32| {
        if !sk.is_null() {
            record::set(sk, record(verdict, rule, NAME_FREE));
        }
    };
    let why = if options {
        reason::IP_OPTIONS
    } else if class == proto_class::OTHER {
        reason::PROTOCOL_NOT_ALLOWED
    } else {
        let peer = check_peer(table, if fragment_without_ports { 0 } else { bit }, &dest);
        match (peer.why, peer.rule) {
            (reason::NONE, rule) if peer.named && proto == 6 => {
                // A peer only host rules allow: its name is judged at the
                // first data (see `names`), or was, before a reload.
                let bytes = payload(ctx, proto, l4);
                // Before a reload: judged when made, as it was. Without a
                // record (accepted, made before the cgroup was governed,
                // let through in audit): its name is judged only from its
                // stream's first byte, else it sends nothing more.
                let name = match stale {
                    n @ (NAME_PASSED | NAME_REFUSED | NAME_PENDING) => n,
                    NAME_FREE => NAME_PASSED,
                    _ if !sk.is_null() && record::nothing_sent(sk) => NAME_PENDING,
                    _ => NAME_REFUSED,
                };
                let r = record(RECORD_ALLOWED, rule, name);
                if sk.is_null() {
                    // Data no socket record can follow.
                    if bytes == 0 || audit {
                        return PASS;
                    }
                    reason::NAME_NOT_AT_ADDRESS
                } else {
                    record::set(sk, r);
                    match name {
                        _ if bytes == 0 => return PASS,
                        // Judged when the socket sends it again, by its
                        // record (`on_record`): this path is rare (a
                        // record the kernel could not make at connect, a
                        // reload), and the judge is costly to verify.
                        NAME_PENDING | NAME_REFUSED => return DROP,
                        _ if rules::charge(rule, bytes, false) || audit => return PASS,
                        _ => reason::BUDGET_SPENT,
                    }
                }
            }
            (reason::NONE, rule) => {
                remember(RECORD_ALLOWED, rule);
                let bytes = payload(ctx, proto, l4);
                if rules::charge(rule, bytes, class == proto_class::UDP) || audit {
                    return PASS;
                }
                reason::BUDGET_SPENT
            }
            // A UDP connect to this destination waited for this datagram:
            // its event, with the process, is reported now (once in audit).
            (_, _) if class == proto_class::UDP && !fragment_without_ports => {
                if let Some((cookie, e)) = udp::deferred(ctx, &dest) {
                    if audit {
                        udp::forget(cookie);
                    }
                    return conclude_deferred(e, audit);
                }
                if audit {
                    return PASS;
                }
                if peer.why == reason::NAME_NOT_AT_ADDRESS {
                    reason::NAME_NOT_AT_ADDRESS
                } else {
                    reason::PACKET_DESTINATION_NOT_ALLOWED
                }
            }
            // Its peer passed when it was judged, and no longer would (a
            // reload removed it): the connection goes on, uncounted, as
            // judged when made; except under a policy with budgets, which
            // no rule would be charged for.
            (_, _) if stale == NAME_REFUSED && !audit => reason::NAME_NOT_AT_ADDRESS,
            (_, _) if stale != NOT_STALE && (!budgets || audit) => {
                remember(RECORD_ALLOWED, 0);
                return PASS;
            }
            // In audit mode the socket call was already reported; do not
            // report (and count) every packet of the connection again. A
            // TCP socket whose peer no hook judged made no such call: it
            // is reported once.
            (_, _) if audit && sk.is_null() => return PASS,
            (_, _) if audit => {
                remember(RECORD_AUDITED, 0);
                reason::PACKET_DESTINATION_NOT_ALLOWED
            }
            (_, _) => reason::PACKET_DESTINATION_NOT_ALLOWED,
        }
    };
    attempt.conclude(audit, why)
}

/// Where the payload of the TCP segment whose header is at `l4` starts.
#[inline(always)]
fn payload_offset(ctx: &SkBuffContext, l4: usize) -> usize {
    l4 + read::<u8>(ctx, l4 + 12).map_or(20, |b| usize::from(b >> 4) * 4)
}

/// Payload bytes of a TCP or UDP packet whose transport header is at `l4`
/// (for a GSO packet, of all its segments: `len` counts them all).
#[inline(always)]
fn payload(ctx: &SkBuffContext, proto: u8, l4: usize) -> u64 {
    let header = match proto {
        // The data offset: the high four bits of byte 12, in words.
        6 => read::<u8>(ctx, l4 + 12).map_or(20, |b| usize::from(b >> 4) * 4),
        17 | 136 => 8,
        _ => 0,
    };
    u64::from(ctx.len()).saturating_sub((l4 + header) as u64)
}

/// A packet a governed socket receives: its payload counted to the rule
/// that allows its source (as a destination: address, port, protocol).
/// Always passes.
#[inline(always)]
pub fn count_received(ctx: &SkBuffContext) -> i32 {
    let Some(p) = parse(ctx) else {
        return PASS;
    };
    let (class, bit) = class_of(u32::from(p.proto));
    if p.later_fragment || p.options || class == proto_class::OTHER {
        return PASS;
    }
    let bytes = payload(ctx, p.proto, p.l4);
    if bytes == 0 {
        return PASS;
    }
    // A TCP socket with a live record: counted to its rule, no lookup.
    if p.proto == 6 {
        let sk = record::tcp_socket_of(ctx);
        if let Some(r) = (!sk.is_null()).then(|| record::get(sk)).flatten() {
            if r.verdict == RECORD_ALLOWED
                && matches!(POLICIES.get(r.policy), Some(i) if i.table == r.table)
            {
                rules::received(r.rule, bytes);
                return PASS;
            }
        }
    }
    let Some(source) = source_of(ctx, p.dest.family, p.l4) else {
        return PASS;
    };
    let (_, Some(Live { table, .. })) = governing(Caller::Packet(ctx.skb.skb)) else {
        return PASS;
    };
    if let (reason::NONE, rule) = check(table, bit, &source) {
        rules::received(rule, bytes);
    }
    PASS
}

/// The source of a received packet (address and port), as a `Dest`.
#[inline(always)]
fn source_of(ctx: &SkBuffContext, family: u8, l4: usize) -> Option<Dest> {
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let a: [u8; 4] = read(ctx, 12)?;
        addr[..4].copy_from_slice(&a);
    } else {
        addr = read(ctx, 8)?;
    }
    Some(Dest {
        family,
        addr,
        port: u16::from_be(read::<u16>(ctx, l4)?),
    })
}
