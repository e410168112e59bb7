//! TCP sockets whose peer no hook judged: accepted ones. A connected socket
//! had its destination judged by the connect hook (and its SYN by the
//! backstop), so its later segments (no SYN) pass the backstop's judgement
//! with one lookup that finds nothing here (those with payload are looked
//! up in the allowlist to be counted to their rule, see `rules`). An accepted socket's handshake may have
//! been answered by a SYN cookie where no program could see it, so the
//! `sock_ops` program puts it here when it is established, and each of its
//! segments is judged by its peer until one passes. A connect that audit
//! mode let through (a destination not allowed) is put here too, so that
//! it is judged again once the policy enforces.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    programs::{SkBuffContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};

use crate::maps::UNJUDGED;

/// Accepted: its peer was never judged.
pub const ACCEPTED: u8 = 1;
/// Let through by audit mode: passes only while the policy audits.
pub const AUDITED: u8 = 2;

/// `BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`: an accepted connection is
/// established (also one a SYN cookie or TCP Fast Open completed).
const PASSIVE_ESTABLISHED: u32 = 5;

/// The sock_ops program: remembers accepted sockets.
#[inline(always)]
pub fn on_sock_op(ctx: &SockOpsContext) {
    if ctx.op() == PASSIVE_ESTABLISHED {
        // SAFETY: the helper takes the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = UNJUDGED.insert(cookie, ACCEPTED, 0);
    }
}

/// Remembers the socket of a connect audit mode let through.
#[inline(always)]
pub fn audited_connect(ctx: &SockAddrContext) {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = UNJUDGED.insert(cookie, AUDITED, 0);
}

/// The cookie of the socket a packet belongs to (0 when it has none).
#[inline(always)]
pub fn packet_cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// What is known of the socket with `cookie`: `None` for one whose peer
/// was judged (connected, or accepted from a peer that passed).
#[inline(always)]
pub fn state(cookie: u64) -> Option<u8> {
    // SAFETY: the value is a plain u8 owned by the map.
    unsafe { UNJUDGED.get(cookie) }.copied()
}

/// The socket's peer passed: its later segments take the cheap path.
#[inline(always)]
pub fn judged(cookie: u64) {
    let _ = UNJUDGED.remove(cookie);
}

/// The socket's peer did not pass, in audit mode: reported once.
#[inline(always)]
pub fn audited(cookie: u64) {
    let _ = UNJUDGED.insert(cookie, AUDITED, 0);
}
