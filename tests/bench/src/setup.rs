//! What is measured against: the allowlists of each size, as egressd
//! policies and as nftables rules.

use std::{
    fmt::Write as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use egress_tests::{
    egressd::{TempDir, TestCgroup},
    netns::Netns,
};

use crate::{DENIED, TARGET, UPSTREAM};

pub(crate) struct Params {
    pub(crate) reps: usize,
    pub(crate) connects: u64,
    pub(crate) bulk_bytes: u64,
    pub(crate) sizes: Vec<usize>,
    pub(crate) storm: u64,
    pub(crate) dns_queries: u64,
    pub(crate) dns_flood: u64,
}

/// A name the bench policy allows whose answer changes during the run.
pub(crate) const NEW_NAME: &str = "rotating.cdn.test";

/// DNS queries one client keeps in flight when measuring queries/s.
pub(crate) const DNS_WINDOW: u64 = 64;

// ---------------------------------------------------------------- allowlists

/// `n` allowlist entries, mixed /32 and shorter IPv4 prefixes (documentation
/// ranges only) and IPv6 /128 and /64..../48 prefixes in 2001:db8::/32; the
/// benchmark's destinations are among them.
pub(crate) fn entries(n: usize) -> Vec<String> {
    let mut v = vec![format!("{}/32", TARGET.split(':').next().unwrap())];
    'v4: for base in ["198.51.100", "203.0.113"] {
        for i in 2..=254u32 {
            if v.len() >= n / 2 {
                break 'v4;
            }
            if format!("{base}.{i}") == DENIED.split(':').next().unwrap() {
                continue;
            }
            v.push(if i % 7 == 0 {
                format!("{base}.{}/30", i & !3)
            } else {
                format!("{base}.{i}/32")
            });
        }
    }
    let mut i: u64 = 0;
    while v.len() < n {
        let (hi, lo) = ((i >> 16) & 0xffff, i & 0xffff);
        v.push(if i.is_multiple_of(10) {
            format!("2001:db8:{hi:x}:{lo:x}::/64")
        } else {
            format!("2001:db8:{hi:x}:{lo:x}::{:x}/128", i % 9973 + 1)
        });
        i += 1;
    }
    v.sort();
    v.dedup();
    v.truncate(n);
    v
}

/// A policy allowing the benchmark's destination (its rule carries an upload
/// budget the run never reaches, so that every packet pays for counting and
/// budget charging) and `entries` (written to
/// a `cidr_file` beside the policy, as large allowlists are).
pub(crate) fn policy_yaml(
    name: &str,
    cg: &TestCgroup,
    entries: &[String],
    tmp: &TempDir,
) -> String {
    let list = entries.iter().skip(1).fold(String::new(), |mut s, e| {
        let _ = writeln!(s, "{e}");
        s
    });
    let file = format!("{name}.list");
    tmp.write(&file, &list).expect("writing the list");
    // EGRESS_BENCH_BUDGET=0 leaves the budget out (to measure an egressd
    // from before budgets, side by side with this one).
    let budget = if std::env::var("EGRESS_BENCH_BUDGET").as_deref() == Ok("0") {
        ""
    } else {
        "    budget: {upload: 1000 GiB, per: 1d}\n"
    };
    format!(
        "name: {name}\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [8080, 8081]\n    protocol: any\n{budget}  - cidr_file: {file}\n    ports: [8080]\n  - host: {NEW_NAME}\n    ports: [443]\ndns:\n  upstream: [{UPSTREAM}]\n",
        cg.rel_str()
    )
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// nftables' equivalent: in the namespace's output path, drop what the
/// cgroup sends unless its destination is in the set. Loads the sets and
/// the chain in one `nft -f`, timed.
pub(crate) fn nft_load(
    ns: &Netns,
    cg: &TestCgroup,
    entries: &[String],
    tmp: &TempDir,
) -> Result<Duration> {
    let (v4, v6): (Vec<&String>, Vec<&String>) = entries.iter().partition(|e| !e.contains(':'));
    let mut rules = String::from("flush ruleset\ntable inet bench {\n");
    let _ = writeln!(
        rules,
        "  set allow4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}",
        join(&v4)
    );
    if !v6.is_empty() {
        let _ = writeln!(
            rules,
            "  set allow6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {} }} }}",
            join(&v6)
        );
    }
    rules.push_str("}\n");
    let chain = nft_chain_text(cg, !v6.is_empty());
    tmp.write("chain.nft", &chain)?;
    let file = tmp.write("rules.nft", &(rules + &chain))?;
    let t = Instant::now();
    nft_file(ns, &file)?;
    Ok(t.elapsed())
}

/// The output chain that drops what the cgroup sends outside the sets.
pub(crate) fn nft_chain_text(cg: &TestCgroup, with_v6: bool) -> String {
    let level = cg.rel.components().count();
    let path = cg.rel_str();
    let v6 = if with_v6 {
        format!("socket cgroupv2 level {level} \"{path}\" ip6 daddr != @allow6 drop")
    } else {
        format!("socket cgroupv2 level {level} \"{path}\" meta nfproto ipv6 drop")
    };
    format!(
        "table inet bench {{\n  chain out {{ type filter hook output priority 0; policy accept;\n    socket cgroupv2 level {level} \"{path}\" ip daddr != @allow4 drop\n    {v6}\n  }}\n}}\n"
    )
}

/// Takes nftables' output chain out (`on` false) or puts it back.
pub(crate) fn nft_chain(ns: &Netns, on: bool, tmp: &TempDir) -> Result<()> {
    // Fails when the chain is not there, which is what is wanted.
    let _ = ns
        .command("nft")
        .arg("delete chain inet bench out")
        .stderr(Stdio::null())
        .status();
    if on {
        nft_file(ns, &tmp.0.join("chain.nft"))?;
    }
    Ok(())
}

/// `nft -f FILE` in `ns`.
pub(crate) fn nft_file(ns: &Netns, file: &Path) -> Result<()> {
    // nft resolves the cgroup path under /sys/fs/cgroup: mount cgroup2
    // there, in a mount namespace of its own.
    let root = egressd::kernel::mounts::cgroup2_root()?;
    let status = ns
        .command("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /sys/fs/cgroup && nft -f {}",
            root.display(),
            file.display()
        ))
        .status()?;
    if !status.success() {
        bail!("nft -f {} failed", file.display());
    }
    Ok(())
}

pub(crate) fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

pub(crate) fn nft_flush(ns: &Netns) {
    let _ = ns.command("nft").arg("flush ruleset").status();
}
