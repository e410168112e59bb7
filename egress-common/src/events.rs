//! `EVENTS`: the ring buffer of refused (and audited) attempts.

use crate::unix::UNIX_PATH_MAX;

/// Ring buffer of [`crate::Event`]s.
pub const EVENTS: &str = "EVENTS";

/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 22;

/// Which program saw the attempt.
pub mod hook {
    pub const CONNECT4: u8 = 1;
    pub const CONNECT6: u8 = 2;
    pub const SENDMSG4: u8 = 3;
    pub const SENDMSG6: u8 = 4;
    pub const SOCK_CREATE: u8 = 5;
    pub const SETSOCKOPT: u8 = 6;
    /// The cgroup_skb egress backstop.
    pub const PACKET_EGRESS: u8 = 7;
    pub const BIND4: u8 = 8;
    pub const BIND6: u8 = 9;
    /// connect() of a UNIX socket (stream, datagram, seqpacket).
    pub const CONNECT_UNIX: u8 = 10;
    /// A UNIX datagram sent to an address (sendto, sendmsg with msg_name).
    pub const SENDMSG_UNIX: u8 = 11;
    /// socket() of any family (BPF LSM): `Event::family` is the family.
    pub const SOCKET_FAMILY: u8 = 12;
    /// listen() (exec's seccomp supervisor): the address and port are the
    /// socket's own (0 when it is not bound: the kernel would pick one).
    pub const LISTEN: u8 = 13;
}

/// One refused (or audited) attempt, sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub cgroup_id: u64,
    /// Thread id (the kernel's pid).
    pub pid: u32,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub policy_id: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// `AF_INET` (2) or `AF_INET6` (10): the family the destination is judged as.
    pub family: u8,
    /// IP protocol number of the socket (6 TCP, 17 UDP, ...).
    pub protocol: u8,
    /// Destination address; an IPv4 address fills the first 4 bytes.
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    pub reason: u8,
    pub verdict: u8,
    pub hook: u8,
    pub _pad: [u8; 5],
}

/// A refused (or audited) UNIX connect or send, with the name it was
/// aimed at; sent through `EVENTS` like an `Event`, longer. `event.family`
/// is `AF_UNIX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixEvent {
    pub event: Event,
    /// `sun_path` as given: `name[..len]`; an abstract name starts with 0.
    pub name: [u8; UNIX_PATH_MAX],
    pub len: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixEvent {}
}

const _: () = assert!(core::mem::size_of::<Event>() == 72);
const _: () = assert!(core::mem::size_of::<UnixEvent>() == 72 + 112);
