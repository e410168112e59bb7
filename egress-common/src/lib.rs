//! Types shared by egressd's kernel programs and its userspace, one module
//! per map (as kunai does): its name, its key and value types, its size,
//! and the functions that build its keys, so that the two halves of a map
//! never drift apart. The kernel half of each map is in the eBPF crate's
//! `maps.rs`; userspace takes its handles in `kernel::Maps`.
//!
//! Every type here is `#[repr(C)]` with explicit padding, so that the kernel
//! and userspace agree on its layout byte for byte. With the `user` feature
//! they implement `aya::Pod` so userspace can read and write them in maps.
#![no_std]

pub mod allow;
pub mod config;
pub mod counters;
pub mod dns;
pub mod events;
pub mod names;
pub mod policies;
pub mod portsets;
pub mod rules;
pub mod sockets;
pub mod unix;

pub use allow::{V4Key, V6Key, MAX_ALLOW_ENTRIES, TABLE_BITS};
pub use counters::{
    counter_index, lost_index, proto_class, reason, verdict, COUNTERS_LEN, COUNTERS_PER_POLICY,
    LOST_SLOT,
};
pub use dns::{asker_key, DnsAsker, DnsOrigin, MAX_DNS_ASKERS, MAX_DNS_SOCKETS};
pub use events::{hook, Event, UnixEvent, EVENTS_BYTES};
pub use names::{
    presented, Hello, NameEvent, NameKey, EVENT_NAME_LEN, HELLO_LEN, MAX_NAME_ENTRIES, NAME_FREE,
    NAME_LEN, NAME_PASSED, NAME_PENDING, NAME_REFUSED, RANGE_NAMED,
};
pub use policies::{
    PolicyInfo, MAX_CGROUPS, MAX_CGROUP_DEPTH, MAX_POLICIES, MODE_AUDIT, MODE_ENFORCE,
    POLICY_RELEASED,
};
pub use portsets::{
    PortRange, PortSet, MAX_PORTSETS, MAX_PORT_RANGES, PROTO_BIT_TCP, PROTO_BIT_UDP,
};
pub use rules::{Budget, BudgetState, RuleStats, MAX_RULE_SLOTS};
pub use sockets::{SocketRecord, MAX_PENDING_UDP, RECORD_ALLOWED, RECORD_AUDITED};
pub use unix::{unix_entry, UnixKey, MAX_UNIX_ENTRIES, UNIX_KEY_LEN, UNIX_PATH_MAX};

/// Every map's name, as both halves look it up.
pub mod map_names {
    pub use crate::{
        allow::{ALLOW_V4, ALLOW_V6},
        config::CONFIG,
        counters::COUNTERS,
        dns::{DNS_ASKERS, DNS_ORIGIN},
        events::EVENTS,
        names::{HELLO, HELLO_DEPTH, NAMES},
        policies::{CGROUP_POLICY, POLICIES},
        portsets::PORTSETS,
        rules::{BUDGETS, BUDGET_STATE, RULE_STATS},
        sockets::{PENDING_UDP, SOCKETS},
        unix::UNIX_ALLOW,
    };
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
    /// Every packet a governed socket receives: bytes in, by the rule that
    /// allows its source.
    pub const PACKET_INGRESS: &str = "egress_packet_in";
    pub const BIND4: &str = "egress_bind4";
    pub const BIND6: &str = "egress_bind6";
    /// `lsm_cgroup/socket_create` (BPF LSM, Linux 6.0), where the LSM runs.
    pub const SOCKET_FAMILY: &str = "egress_socket_family";
    /// Loaded by egressd itself as `cgroup/connect_unix` (Linux 6.7).
    pub const CONNECT_UNIX: &str = "egress_connect_unix";
    /// Loaded by egressd itself as `cgroup/sendmsg_unix` (Linux 6.7).
    pub const SENDMSG_UNIX: &str = "egress_sendmsg_unix";
}

pub const AF_UNIX: u8 = 1;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
