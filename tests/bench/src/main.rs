//! `egress-bench`: what egressd costs, measured side by side with no
//! enforcement (the floor) and with nftables, in one run, inside a
//! throwaway network namespace. Run by `cargo xtask bench` (root).
//!
//! `egress-bench run [--smoke] [--out DIR]` measures and writes
//! BENCHMARKS.md and bench-results.json; `egress-bench client ...` is the
//! workload, started inside the cgroup under test.

use std::path::PathBuf;

use anyhow::{bail, Result};

mod client;
mod measure;
mod report;
mod run;
mod setup;

use client::client;
use run::run;

pub(crate) const TARGET: &str = "198.51.100.1:8080";
pub(crate) const BULK: &str = "198.51.100.1:8081";
pub(crate) const DENIED: &str = "203.0.113.9:8080";
/// The same address as `TARGET`, on a port a host rule allows: a
/// connection there must name its host (see `run`'s "names").
pub(crate) const NAMED: &str = "198.51.100.1:8443";
pub(crate) const UPSTREAM: &str = "198.51.100.53:53";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("client") => client(&args[1..]),
        Some("run") => {
            let smoke = args.iter().any(|a| a == "--smoke");
            let out = args
                .iter()
                .position(|a| a == "--out")
                .and_then(|i| args.get(i + 1))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            let only = args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .cloned();
            run(smoke, &out, only.as_deref())
        }
        _ => bail!(
            "usage: egress-bench run [--smoke] [--out DIR] [--only connect|storm|dns] | client ..."
        ),
    }
}
