//! The kernel side of every map. Userspace writes all of them but `COUNTERS`
//! and `EVENTS`, which the programs write and userspace reads.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use egress_common::{
    Budget, BudgetState, DnsAsker, DnsOrigin, Event, Hello, NameKey, PolicyInfo, PortSet,
    RuleStats, UnixKey, V4Key, V6Key, COUNTERS_LEN, EVENTS_BYTES, MAX_ALLOW_ENTRIES, MAX_CGROUPS,
    MAX_DNS_ASKERS, MAX_DNS_SOCKETS, MAX_NAME_ENTRIES, MAX_PENDING_UDP, MAX_POLICIES, MAX_PORTSETS,
    MAX_RULE_SLOTS, MAX_UNIX_ENTRIES,
};

/// Cgroup id -> policy id, for each governed cgroup. Written by userspace when
/// it attaches; read by every program (the current cgroup, then its ancestors).
#[map(name = "CGROUP_POLICY")]
pub static CGROUP_POLICY: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CGROUPS, 0);

/// Policy id -> live table id and mode. Written by userspace on load and on
/// reload (one update switches a policy to its new table); read by every program.
#[map(name = "POLICIES")]
pub static POLICIES: Array<PolicyInfo> = Array::with_max_entries(MAX_POLICIES, 0);

/// (table id, IPv4 prefix) -> portset id. Written by userspace from static
/// rules and resolved hostnames; read by every program.
#[map(name = "ALLOW_V4")]
pub static ALLOW_V4: LpmTrie<V4Key, u32> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);

/// (table id, IPv6 prefix) -> portset id. As `ALLOW_V4`.
#[map(name = "ALLOW_V6")]
pub static ALLOW_V6: LpmTrie<V6Key, u32> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);

/// Portset id -> port ranges and protocols. Written by userspace; each set
/// already includes the ports of every shorter prefix that covers its entry.
#[map(name = "PORTSETS")]
pub static PORTSETS: Array<PortSet> = Array::with_max_entries(MAX_PORTSETS, 0);

/// Per-CPU counters by (policy, verdict, protocol class, reason), and lost
/// events per policy; see `egress_common::counter_index`. Written by the
/// programs, summed by userspace. Exact even when `EVENTS` is full.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Denied and audited attempts, one `egress_common::Event` each. Written by
/// the programs, drained by userspace.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Socket cookie -> the DNS server a redirected socket asked for. Written by
/// the connect/sendmsg programs when they redirect DNS to the proxy; read by
/// the recvmsg and getpeername programs. Userspace does not touch it.
#[map(name = "DNS_ORIGIN")]
pub static DNS_ORIGIN: LruHashMap<u64, DnsOrigin> =
    LruHashMap::with_max_entries(MAX_DNS_SOCKETS, 0);

/// Socket cookie -> the event of a UDP connect() to a destination not
/// allowed (see `udp`). Written by the connect programs, read by the
/// backstop when it drops that socket's datagram. Least recently used go
/// first: a datagram whose socket was pushed out is still dropped, and
/// reported without its process.
#[map(name = "PENDING_UDP")]
pub static PENDING_UDP: LruHashMap<u64, Event> = LruHashMap::with_max_entries(MAX_PENDING_UDP, 0);

/// Query source port (see `egress_common::asker_key`) -> the process that
/// sent it. Written by the backstop as a redirected query leaves for the
/// proxy; read by userspace when the proxy reports a query.
#[map(name = "DNS_ASKERS")]
pub static DNS_ASKERS: LruHashMap<u32, DnsAsker> = LruHashMap::with_max_entries(MAX_DNS_ASKERS, 0);

/// (table id, UNIX socket name) -> `egress_common::unix_entry`: the names
/// a policy's `channels.unix` allows, and the name-service sockets it
/// refuses quietly. Written by userspace with the table; read by the UNIX
/// programs.
#[map(name = "UNIX_ALLOW")]
pub static UNIX_ALLOW: LpmTrie<UnixKey, u32> = LpmTrie::with_max_entries(MAX_UNIX_ENTRIES, 0);

/// Settings written by userspace at load, read by the programs; see
/// `egress_common::config`.
#[map(name = "CONFIG")]
pub static CONFIG: Array<u64> = Array::with_max_entries(egress_common::config::LEN, 0);

/// Rule slot -> what went through that rule, per CPU (see `rules`).
/// Written by the programs, summed by userspace.
#[map(name = "RULE_STATS")]
pub static RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULE_SLOTS, 0);

/// Rule slot -> its upload budget (bytes 0: none). Written by userspace.
#[map(name = "BUDGETS")]
pub static BUDGETS: Array<Budget> = Array::with_max_entries(MAX_RULE_SLOTS, 0);

/// Rule slot -> its budget's current window. Written by the programs.
#[map(name = "BUDGET_STATE")]
pub static BUDGET_STATE: Array<BudgetState> = Array::with_max_entries(MAX_RULE_SLOTS, 0);

/// (table id, address, name) -> the port set of the host rules for which
/// the policy's DNS answered the name with the address (see `names`).
/// Written by userspace with the learned addresses; read by the backstop.
#[map(name = "NAMES")]
pub static NAMES: HashMap<NameKey, u32> = HashMap::with_max_entries(MAX_NAME_ENTRIES, NO_PREALLOC);

/// Per CPU, two scratch spaces where the backstop reads a connection's
/// first bytes (see `names`).
#[map(name = "HELLO")]
pub static HELLO: PerCpuArray<Hello> = PerCpuArray::with_max_entries(2, 0);

/// Per CPU, how many `HELLO` slots are in use.
#[map(name = "HELLO_DEPTH")]
pub static HELLO_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC`: entries are allocated as they are written.
const NO_PREALLOC: u32 = 1;

/// Adds one to a counter slot.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, touched only by this CPU while this program runs.
        unsafe { *slot += 1 };
    }
}
