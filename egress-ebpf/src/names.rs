//! Names, not addresses. A TCP connection whose peer only host rules
//! allow (its record's name check is `NAME_PENDING`) must name, in its
//! first bytes, a host that this policy's DNS answered with the peer's
//! address, for a rule that allows the peer's port: the TLS ClientHello's
//! server_name, or the Host of a plain HTTP request (see `hello`).
//!
//! The backstop judges the first segment that carries data. Until the
//! name is judged, nothing the socket sends leaves: a segment holding only
//! part of the ClientHello (or request head) is dropped, which the sending
//! socket takes as a failed transmission, not a loss. Its bytes stay
//! unsent in the socket, the next write joins them in the same segment,
//! and that segment is judged whole: no round trip is added, and no
//! retransmission is waited for. A name that passes is remembered in the
//! record (`NAME_PASSED`), and the connection is counted to the rule that
//! bound the name. One that does not is reported (`reason::NAME_NOT_AT_ADDRESS`, with the
//! name) and the socket sends no data again (`NAME_REFUSED`).

use aya_ebpf::{
    bindings::bpf_sock, helpers::bpf_skb_load_bytes, programs::SkBuffContext, EbpfContext,
};
use egress_common::{
    presented, proto_class, reason, SocketRecord, EVENT_NAME_LEN, HELLO_LEN, NAME_LEN, NAME_PASSED,
    NAME_REFUSED, PROTO_BIT_TCP,
};

