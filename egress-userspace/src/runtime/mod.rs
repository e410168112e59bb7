//! What runs while the daemon runs: the supervisor, the only owner of which
//! cgroup is governed by which policy (`supervisor`); the cgroups it is
//! told of by inotify (`watch`) and by the node's pods (`kubernetes`).

pub mod kubernetes;
pub mod pods;
pub mod supervisor;
pub mod watch;
