//! Types shared by egressd's kernel programs and its userspace.
//!
//! Every type here is `#[repr(C)]` with explicit padding, so that the kernel
//! and userspace agree on its layout byte for byte. With the `user` feature
//! they implement `aya::Pod` so userspace can read and write them in maps.
#![no_std]

/// Map names, shared so the two halves of a map never drift apart.
pub mod map_names {
    /// `HashMap<u64 cgroup id, u32 policy id>`: the cgroups a policy governs.
    pub const CGROUP_POLICY: &str = "CGROUP_POLICY";
    /// `Array<PolicyInfo>` indexed by policy id.
    pub const POLICIES: &str = "POLICIES";
    /// `LpmTrie<V4Key, u32 portset id>`: allowed IPv4 prefixes.
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// `LpmTrie<V6Key, u32 portset id>`: allowed IPv6 prefixes.
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// `Array<PortSet>` indexed by portset id.
    pub const PORTSETS: &str = "PORTSETS";
    /// `PerCpuArray<u64>` indexed by [`crate::counter_index`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Ring buffer of [`crate::Event`]s.
    pub const EVENTS: &str = "EVENTS";
    /// `LruHashMap<u64 socket cookie, DnsOrigin>`.
    pub const DNS_ORIGIN: &str = "DNS_ORIGIN";
    /// `LruHashMap<u32 asker_key, DnsAsker>`: who sent the queries the
    /// proxy receives, by source port.
    pub const DNS_ASKERS: &str = "DNS_ASKERS";
    /// `LruHashMap<u64 socket cookie, Event>`: connected UDP sockets whose
    /// destination is not allowed, with the event their first datagram reports.
    pub const PENDING_UDP: &str = "PENDING_UDP";
    /// `LruHashMap<u64 socket cookie, u8>`: TCP sockets whose peer no hook judged.
    pub const UNJUDGED: &str = "UNJUDGED";
    /// `Array<u64>` of settings, indexed by `crate::config`.
    pub const CONFIG: &str = "CONFIG";
    /// `LpmTrie<UnixKey, u32 unix_entry flags>`: UNIX socket names a policy
    /// allows (or refuses quietly).
    pub const UNIX_ALLOW: &str = "UNIX_ALLOW";
}

/// Program names (the function names in the eBPF crate).
pub mod program_names {
    pub const CONNECT4: &str = "egress_connect4";
    pub const CONNECT6: &str = "egress_connect6";
    pub const SENDMSG4: &str = "egress_sendmsg4";
    pub const SENDMSG6: &str = "egress_sendmsg6";
    pub const SOCK_CREATE: &str = "egress_sock_create";
    pub const SETSOCKOPT: &str = "egress_setsockopt";
    /// Loaded (and pinned as `SETSOCKOPT`) where the kernel refuses that.
    pub const SETSOCKOPT_OWN_CGROUP: &str = "egress_setsockopt_own_cgroup";
    pub const RECVMSG4: &str = "egress_recvmsg4";
    pub const RECVMSG6: &str = "egress_recvmsg6";
    pub const GETPEERNAME4: &str = "egress_getpeername4";
    pub const GETPEERNAME6: &str = "egress_getpeername6";
    pub const PACKET_EGRESS: &str = "egress_packet";
    pub const SOCK_OPS: &str = "egress_sock_ops";
    pub const BIND4: &str = "egress_bind4";
    pub const BIND6: &str = "egress_bind6";
    /// `lsm_cgroup/socket_create` (BPF LSM, Linux 6.0), where the LSM runs.
    pub const SOCKET_FAMILY: &str = "egress_socket_family";
    /// Loaded by egressd itself as `cgroup/connect_unix` (Linux 6.7).
    pub const CONNECT_UNIX: &str = "egress_connect_unix";
    /// Loaded by egressd itself as `cgroup/sendmsg_unix` (Linux 6.7).
    pub const SENDMSG_UNIX: &str = "egress_sendmsg_unix";
}

/// Policy ids run from 1 to `MAX_POLICIES - 1`; 0 means "no policy found".
pub const MAX_POLICIES: u32 = 256;
/// Port ranges one destination prefix may carry.
pub const MAX_PORT_RANGES: usize = 16;
/// Distinct port sets, over all policies of one daemon.
pub const MAX_PORTSETS: u32 = 16384;
/// Governed cgroups, over all policies of one daemon.
pub const MAX_CGROUPS: u32 = 16384;
/// Entries in each allow trie.
pub const MAX_ALLOW_ENTRIES: u32 = 4 * 1024 * 1024;
/// Deepest cgroup level the kernel walks when looking for a governing ancestor.
pub const MAX_CGROUP_DEPTH: i32 = 32;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 22;

