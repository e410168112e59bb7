//! Connected UDP: its verdict waits for the first datagram. glibc's
//! getaddrinfo connects a UDP socket to each candidate address only to
//! learn the source address it would use, and sends nothing; refusing that
//! connect() reported a denial for every allowed request. So a UDP connect
//! to a destination the allowlist does not allow succeeds, and its event
//! (with the process, which a packet does not carry) is kept by socket
//! cookie; the backstop judges every UDP datagram by its real destination,
//! drops the first one to that destination (the send fails with EPERM) and
//! reports the kept event then. Only the allowlist's own verdicts wait
//! (`NO_RULE`, `PORT`, `NAME`), which the backstop repeats exactly; a loopback of
//! another network namespace is refused at connect, as before.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    programs::{SkBuffContext, SockAddrContext},
    EbpfContext,
};
use egress_common::{reason, Event};

use crate::{dest::Dest, maps::PENDING_UDP};

/// Whether a connect refused for `why` waits for its first datagram.
#[inline(always)]
pub fn waits(why: u8) -> bool {
    why == reason::DESTINATION_NOT_ALLOWED
        || why == reason::PORT_NOT_ALLOWED
        || why == reason::NAME_NOT_AT_ADDRESS
}

/// Keeps the event of a UDP connect that waits.
#[inline(always)]
pub fn defer(ctx: &SockAddrContext, event: &Event) {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = PENDING_UDP.insert(cookie, event, 0);
}

/// The kept event of the socket a dropped datagram to `dest` belongs to,
/// if that socket's connect waited for it.
#[inline(always)]
pub fn deferred(ctx: &SkBuffContext, dest: &Dest) -> Option<(u64, Event)> {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is plain data owned by the map.
    let e = *unsafe { PENDING_UDP.get(cookie) }?;
    let same = e.family == dest.family && e.port == dest.port && e.addr == dest.addr;
    same.then_some((cookie, e))
}

/// Forgets a kept event (audit mode reports it once).
#[inline(always)]
pub fn forget(cookie: u64) {
    let _ = PENDING_UDP.remove(cookie);
}

/// Forgets the kept event of the socket a refused send belongs to.
#[inline(always)]
pub fn forget_socket(ctx: &SockAddrContext) {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    forget(cookie);
}
