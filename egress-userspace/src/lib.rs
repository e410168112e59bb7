//! egressd: a default-deny egress enforcer for agents.
//!
//! The library behind the `egressd` binary: policies (`policy`), their
//! compilation into kernel map entries (`compile`), the kernel programs'
//! loading and maps (`kernel`), cgroups and bpffs (`cgroup`, `bpffs`),
//! hostname resolution (`resolve`), the event stream (`events`), metrics
//! (`metrics`), and the commands (`daemon`, `exec`, `check`).
pub mod compile;
pub mod policy;