/// `PolicyInfo::mode`: refuse what is not allowed.
pub const MODE_ENFORCE: u32 = 0;
/// `PolicyInfo::mode`: allow everything, but report what would be refused.
pub const MODE_AUDIT: u32 = 1;

/// Protocol bits in [`PortRange::protos`].
pub const PROTO_BIT_TCP: u8 = 1;
pub const PROTO_BIT_UDP: u8 = 2;

/// Value of `POLICIES[policy id]`.
///
/// `table` is the id under which the policy's prefixes are stored in the
/// allow tries; 0 means the policy is not live and everything is refused.
/// A reload writes a new table, then switches `table` in one update.
/// `dns_port` is the port of the policy's DNS proxy on 127.0.0.1 and ::1,
/// where DNS (port 53, UDP and TCP, any address) is redirected; 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyInfo {
    pub table: u32,
    pub mode: u32,
    pub dns_port: u32,
    /// Port set of the ports the policy lets its processes listen on
    /// (bind to a port on an address other than loopback); 0: none.
    pub listen_set: u32,
    /// Socket families the policy opens beyond UNIX, IP and netlink: bit
    /// n for family n (`channels.families`), judged where BPF LSM runs.
    pub families: u64,
}

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
/// TCP sockets remembered as not judged (accepted ones, and connects audit
/// mode let through). An LRU map: closed sockets' entries go first.
pub const MAX_UNJUDGED_SOCKETS: u32 = 262144;
/// UDP sockets connected to a destination not allowed, whose verdict waits
/// for their first datagram (an LRU map: the oldest go first; a datagram
/// whose socket was pushed out is still dropped, reported without its
/// process).
pub const MAX_PENDING_UDP: u32 = 65536;

/// Data part of an IPv4 allow-trie key: table id (big endian), then the address.
/// The trie's prefix length counts the 32 table bits too.
pub type V4Key = [u8; 8];
/// Data part of an IPv6 allow-trie key: table id (big endian), then the address.
pub type V6Key = [u8; 20];
/// Bits of the table id at the head of every trie key.
pub const TABLE_BITS: u32 = 32;

/// One range of destination ports, inclusive, for the protocols in `protos`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    pub protos: u8,
    pub _pad: [u8; 3],
}

/// The ports a prefix allows: `ranges[..count]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub count: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet {
            count: 0,
            ranges: [PortRange::default(); MAX_PORT_RANGES],
        }
    }
}

/// Indexes into the `CONFIG` array.
pub mod config {
    /// The network namespace cookie of egressd's own namespace: loopback
    /// rules mean loopback there, not in another namespace.
    pub const HOST_NETNS_COOKIE: u32 = 0;
    pub const LEN: u32 = 4;
}

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
}

/// Verdicts, as counted and reported.
pub mod verdict {
    pub const ALLOWED: u8 = 0;
    pub const DENIED: u8 = 1;
    /// Would have been refused, allowed because the policy is in audit mode.
    pub const AUDITED: u8 = 2;
    pub const COUNT: u32 = 3;
}

/// Protocol classes, as counted.
pub mod proto_class {
    pub const TCP: u8 = 0;
    pub const UDP: u8 = 1;
    pub const OTHER: u8 = 2;
    pub const COUNT: u32 = 3;
}

