//! The running system. `engine` is what `run` and `exec` both start (the
//! programs, the governor, the event streams); `daemon` drives it for
//! `run`, `session` for one command under `exec`. The supervisor is the
//! only owner of which cgroup is governed by which policy (`supervisor`);
//! `watch` tells it of recreated cgroups (inotify); the node's pods
//! (`pod_watch` hears of them from the API server, `kubernetes` says which
//! policy selects each and where its cgroup is, `pods` governs them,
//! `pod_cgroups` finds kubelet's cgroups, `pod_memory` keeps what was
//! decided across restarts).

pub mod daemon;
pub mod engine;
pub mod kubernetes;
pub mod pod_cgroups;
pub mod pod_memory;
pub mod pod_watch;
pub mod pods;
pub mod session;
pub mod supervisor;
pub mod watch;