use crate::{
    attempt::{emit_name, tally, Attempt},
    dest::Dest,
    governing::Caller,
    hello,
    maps::{HELLO, HELLO_DEPTH, NAMES},
    record, rules,
    verdict::find_range,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

/// One segment with data of a socket whose name is pending: `bytes` of
/// payload from `off` (from the IP header) to `dest`, under record `r`.
/// Returns the backstop's verdict.
#[inline(always)]
pub fn judge(
    ctx: &SkBuffContext,
    dest: &Dest,
    off: usize,
    bytes: u64,
    sk: *mut bpf_sock,
    r: SocketRecord,
    audit: bool,
) -> i32 {
    let Some(depth) = HELLO_DEPTH.get_ptr_mut(0) else {
        return DROP;
    };
    // SAFETY: this CPU's counter; a softirq that interrupts this program
    // restores it before this program goes on.
    let level = unsafe { *depth };
    if level >= 2 {
        return DROP;
    }
    unsafe { *depth = level + 1 };
    let v = judge_in(ctx, level, dest, off, bytes, sk, r, audit);
    unsafe { *depth = level };
    v
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn judge_in(
    ctx: &SkBuffContext,
    level: u32,
    dest: &Dest,
    off: usize,
    bytes: u64,
    sk: *mut bpf_sock,
    r: SocketRecord,
    audit: bool,
) -> i32 {
    let Some(h) = HELLO.get_ptr_mut(level) else {
        return DROP;
    };
    // SAFETY: this CPU's scratch slot at this depth, ours while we run.
    let h = unsafe { &mut *h };
    // The segment, through memory: whichever way (IPv4, IPv6, which
    // header lengths) led here, the verifier goes on from one state.
    // SAFETY: fields of this CPU's scratch slot.
    // (The address stays in the key; read back whole, it would take a
    // stack slot per byte.)
    let (port, off, bytes, audit) = unsafe {
        use core::ptr::{read_volatile as get, write_volatile as put};
        put(&mut h.key.family, dest.family);
        put(&mut h.key.addr, dest.addr);
        put(&mut h.port, u32::from(dest.port));
        put(&mut h.start, off as u32);
        put(&mut h.bytes, bytes.min(u64::from(u32::MAX)) as u32);
        put(&mut h.audit, u32::from(audit));
        let bytes = u64::from(get(&h.bytes));
        (
            get(&h.port) as u16,
            get(&h.start) as usize & 0xffff,
            bytes,
            get(&h.audit) != 0,
        )
    };
    if bytes == 0 {
        return PASS;
    }
    let avail = if bytes < HELLO_LEN as u64 {
        bytes as usize
    } else {
        HELLO_LEN
    };
    // (Kept from the compiler: the verifier wants to see the bounds.)
    let n = (core::hint::black_box(avail - 1) & (HELLO_LEN - 1)) + 1;
    // SAFETY: the context's skb; `n` bytes fit the buffer.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr(),
            off as u32,
            h.data.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if loaded < 0 {
        return DROP;
    }
    // SAFETY: a field of this CPU's scratch slot.
    unsafe { core::ptr::write_volatile(&mut h.n, n as u32) };
    let bounds = hello::Bounds {
        n: &h.n,
        slot: &mut h.slot,
        hits: &mut h.len,
        at: &mut h.off,
    };
    let seen = hello::read(&h.data, bounds);
    // Through memory: one state for the verifier to carry on with.
    // SAFETY: fields of this CPU's scratch slot.
    let seen = unsafe {
        core::ptr::write_volatile(
            &mut h.what,
            if seen.partial {
                0
            } else {
                u32::from(seen.what)
            },
        );
        core::ptr::write_volatile(&mut h.off, seen.off as u32);
        core::ptr::write_volatile(&mut h.len, seen.len as u32);
        hello::Seen {
            what: core::ptr::read_volatile(&h.what) as u8,
            partial: core::ptr::read_volatile(&h.what) == 0,
            off: core::ptr::read_volatile(&h.off) as usize & (HELLO_LEN - 1),
            len: core::ptr::read_volatile(&h.len) as usize & (NAME_LEN - 1),
        }
    };
    if seen.partial && !audit {
        return DROP;
    }
    let rule = if seen.partial {
        None
    } else {
        bound_rule(ctx, h, r.table, port, off, seen)
    };
    if let Some(rule) = rule {
        // Over budget: dropped, and still pending, so that what TCP sends
        // again is judged again (its pages may have changed since).
        if !rules::charge(rule, bytes, false) && !audit {
            return DROP;
        }
        record::set(
            sk,
            SocketRecord {
                name: NAME_PASSED,
                rule,
                ..r
            },
        );
        return PASS;
    }
    // Refused: reported once; the socket sends nothing more (audit lets
    // it go on, and judges it again once the policy enforces).
    record::set(
        sk,
        SocketRecord {
            name: NAME_REFUSED,
            ..r
        },
    );
    let what = if seen.partial {
        presented::TLS_UNREAD
    } else {
        seen.what
    };
    report(ctx, h, port, &r, what, seen.len, audit)
}

/// The rule that allows the name `seen` found at the key's address on
/// `port`: the key is completed in `h.key` (the name lower-cased), then
/// looked up.
#[inline(always)]
fn bound_rule(
    ctx: &SkBuffContext,
    h: &mut egress_common::Hello,
    table: u32,
    port: u16,
    off: usize,
    seen: hello::Seen,
) -> Option<u32> {
    if seen.what != presented::TLS && seen.what != presented::HTTP {
        // Nothing to show in the event.
        h.key.name[0] = 0;
        return None;
    }
    h.key.table = table;
    h.key._pad = [0; 3];
    let words = h.key.name.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < NAME_LEN / 8 {
        // SAFETY: inside the 256-byte name (8-aligned in the map value).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    let len = (core::hint::black_box(seen.len.wrapping_sub(1)) & (NAME_LEN - 1)) + 1;
    // SAFETY: the context's skb; at most 256 bytes into the name.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr(),
            (off + seen.off) as u32,
            h.key.name.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if loaded < 0 {
        return None;
    }
    let mut j = 0;
    while j < NAME_LEN / 8 {
        // SAFETY: inside the name, as above.
        unsafe {
            core::ptr::write_volatile(words.add(j), lower(core::ptr::read_volatile(words.add(j))))
        };
        j += 1;
    }
    // "api.model.test\0\0" would make the key of "api.model.test".
    if h.key.name[(len - 1) & (NAME_LEN - 1)] == 0 {
        return None;
    }
    // SAFETY: the key is a plain value in the scratch map.
    // By reference: the key lives in the map value (a copy would take 280
    // bytes of the 512-byte stack).
    #[allow(clippy::needless_borrows_for_generic_args)]
    let set = unsafe { NAMES.get(&h.key) }.copied()?;
    find_range(set, PROTO_BIT_TCP, port).map(|(rule, _)| rule)
}

/// The eight bytes of `w` with ASCII upper case made lower case, without
/// a branch (one path for the verifier).
#[inline(always)]
fn lower(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES << 7;
    let low7 = w & !HIGH;
    let above_z = low7.wrapping_add(ONES * u64::from(0x7f - b'Z'));
    let from_a = low7.wrapping_add(ONES * u64::from(0x80 - b'A'));
    let upper = (from_a ^ above_z) & !w & HIGH;
    w | (upper >> 2)
}

/// Counts the refusal and reports it, with the name presented.
#[inline(always)]
fn report(
    ctx: &SkBuffContext,
    h: &egress_common::Hello,
    port: u16,
    r: &SocketRecord,
    what: u8,
    len: usize,
    audit: bool,
) -> i32 {
    if !audit {
        rules::name_refused(r.rule);
    }
    let v = tally(
        r.policy,
        audit,
        reason::NAME_NOT_AT_ADDRESS,
        proto_class::TCP,
    );
    let Some(v) = v else {
        return PASS;
    };
    let attempt = Attempt {
        caller: Caller::Packet(ctx.skb.skb),
        policy: r.policy,
        hook: egress_common::hook::PACKET_EGRESS,
        protocol: 6,
        class: proto_class::TCP,
        dest: Dest {
            family: h.key.family,
            addr: h.key.addr,
            port,
        },
    };
    let mut event = attempt.event(v, reason::NAME_NOT_AT_ADDRESS);
    event.pid = r.tgid;
    event.tgid = r.tgid;
    event.uid = r.uid;
    let named = what == presented::TLS || what == presented::HTTP;
    let shown = if !named {
        0
    } else if len > EVENT_NAME_LEN {
        EVENT_NAME_LEN
    } else {
        len
    };
    // SAFETY: the context's skb.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) };
    let cut = (named && len > EVENT_NAME_LEN) as u8;
    emit_name(&event, &h.key.name, shown as u8, cut, what, cookie);
    if audit {
        PASS
    } else {
        DROP
    }
}
