//! Confining the command `egressd exec` starts, beyond its cgroup's
//! programs: Landlock keeps it from taking over processes outside its
//! cgroup (`landlock`), seccomp from making sockets no hook sees
//! (`seccomp`), and egressd judges its `listen()` calls (`listen`, on the
//! filter's listener, which `handover` brings from the child); `spawn`
//! starts it, moved into its cgroup and confined before it runs anything
//! of its own.

pub mod handover;
pub mod landlock;
pub mod listen;
pub mod seccomp;
pub mod spawn;
