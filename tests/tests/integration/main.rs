//! egressd's integration tests: real BPF programs in real cgroups, real
//! sockets in network namespaces the tests make, real clients. One binary,
//! one module per area (as aya's own integration tests are laid out); run
//! as root through `cargo xtask test`, one test at a time. A module is
//! also the unit `cargo xtask vm-test --files` names.

mod alerts_live;
mod bench_smoke;
mod bpffs;
mod channels;
mod cli;
mod container;
mod daemon;
mod dns;
mod docs;
mod kubernetes;
mod learn;
mod leftovers;
mod live_view;
mod loopback;
mod names;
mod permitted;
mod prometheus;
mod raw_sockets;
mod reload;
mod rewritten;
mod side_doors;
mod source_routing;
mod systemd;
mod systemd_live;
mod unix_sockets;
mod verdicts;
