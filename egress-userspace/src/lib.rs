//! egressd: a default-deny egress enforcer for agents.
//!
//! The library behind the `egressd` binary, in layers; each imports only
//! from the layers below it (ARCHITECTURE.md draws the map, and
//! `cargo xtask lint` checks it):
//!
//! - `cli`: one module per command: its options, then a call below.
//! - `runtime`: the running system: the engine `run` and `exec` share, the
//!   daemon's loop, `exec`'s session, the supervisor (the only owner of
//!   which cgroup is governed by which policy), Kubernetes pods, cgroup
//!   watches.
//! - `confine`: Landlock and seccomp around the command `exec` starts.
//! - `learn`: a policy learned from a run's events.
//! - `dns`: the agent's DNS proxy, its upstreams, egressd's own lookups and
//!   the sweep of expired addresses.
//! - `report`: deny events, metrics, and the control socket.
//! - `state`: the allowlist: installed policies, their learned addresses,
//!   and the views the DNS proxy reads.
//! - `kernel`: the programs, their maps and pins, cgroups and mounts.
//! - `compile`: a policy as kernel map entries.
//! - `policy`: policy files, read and validated.
pub mod cli;
pub mod runtime;

pub mod confine;
pub mod learn;

pub mod dns;
pub mod report;

pub mod state;

pub mod kernel;

pub mod compile;

pub mod policy;
