//! `CGROUP_POLICY` and `POLICIES`: which policy governs a cgroup, and what
//! the programs read of each policy.

/// `HashMap<u64 cgroup id, u32 policy id>`: the cgroups a policy governs.
pub const CGROUP_POLICY: &str = "CGROUP_POLICY";
/// `Array<PolicyInfo>` indexed by policy id.
pub const POLICIES: &str = "POLICIES";

/// Policy ids run from 1 to `MAX_POLICIES - 1`; 0 means "no policy found".
pub const MAX_POLICIES: u32 = 256;
/// `CGROUP_POLICY` value of a released cgroup: one below a cgroup the
/// programs are attached to (the kubepods parent, where a pod is refused
/// everything until it is classified) that no policy governs, such as a
/// pod no policy selects. Everything it does passes, uncounted and
/// unreported, as if no program were attached.
pub const POLICY_RELEASED: u32 = u32::MAX;
/// Governed cgroups, over all policies of one daemon.
pub const MAX_CGROUPS: u32 = 16384;
/// Deepest cgroup level the kernel walks when looking for a governing ancestor.
pub const MAX_CGROUP_DEPTH: i32 = 32;

/// `PolicyInfo::mode`: refuse what is not allowed.
pub const MODE_ENFORCE: u32 = 0;
/// `PolicyInfo::mode`: allow everything, but report what would be refused.
pub const MODE_AUDIT: u32 = 1;

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
    /// Non-zero when a rule of the policy carries an upload budget: then a
    /// connection whose destination has left the allowlist (its address
    /// expired or was pushed out, or a reload removed it) sends no more
    /// data, which no rule's budget would be charged for.
    pub budgets: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for PolicyInfo {}

const _: () = assert!(core::mem::size_of::<PolicyInfo>() == 32);
