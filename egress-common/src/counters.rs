//! `COUNTERS`: per-CPU counts by (policy, verdict, protocol class,
//! reason), exact even when the event ring buffer overflows.

use crate::policies::MAX_POLICIES;

/// `PerCpuArray<u64>` indexed by [`crate::counter_index`].
pub const COUNTERS: &str = "COUNTERS";

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

/// Why an attempt was refused (or would have been, in audit mode). Each
/// reason is spelled one way everywhere: its constant's name, lower-cased,
/// is what events, metrics, `status` and the docs say (`NAMES`).
pub mod reason {
    /// Defines each reason's constant and `NAMES`, from one list.
    macro_rules! reasons {
        ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
            $($(#[$doc])* pub const $name: u8 = $value;)*
            /// Each reason's name, by its value (upper-case; output is
            /// lower-case).
            pub const NAMES: [&str; COUNT as usize] = {
                let mut names = [""; COUNT as usize];
                $(names[$value] = stringify!($name);)*
                names
            };
        };
    }
    reasons! {
        /// Allowed.
        NONE = 0,
        /// No allow rule covers the destination address.
        DESTINATION_NOT_ALLOWED = 1,
        /// The address is allowed, but not this port or protocol.
        PORT_NOT_ALLOWED = 2,
        /// The socket's protocol is neither TCP nor UDP.
        PROTOCOL_NOT_ALLOWED = 3,
        /// The program ran, but the calling task's cgroup is governed by no
        /// policy of this daemon, or the policy is not live (fail closed).
        NO_POLICY = 4,
        /// An unconnected send without a destination address.
        NO_DESTINATION = 5,
        /// A socket other than TCP stream or UDP datagram (raw, ICMP, SCTP,
        /// ...), which could send without passing the connect and send hooks.
        SOCKET_NOT_ALLOWED = 6,
        /// A source-routing option (setsockopt), or a packet carrying IPv4
        /// options or IPv6 routing, hop-by-hop or destination-options headers.
        IP_OPTIONS = 7,
        /// A packet (egress backstop) whose real destination is not allowed.
        PACKET_DESTINATION_NOT_ALLOWED = 8,
        /// Loopback of a network namespace other than egressd's.
        LOOPBACK_OF_ANOTHER_NETNS = 9,
        /// A bind to a port on an address other than loopback (a listening
        /// socket others could reach) that no `listen` rule allows.
        LISTEN_NOT_ALLOWED = 10,
        /// A UNIX socket name (path or abstract) the policy does not allow.
        UNIX_NOT_ALLOWED = 11,
        /// A name-service daemon's UNIX socket (nscd, systemd-resolved): it
        /// would resolve names past egressd's DNS proxy. Refused without an
        /// event: every glibc lookup tries nscd first.
        NAME_SERVICE_SOCKET = 12,
        /// The rule allowing the destination has spent its upload budget for
        /// the current window.
        BUDGET_SPENT = 13,
        /// A connection to an address only host rules allow did not name, in
        /// its first bytes, a host this policy's DNS answered with that
        /// address for a rule allowing the port (or named none: no SNI,
        /// Encrypted Client Hello, neither TLS nor HTTP); or a UDP datagram
        /// to such an address, on which no name is judged.
        NAME_NOT_AT_ADDRESS = 14,
    }
    pub const COUNT: u32 = 15;
}

/// Counter slots per policy: one per (verdict, protocol class, reason), then
/// the lost-event slot.
pub const COUNTERS_PER_POLICY: u32 = 256;
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

const _: () = assert!(LOST_SLOT < COUNTERS_PER_POLICY);