/// Why an attempt was refused (or would have been, in audit mode).
pub mod reason {
    /// Allowed.
    pub const NONE: u8 = 0;
    /// No allow rule covers the destination address.
    pub const NO_RULE: u8 = 1;
    /// The address is allowed, but not this port or protocol.
    pub const PORT: u8 = 2;
    /// The socket's protocol is neither TCP nor UDP.
    pub const PROTOCOL: u8 = 3;
    /// The program ran, but the calling task's cgroup is governed by no
    /// policy of this daemon, or the policy is not live (fail closed).
    pub const NO_POLICY: u8 = 4;
    /// An unconnected send without a destination address.
    pub const NO_DEST: u8 = 5;
    /// A socket other than TCP stream or UDP datagram (raw, ICMP, SCTP,
    /// ...), which could send without passing the connect and send hooks.
    pub const SOCKET: u8 = 6;
    /// A source-routing option (setsockopt), or a packet carrying IPv4
    /// options or IPv6 routing, hop-by-hop or destination-options headers.
    pub const IP_OPTIONS: u8 = 7;
    /// A packet (egress backstop) whose real destination is not allowed.
    pub const PACKET: u8 = 8;
    /// Loopback of a network namespace other than egressd's.
    pub const OTHER_NETNS_LOOPBACK: u8 = 9;
    /// A bind to a port on an address other than loopback (a listening
    /// socket others could reach) that no `listen` rule allows.
    pub const LISTEN: u8 = 10;
    /// A UNIX socket name (path or abstract) the policy does not allow.
    pub const UNIX: u8 = 11;
    /// A name-service daemon's UNIX socket (nscd, systemd-resolved): it
    /// would resolve names past egressd's DNS proxy. Refused without an
    /// event: every glibc lookup tries nscd first.
    pub const NAME_SERVICE: u8 = 12;
    pub const COUNT: u32 = 13;
}

/// Counter slots per policy: one per (verdict, protocol class, reason), then
/// the lost-event slot.
pub const COUNTERS_PER_POLICY: u32 = 128;
/// Slot (within a policy's counters) counting events the ring buffer could not take.
pub const LOST_SLOT: u32 = verdict::COUNT * proto_class::COUNT * reason::COUNT;
/// Length of the `COUNTERS` per-CPU array.
pub const COUNTERS_LEN: u32 = MAX_POLICIES * COUNTERS_PER_POLICY;

/// Index into `COUNTERS` for one (policy, verdict, protocol class, reason).
#[inline(always)]
pub const fn counter_index(policy: u32, verdict: u8, proto: u8, reason: u8) -> u32 {
    policy * COUNTERS_PER_POLICY
        + (verdict as u32 * proto_class::COUNT + proto as u32) * reason::COUNT
        + reason as u32
}

/// Index into `COUNTERS` of a policy's lost-event counter.
#[inline(always)]
pub const fn lost_index(policy: u32) -> u32 {
    policy * COUNTERS_PER_POLICY + LOST_SLOT
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

/// Bytes of `sun_path` in a `sockaddr_un`.
pub const UNIX_PATH_MAX: usize = 108;
/// Data part of a `UNIX_ALLOW` trie key: table id (big endian), then the
/// name. A path is its bytes, NUL-padded; an abstract name is a 0 byte,
/// its length, then its bytes (up to 107), so that names differing only
/// in length differ. An exact path's entry covers its terminating NUL; a
/// directory's (ending in `/`) covers everything beneath it.
pub type UnixKey = [u8; UNIX_KEY_LEN];
/// 4 + 109 bytes, rounded up so that the trie key (with its 4-byte prefix
/// length) has no padding: batched writes lay keys end to end.
pub const UNIX_KEY_LEN: usize = 4 + 112;
/// Entries in `UNIX_ALLOW`, over all policies of one daemon.
pub const MAX_UNIX_ENTRIES: u32 = 16384;

/// Values of `UNIX_ALLOW`.
pub mod unix_entry {
    /// The policy allows this name.
    pub const ALLOW: u32 = 1;
    /// A name-service socket: refused (`reason::NAME_SERVICE`), no event.
    pub const NAME_SERVICE: u32 = 2;
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

pub const AF_UNIX: u8 = 1;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::PolicyInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortRange {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsOrigin {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsAsker {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixEvent {}
}

// Layout checks: a change that adds padding fails to compile.
const _: () = assert!(core::mem::size_of::<Event>() == 72);
const _: () = assert!(core::mem::size_of::<UnixEvent>() == 72 + 112);
const _: () = assert!(core::mem::size_of::<PortRange>() == 8);
const _: () = assert!(core::mem::size_of::<PortSet>() == 4 + 8 * MAX_PORT_RANGES);
const _: () = assert!(core::mem::size_of::<PolicyInfo>() == 24);
const _: () = assert!(core::mem::size_of::<DnsOrigin>() == 64);
const _: () = assert!(core::mem::size_of::<DnsAsker>() == 40);
const _: () = assert!(LOST_SLOT < COUNTERS_PER_POLICY);
