//! Sockets whose peer was judged: a TCP socket the connect hook allowed, or
//! one whose peer the backstop found allowed. Their later segments (no SYN)
//! pass the backstop with this one lookup. A TCP socket that was never
//! judged (an accepted one, whose handshake a SYN cookie may have answered
//! where no program could see it) has each segment judged by its peer
//! until one passes.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    programs::{SkBuffContext, SockAddrContext, SockContext},
    EbpfContext,
};

use crate::maps::JUDGED;

/// The peer was allowed.
pub const ALLOWED: u8 = 1;
/// The peer was not allowed, in audit mode (reported once): passes only
/// while the policy is still in audit mode.
pub const AUDITED: u8 = 2;

/// Marks the socket of a connect the hook let through as `state`.
#[inline(always)]
pub fn mark_connect(ctx: &SockAddrContext, state: u8) {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = JUDGED.insert(cookie, state, 0);
}

/// The cookie of the socket a packet belongs to (0 when it has none).
#[inline(always)]
pub fn packet_cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Whether the socket with `cookie` passes without a lookup: its peer was
/// allowed, or (while `audit`) reported.
#[inline(always)]
pub fn passes(cookie: u64, audit: bool) -> bool {
    if cookie == 0 {
        return false;
    }
    // SAFETY: the value is a plain u8 owned by the map.
    match unsafe { JUDGED.get(cookie) } {
        Some(&ALLOWED) => true,
        Some(&AUDITED) => audit,
        _ => false,
    }
}

/// Marks the socket with `cookie` as `state`.
#[inline(always)]
pub fn mark(cookie: u64, state: u8) {
    if cookie != 0 {
        let _ = JUDGED.insert(cookie, state, 0);
    }
}

/// Forgets a socket as it is released (only TCP sockets are remembered).
#[inline(always)]
pub fn forget(ctx: &SockContext) {
    const IPPROTO_TCP: u32 = 6;
    // SAFETY: ctx points at the kernel's bpf_sock; protocol is readable.
    let protocol = unsafe { core::ptr::read_volatile(&(*ctx.sock).protocol) };
    if protocol == IPPROTO_TCP {
        // SAFETY: the helper takes the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = JUDGED.remove(cookie);
    }
}
