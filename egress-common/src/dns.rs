//! `DNS_ORIGIN` and `DNS_ASKERS`: what a redirected DNS socket asked for,
//! and which process sent each query the proxy receives.

/// `LruHashMap<u64 socket cookie, DnsOrigin>`.
pub const DNS_ORIGIN: &str = "DNS_ORIGIN";
/// `LruHashMap<u32 asker_key, DnsAsker>`: who sent the queries the
/// proxy receives, by source port.
pub const DNS_ASKERS: &str = "DNS_ASKERS";

/// The destination a redirected DNS socket asked for, by socket cookie, so
/// that replies and getpeername() show it instead of the proxy's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrigin {
    /// IPv4 in the first 4 bytes for `AF_INET`.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub _pad2: u32,
    /// The process that made the redirected connect or send.
    pub asker: DnsAsker,
}

/// The process behind a query the DNS proxy receives, so that its events
/// can name it (the proxy sees only a socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsAsker {
    pub cgroup_id: u64,
    /// Thread id (the kernel's pid).
    pub pid: u32,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
}

/// Key of `DNS_ASKERS`: a query's source port as the proxy sees it, with
/// its family (`AF_INET`, `AF_INET6`) and protocol (6, 17).
pub const fn asker_key(family: u8, protocol: u8, port: u16) -> u32 {
    (family as u32) << 24 | (protocol as u32) << 16 | port as u32
}

/// Proxied DNS sockets remembered (an LRU map: old ones fall out).
pub const MAX_DNS_SOCKETS: u32 = 65536;
/// Source ports of DNS queries remembered with their process (an LRU map).
pub const MAX_DNS_ASKERS: u32 = 65536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::DnsOrigin {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsAsker {}
}

const _: () = assert!(core::mem::size_of::<DnsOrigin>() == 64);
const _: () = assert!(core::mem::size_of::<DnsAsker>() == 40);
