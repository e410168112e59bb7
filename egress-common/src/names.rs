//! `NAMES` and `HELLO`: the names a policy's own DNS answered with an
//! address, and the scratch space where the backstop reads the name a
//! connection presents (the TLS ClientHello's server_name, or the Host of
//! a plain HTTP request).
//!
//! A TCP connection whose peer only host rules allow (its port matches
//! only ranges marked [`RANGE_NAMED`]) must, in its first bytes, name a
//! host that this policy's DNS answered with this address, for a rule
//! that allows this port: `NAMES[(table, address, name)]` is the port set
//! of the host rules that bound the name there.

/// `HashMap<NameKey, u32 portset id>`: written by userspace with each
/// policy's learned addresses, read by the backstop.
pub const NAMES: &str = "NAMES";
/// `PerCpuArray<Hello>` (two slots: a program interrupted by a softirq
/// that runs the backstop too keeps its own).
pub const HELLO: &str = "HELLO";
/// `PerCpuArray<u32>`: the `HELLO` slots in use on this CPU.
pub const HELLO_DEPTH: &str = "HELLO_DEPTH";

/// Name bindings over all policies of one daemon.
pub const MAX_NAME_ENTRIES: u32 = 65536;
/// Bytes of a name in a key: a DNS name is at most 253.
pub const NAME_LEN: usize = 256;
/// Bytes of a connection's first data the backstop reads: a TLS record
/// (at most 16 KiB and its 5-byte header), or an HTTP request's head.
pub const HELLO_LEN: usize = 16384;
/// Bytes of the presented name an event carries.
pub const EVENT_NAME_LEN: usize = 128;

/// `PortRange::flags`: the range comes from a host rule that checks
/// names. A peer whose port only such ranges match is named (see above);
/// one that any other range matches (an `ip` or `cidr` rule, or a host
/// rule with `any_name_at_address`) is not.
pub const RANGE_NAMED: u8 = 1;

/// `SocketRecord::name`: the peer needs no name (or the socket is not
/// the agent's client).
pub const NAME_FREE: u8 = 0;
/// The first bytes sent must name a host bound to the peer's address.
pub const NAME_PENDING: u8 = 1;
/// They did: the connection goes on.
pub const NAME_PASSED: u8 = 2;
/// They did not: nothing more leaves.
pub const NAME_REFUSED: u8 = 3;

/// A name bound to an address in a policy's table. `name` is lower case,
/// zero-padded (a name holds no zero byte).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameKey {
    pub table: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    pub _pad: [u8; 3],
    /// An IPv4 address fills the first 4 bytes.
    pub addr: [u8; 16],
    pub name: [u8; NAME_LEN],
}

impl Default for NameKey {
    fn default() -> Self {
        NameKey {
            table: 0,
            family: 0,
            _pad: [0; 3],
            addr: [0; 16],
            name: [0; NAME_LEN],
        }
    }
}

/// The backstop's scratch space: a connection's first data, and the key
/// it looks up.
#[repr(C)]
pub struct Hello {
    pub key: NameKey,
    /// Where the parser passes an index through memory (see the eBPF
    /// crate's `hello`).
    pub slot: u32,
    /// What the parser found (`presented`; 0: more bytes are needed), and
    /// where the name is: written and read back, so that the verifier
    /// checks what follows once, not once per way the parser ends.
    pub what: u32,
    pub off: u32,
    pub len: u32,
    /// How many bytes of `data` are the connection's (the parser reads it
    /// afresh for each comparison: see the eBPF crate's `hello`).
    pub n: u32,
    /// The segment: its destination port, where its payload starts (from
    /// the IP header), its payload bytes, and whether the policy audits;
    /// kept here too, so that every way into the judge is one.
    pub port: u32,
    pub start: u32,
    pub bytes: u32,
    pub audit: u32,
    pub _pad: u32,
    /// The first data, and 8 bytes of slack past `HELLO_LEN`.
    pub data: [u8; HELLO_LEN + 8],
}

/// A connection refused for the name it presented (or for presenting
/// none), sent through `EVENTS` like an `Event`, longer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameEvent {
    pub event: crate::Event,
    /// The name as presented (not lower-cased), `name[..len]`; `len` 0:
    /// none was. Cut at `EVENT_NAME_LEN` (`cut` is then 1).
    pub name: [u8; EVENT_NAME_LEN],
    pub len: u8,
    pub cut: u8,
    /// What the first bytes were (`presented`).
    pub presented: u8,
    pub _pad: [u8; 5],
    /// The socket's cookie: userspace destroys the socket, so that its
    /// client fails at once rather than waiting for its timeout.
    pub cookie: u64,
}

/// `NameEvent::presented`.
pub mod presented {
    /// A TLS ClientHello with a server_name.
    pub const TLS: u8 = 1;
    /// A plain HTTP request with a Host.
    pub const HTTP: u8 = 2;
    /// A ClientHello without server_name.
    pub const TLS_NO_SNI: u8 = 3;
    /// A ClientHello offering Encrypted Client Hello.
    pub const TLS_ECH: u8 = 4;
    /// A ClientHello this parser cannot read whole: split over several
    /// TLS records, too many extensions, lengths that disagree.
    pub const TLS_UNREAD: u8 = 5;
    /// An HTTP request without a readable Host.
    pub const HTTP_NO_HOST: u8 = 6;
    /// Anything else: no name.
    pub const OTHER: u8 = 7;
    /// A UDP datagram (QUIC or any other): no name is judged on UDP.
    pub const DATAGRAM: u8 = 8;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::NameKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NameEvent {}
}

const _: () = assert!(core::mem::size_of::<NameKey>() == 280);
const _: () = assert!(core::mem::size_of::<NameEvent>() == 72 + 144);
