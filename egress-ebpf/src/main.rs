//! egressd's kernel programs: cgroup sock_addr hooks that allow a connect()
//! or an unconnected send only to destinations the governing policy allows.
//!
//! Each program is a thin entry point over `verdict::judge` (or the hook's
//! own judge in `verdict`, `unix`, `packet`); every hook ends in
//! `attempt::Attempt::conclude`, which counts, reports and returns. The maps
//! live in `maps`, the destination decoding in `dest`.
#![no_std]
#![no_main]
// The atomic add of `rules` (the BPF target has no atomic RMW in core;
// the eBPF build takes `-Z build-std`, so it may name the intrinsic).
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

mod attempt;
mod dest;
mod dns;
mod governing;
mod hello;
mod maps;
mod names;
mod packet;
mod record;
mod rules;
mod udp;
mod unix;
mod verdict;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, lsm_cgroup},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext, SockoptContext},
};
use egress_common::hook;

/// TCP connect(), connected UDP, TCP Fast Open, io_uring connect (IPv4 address).
#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    verdict::judge(&ctx, hook::CONNECT4, dest::from_user4(&ctx))
}

/// As `connect4`, for IPv6 addresses; `::ffff:a.b.c.d` is judged as IPv4.
#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    verdict::judge(&ctx, hook::CONNECT6, dest::from_user6(&ctx))
}

/// UDP sendto()/sendmsg()/sendmmsg() with an IPv4 destination (also for
/// mapped addresses on IPv6 sockets), and connected sends carrying control
/// messages, which arrive here without an address.
#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict::judge(&ctx, hook::SENDMSG4, dest::from_send4(&ctx))
}

/// As `sendmsg4`, for IPv6 destinations.
#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict::judge(&ctx, hook::SENDMSG6, dest::from_send6(&ctx))
}

/// bind() with an IPv4 address: a port on an address other than loopback
/// (a socket others could reach) only where a `listen` rule allows it.
#[cgroup_sock_addr(bind4)]
pub fn egress_bind4(ctx: SockAddrContext) -> i32 {
    verdict::judge_bind(&ctx, hook::BIND4, dest::from_user4(&ctx))
}

/// As `bind4`, for IPv6 addresses; `::ffff:a.b.c.d` is judged as IPv4.
#[cgroup_sock_addr(bind6)]
pub fn egress_bind6(ctx: SockAddrContext) -> i32 {
    verdict::judge_bind(&ctx, hook::BIND6, dest::from_user6(&ctx))
}

/// UDP replies: a redirected DNS socket sees the server it asked, not the proxy.
#[cgroup_sock_addr(recvmsg4)]
pub fn egress_recvmsg4(ctx: SockAddrContext) -> i32 {
    dns::unredirect(&ctx, false)
}

/// As `recvmsg4`, for IPv6 sockets.
#[cgroup_sock_addr(recvmsg6)]
pub fn egress_recvmsg6(ctx: SockAddrContext) -> i32 {
    dns::unredirect(&ctx, true)
}

/// getpeername() on a redirected DNS socket shows the server it asked.
#[cgroup_sock_addr(getpeername4)]
pub fn egress_getpeername4(ctx: SockAddrContext) -> i32 {
    dns::unredirect(&ctx, false)
}

/// As `getpeername4`, for IPv6 sockets.
#[cgroup_sock_addr(getpeername6)]
pub fn egress_getpeername6(ctx: SockAddrContext) -> i32 {
    dns::unredirect(&ctx, true)
}

/// connect() of a UNIX socket to a path or abstract name. Placed in a
/// `connect4` section only because aya cannot name `connect_unix`:
/// egressd loads it itself with the right attach type (see
/// `egress-userspace/src/kernel/unix.rs`), never as connect4.
#[cgroup_sock_addr(connect4)]
pub fn egress_connect_unix(ctx: SockAddrContext) -> i32 {
    unix::judge(&ctx, hook::CONNECT_UNIX)
}

/// A UNIX datagram sent to an address; loaded as `sendmsg_unix`, as above.
#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg_unix(ctx: SockAddrContext) -> i32 {
    unix::judge(&ctx, hook::SENDMSG_UNIX)
}

/// socket(): refuses raw and ICMP sockets, which no other hook sees.
#[cgroup_sock(sock_create)]
pub fn egress_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: ctx points at the kernel's bpf_sock; these fields are readable at creation.
    let (family, sock_type, protocol) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.sock).family),
            core::ptr::read_volatile(&(*ctx.sock).type_),
            core::ptr::read_volatile(&(*ctx.sock).protocol),
        )
    };
    verdict::judge_socket(hook::SOCK_CREATE, family, sock_type, protocol)
}

/// socket() of any family (BPF LSM, where it runs): families no cgroup
/// hook sees (AF_VSOCK, AF_PACKET, ...), and netlink protocols other than
/// NETLINK_ROUTE, only where the policy names them. The hook's arguments:
/// `int family, int type, int protocol, int kern`.
#[lsm_cgroup(hook = "socket_create")]
pub fn egress_socket_family(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    verdict::judge_family(family as u32, protocol as u32, kern != 0)
}

/// setsockopt(): refuses source-routing options on governed sockets.
#[cgroup_sockopt(setsockopt)]
pub fn egress_setsockopt(ctx: SockoptContext) -> i32 {
    judge_option(&ctx, governing::Caller::Task)
}

/// As `egress_setsockopt`, finding the policy by the caller's own cgroup
/// only: loaded in its place where the kernel refuses the ancestor walk
/// to setsockopt programs (Linux 5.10).
#[cgroup_sockopt(setsockopt)]
pub fn egress_setsockopt_own_cgroup(ctx: SockoptContext) -> i32 {
    judge_option(&ctx, governing::Caller::TaskOwnCgroup)
}

#[inline(always)]
fn judge_option(ctx: &SockoptContext, caller: governing::Caller) -> i32 {
    // SAFETY: ctx points at the kernel's bpf_sockopt; level and optname are readable.
    let (level, optname) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.sockopt).level),
            core::ptr::read_volatile(&(*ctx.sockopt).optname),
        )
    };
    verdict::judge_option(caller, level, optname)
}

/// Every packet a governed socket sends: the backstop (see `packet`).
#[cgroup_skb(egress)]
pub fn egress_packet(ctx: SkBuffContext) -> i32 {
    packet::judge_packet(&ctx)
}

/// Every packet a governed socket receives: counts the bytes that came
/// from a peer an allowed rule allows (see `rules`). Never drops.
#[cgroup_skb(ingress)]
pub fn egress_packet_in(ctx: SkBuffContext) -> i32 {
    packet::count_received(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
