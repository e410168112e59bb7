//! `PENDING_UDP` and `UNJUDGED`: sockets whose verdict waits for a packet
//! (connected UDP to a refused destination, TCP whose peer no hook judged).

/// `LruHashMap<u64 socket cookie, Event>`: connected UDP sockets whose
/// destination is not allowed, with the event their first datagram reports.
pub const PENDING_UDP: &str = "PENDING_UDP";
/// `LruHashMap<u64 socket cookie, u8>`: TCP sockets whose peer no hook judged.
pub const UNJUDGED: &str = "UNJUDGED";

/// TCP sockets remembered as not judged (accepted ones, and connects audit
/// mode let through). An LRU map: closed sockets' entries go first.
pub const MAX_UNJUDGED_SOCKETS: u32 = 262144;
/// UDP sockets connected to a destination not allowed, whose verdict waits
/// for their first datagram (an LRU map: the oldest go first; a datagram
/// whose socket was pushed out is still dropped, reported without its
/// process).
pub const MAX_PENDING_UDP: u32 = 65536;
