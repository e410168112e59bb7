//! DNS through egressd: queries for port 53 (UDP and TCP, any address) are
//! redirected to the governing policy's proxy on 127.0.0.1 or ::1, and the
//! address the client asked for is remembered per socket, so that replies
//! (recvmsg) and getpeername() show it: resolvers such as glibc's drop
//! replies from any other address.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_socket_cookie,
    },
    programs::{SkBuffContext, SockAddrContext},
    EbpfContext,
};
use egress_common::{asker_key, hook, DnsAsker, DnsOrigin, AF_INET, AF_INET6};

use crate::{
    dest::{self, Dest},
    governing::{governing, Caller, Live},
    maps::{DNS_ASKERS, DNS_ORIGIN},
};

const PROXY_V4: [u8; 4] = [127, 0, 0, 1];
const PROXY_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Is `dest` the proxy of a policy whose proxy listens on `dns_port`?
#[inline(always)]
pub fn is_proxy(dest: &Dest, dns_port: u32) -> bool {
    if dns_port == 0 || u32::from(dest.port) != dns_port {
        return false;
    }
    match dest.family {
        AF_INET => dest.addr[..4] == PROXY_V4,
        AF_INET6 => dest.addr == PROXY_V6,
        _ => false,
    }
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: ctx is the program's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn write_ip6(ctx: &SockAddrContext, addr: [u8; 16]) {
    // SAFETY: user_ip6 is writable in these programs, with 4-byte stores.
    unsafe {
        let p = addr_of_mut!((*ctx.sock_addr).user_ip6) as *mut u32;
        let mut i = 0;
        while i < 4 {
            let w = [
                addr[i * 4],
                addr[i * 4 + 1],
                addr[i * 4 + 2],
                addr[i * 4 + 3],
            ];
            write_volatile(p.add(i), u32::from_ne_bytes(w));
            i += 1;
        }
    }
}

#[inline(always)]
fn write_ip4(ctx: &SockAddrContext, addr: [u8; 4]) {
    // SAFETY: user_ip4 is writable in these programs.
    unsafe {
        write_volatile(
            addr_of_mut!((*ctx.sock_addr).user_ip4),
            u32::from_ne_bytes(addr),
        )
    }
}

#[inline(always)]
fn write_port(ctx: &SockAddrContext, port: u16) {
    // SAFETY: user_port is writable in these programs.
    unsafe {
        write_volatile(
            addr_of_mut!((*ctx.sock_addr).user_port),
            u32::from(port.to_be()),
        )
    }
}

/// Sends this connect or send to the proxy instead of `dest`.
#[inline(always)]
pub fn redirect(ctx: &SockAddrContext, hook: u8, dest: &Dest, dns_port: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let origin = DnsOrigin {
        addr: dest.addr,
        port: dest.port,
        family: dest.family,
        _pad: 0,
        _pad2: 0,
        asker: DnsAsker {
            // SAFETY: a helper without arguments.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            pid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        },
    };
    let _ = DNS_ORIGIN.insert(cookie(ctx), origin, 0);
    if hook == hook::CONNECT4 || hook == hook::SENDMSG4 {
        write_ip4(ctx, PROXY_V4);
    } else {
        write_ip6(ctx, PROXY_V6);
    }
    write_port(ctx, dns_port as u16);
}

/// recvmsg and getpeername: if the peer is the proxy of the caller's policy
/// and this socket was redirected, show the address it asked for. These
/// programs must always return 1.
#[inline(always)]
pub fn unredirect(ctx: &SockAddrContext, v6: bool) -> i32 {
    // SAFETY: the map value is plain data owned by the map.
    let Some(origin) = (unsafe { DNS_ORIGIN.get(cookie(ctx)) }).copied() else {
        return 1;
    };
    let Some(Live { dns_port, .. }) = governing(Caller::Task).1 else {
        return 1;
    };
    let peer = if v6 {
        dest::from_user6(ctx)
    } else {
        dest::from_user4(ctx)
    };
    // A v6 socket may get the reply of a mapped v4 query as ::ffff:127.0.0.1,
    // which from_user6 returns as IPv4.
    if !is_proxy(&peer, dns_port) {
        return 1;
    }
    if !v6 {
        if origin.family == AF_INET {
            write_ip4(
                ctx,
                [
                    origin.addr[0],
                    origin.addr[1],
                    origin.addr[2],
                    origin.addr[3],
                ],
            );
            write_port(ctx, origin.port);
        }
        return 1;
    }
    let addr = if origin.family == AF_INET {
        let a = origin.addr;
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    } else {
        origin.addr
    };
    write_ip6(ctx, addr);
    write_port(ctx, origin.port);
    1
}

/// The backstop, on a query leaving for the proxy from source port `sport`:
/// remembers who asked under that port, for the proxy's events (it sees
/// only a socket). Written only when it changed.
#[inline(always)]
pub fn note_asker(ctx: &SkBuffContext, family: u8, protocol: u8, sport: u16) {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain data owned by the map.
    let Some(origin) = (unsafe { DNS_ORIGIN.get(cookie) }) else {
        return;
    };
    let key = asker_key(family, protocol, sport);
    // SAFETY: as above.
    if unsafe { DNS_ASKERS.get(key) } != Some(&origin.asker) {
        let _ = DNS_ASKERS.insert(key, origin.asker, 0);
    }
}
