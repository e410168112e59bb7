//! egressd: a default-deny egress enforcer for agents.
//!
//! The library behind the `egressd` binary: policies (`policy`), their
//! compilation into kernel map entries (`compile`), the kernel programs and
//! their maps (`kernel`), the running state (`enforcer`), cgroups and the
//! filesystems they need (`cgroup`, `mounts`), hostname resolution
//! (`resolve`) and the agent's DNS proxy (`dns`), learned addresses
//! (`learned`), the event stream (`events`), metrics (`metrics`), and the
//! commands (`daemon`, `exec`, `check`, `explain`) and their usage errors
//! (`usage`).
pub mod cgroup;
pub mod check;
pub mod compile;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod enforcer;
pub mod events;
pub mod exec;
pub mod explain;
pub mod governed;
pub mod governor;
pub mod kernel;
pub mod kubernetes;
pub mod landlock;
pub mod learned;
pub mod metrics;
pub mod mounts;
pub mod policy;
pub mod resolve;
pub mod seccomp;
pub mod usage;
pub mod watch;
