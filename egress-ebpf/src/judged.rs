//! Sockets whose peer was judged: a TCP socket the connect hook allowed, or
//! one whose peer the backstop found allowed. Their later segments (no SYN)
//! pass the backstop with this one lookup. A TCP socket that was never
//! judged (an accepted one, whose handshake a SYN cookie may have answered
//! where no program could see it) has each segment judged by its peer
//! until one passes.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    programs::{SkBuffContext, SockAddrContext},
    EbpfContext,
};

use crate::maps::JUDGED;

/// Marks the socket of a connect the hook allowed.
#[inline(always)]
pub fn mark_connect(ctx: &SockAddrContext) {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = JUDGED.insert(cookie, 1, 0);
}

/// The cookie of the socket a packet belongs to (0 when it has none).
#[inline(always)]
pub fn packet_cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Whether the socket with `cookie` was judged.
#[inline(always)]
pub fn is_judged(cookie: u64) -> bool {
    // SAFETY: the value is a plain u8 owned by the map.
    cookie != 0 && unsafe { JUDGED.get(cookie) }.is_some()
}

/// Marks the socket with `cookie` (its peer passed the backstop).
#[inline(always)]
pub fn mark(cookie: u64) {
    if cookie != 0 {
        let _ = JUDGED.insert(cookie, 1, 0);
    }
}
