//! `CONFIG`: settings userspace writes once at start, by index.

/// `Array<u64>` of settings, indexed by `crate::config`.
pub const CONFIG: &str = "CONFIG";

/// The network namespace cookie of egressd's own namespace: loopback
/// rules mean loopback there, not in another namespace.
pub const HOST_NETNS_COOKIE: u32 = 0;
pub const LEN: u32 = 4;
