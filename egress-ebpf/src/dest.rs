//! Decoding the destination a sock_addr program is asked about.
//!
//! `user_ip4`, `user_ip6` and `user_port` are in network byte order, the port
//! in the low 16 bits. An IPv4-mapped IPv6 address is returned as IPv4, so
//! that it is judged by the IPv4 rules whichever hook sees it.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{bindings::bpf_sock, programs::SockAddrContext};
use egress_common::{AF_INET, AF_INET6};

/// A destination: an IPv4 address fills `addr[..4]`; `family` 0 means
/// there is none. (Not an `Option`: the verifier refuses the uninitialised
/// bytes the compiler leaves in a `None`.)
#[derive(Clone, Copy)]
pub struct Dest {
    pub family: u8,
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
}

impl Dest {
    pub const NONE: Dest = Dest {
        family: 0,
        addr: [0; 16],
        port: 0,
    };
}

#[inline(always)]
fn v4(ip_be: u32, port_be: u16) -> Dest {
    let mut addr = [0u8; 16];
    let b = ip_be.to_ne_bytes();
    addr[0] = b[0];
    addr[1] = b[1];
    addr[2] = b[2];
    addr[3] = b[3];
    Dest {
        family: AF_INET,
        addr,
        port: u16::from_be(port_be),
    }
}

/// An IPv6 address given as four network-order words; mapped IPv4 becomes IPv4.
#[inline(always)]
fn v6(w: [u32; 4], port_be: u16) -> Dest {
    if w[0] == 0 && w[1] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        return v4(w[3], port_be);
    }
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    Dest {
        family: AF_INET6,
        addr,
        port: u16::from_be(port_be),
    }
}

#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: ctx points at the kernel's bpf_sock_addr; 4-byte loads are allowed.
    unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_port)) as u16 }
}

#[inline(always)]
fn user_family(ctx: &SockAddrContext) -> u32 {
    // SAFETY: as above.
    unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_family)) }
}

#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> [u32; 4] {
    // SAFETY: as above; each word is read with its own 4-byte load.
    unsafe {
        let p = addr_of!((*ctx.sock_addr).user_ip6) as *const u32;
        [
            read_volatile(p),
            read_volatile(p.add(1)),
            read_volatile(p.add(2)),
            read_volatile(p.add(3)),
        ]
    }
}

#[inline(always)]
fn sock(ctx: &SockAddrContext) -> *const bpf_sock {
    // SAFETY: `sk` is a read-only, never-null socket pointer in sock_addr programs.
    unsafe { read_volatile(addr_of!((*ctx.sock_addr).__bindgen_anon_1.sk)) as *const bpf_sock }
}

/// connect4: the address the caller passed.
#[inline(always)]
pub fn from_user4(ctx: &SockAddrContext) -> Dest {
    // SAFETY: as above.
    let ip = unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_ip4)) };
    v4(ip, user_port(ctx))
}

/// connect6: the address the caller passed.
#[inline(always)]
pub fn from_user6(ctx: &SockAddrContext) -> Dest {
    v6(user_ip6(ctx), user_port(ctx))
}

/// sendmsg4: the address passed with the datagram, or, for a connected
/// socket sending with control messages (`user_family` 0, all-zero
/// address), the socket's connected destination. A non-zero address with
/// family 0 is judged as given: udp_sendmsg sends to an AF_UNSPEC address.
#[inline(always)]
pub fn from_send4(ctx: &SockAddrContext) -> Dest {
    let given = from_user4(ctx);
    if user_family(ctx) != 0 || given.port != 0 || given.addr != [0; 16] {
        return given;
    }
    let sk = sock(ctx);
    if sk.is_null() {
        return Dest::NONE;
    }
    // SAFETY: sk is a full socket; dst_ip4 is a 4-byte field, dst_port a 2-byte one.
    let (ip, port) = unsafe {
        (
            read_volatile(addr_of!((*sk).dst_ip4)),
            read_volatile(addr_of!((*sk).dst_port)),
        )
    };
    if ip == 0 {
        return Dest::NONE;
    }
    v4(ip, port)
}

/// sendmsg6: as `from_send4`, for IPv6.
#[inline(always)]
pub fn from_send6(ctx: &SockAddrContext) -> Dest {
    let given = from_user6(ctx);
    if user_family(ctx) != 0 || given.port != 0 || given.addr != [0; 16] {
        return given;
    }
    let sk = sock(ctx);
    if sk.is_null() {
        return Dest::NONE;
    }
    // SAFETY: as in from_send4; each word of dst_ip6 is read with a 4-byte load.
    let (w, port) = unsafe {
        let p = addr_of!((*sk).dst_ip6) as *const u32;
        (
            [
                read_volatile(p),
                read_volatile(p.add(1)),
                read_volatile(p.add(2)),
                read_volatile(p.add(3)),
            ],
            read_volatile(addr_of!((*sk).dst_port)),
        )
    };
    if w == [0; 4] {
        return Dest::NONE;
    }
    v6(w, port)
}
