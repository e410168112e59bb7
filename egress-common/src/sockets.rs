//! `SOCKETS` and `PENDING_UDP`: what the programs know about one socket.
//!
//! `SOCKETS` is BPF socket storage (Linux 5.2; the connect programs write
//! it from Linux 5.8): one `SocketRecord` per socket, kept by the kernel
//! with the socket for its whole life and freed with it. It cannot be
//! evicted or outgrown, and a socket the agent never made a record for
//! (an accepted one) has none: its segments are judged by their peer.

/// `SkStorage<SocketRecord>`: the record of each TCP socket whose peer was
/// judged. Created by userspace (socket storage needs BTF for its key and
/// value, which the object does not carry), reused by the loader.
pub const SOCKETS: &str = "SOCKETS";
/// `LruHashMap<u64 socket cookie, Event>`: connected UDP sockets whose
/// destination is not allowed, with the event their first datagram reports.
pub const PENDING_UDP: &str = "PENDING_UDP";

/// UDP sockets connected to a destination not allowed, whose verdict waits
/// for their first datagram (an LRU map: the oldest go first; a datagram
/// whose socket was pushed out is still dropped, reported without its
/// process).
pub const MAX_PENDING_UDP: u32 = 65536;

/// `SocketRecord::verdict`: the peer is allowed by rule `rule` of table
/// `table` of policy `policy`.
pub const RECORD_ALLOWED: u8 = 1;
/// `SocketRecord::verdict`: the peer is not allowed, but the policy
/// audited when it was judged (reported once); judged again once it
/// enforces.
pub const RECORD_AUDITED: u8 = 2;

/// What is known of one TCP socket: the verdict on its peer, and under
/// what it was reached. Written when the peer is judged (the connect
/// hook, or the backstop for a socket whose peer no hook judged: an
/// accepted one), read by the backstop and the ingress counter for each
/// segment. Valid only while `POLICIES[policy].table` is still `table`: a
/// reload makes the next segment judge the peer again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRecord {
    /// `RECORD_ALLOWED` or `RECORD_AUDITED` (0: none).
    pub verdict: u8,
    /// Where the name check stands (`crate::names`: `NAME_FREE`,
    /// `NAME_PENDING`, `NAME_PASSED`, `NAME_REFUSED`).
    pub name: u8,
    pub _pad: [u8; 2],
    /// The slot of the rule that allows the peer (0: none, not counted).
    pub rule: u32,
    /// The policy that judged it.
    pub policy: u32,
    /// That policy's table when it judged.
    pub table: u32,
    /// The process that connected, and its uid (0 for a socket whose peer
    /// the backstop judged): a refusal of the name it presents reports them.
    pub tgid: u32,
    pub uid: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for SocketRecord {}

const _: () = assert!(core::mem::size_of::<SocketRecord>() == 24);
