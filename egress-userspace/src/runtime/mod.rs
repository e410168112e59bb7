//! What runs while the daemon runs: the supervisor, the only owner of which
//! cgroup is governed by which policy (`supervisor`); the cgroups it is
//! told of by inotify (`watch`); the node's pods (`pod_watch` hears of
//! them from the API server, `kubernetes` says which policy selects each
//! and where its cgroup is, `pods` governs them).

pub mod kubernetes;
pub mod pod_cgroups;
pub mod pod_memory;
pub mod pod_watch;
pub mod pods;
pub mod supervisor;
pub mod watch;
