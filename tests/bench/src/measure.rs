//! Measuring: repeated runs of the client, their statistics, and the
//! programs' own run counts and times.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use egress_tests::{dns::DnsServer, egressd::TestCgroup, netns::Netns};
use serde_json::{json, Value};

use crate::{
    setup::{Params, NEW_NAME},
    BULK, TARGET, UPSTREAM,
};

// ---------------------------------------------------------------- measuring

/// Median, min, max of repeated measurements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stat {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

pub(crate) fn json_stat(s: Stat) -> Value {
    json!({"median": s.median, "min": s.min, "max": s.max})
}

/// Runs the client in `cg` inside `ns`, `reps` times; returns its first
/// printed number of each run.
pub(crate) fn measure(cg: &TestCgroup, ns: &Netns, args: &[&str], reps: usize) -> Result<Vec<f64>> {
    (0..reps)
        .map(|_| {
            Ok(client_output(cg, ns, args)?
                .split_whitespace()
                .next()
                .context("no output")?
                .parse()?)
        })
        .collect()
}

/// Runs the client once in `cg` inside `ns`; returns what it printed.
pub(crate) fn client_output(cg: &TestCgroup, ns: &Netns, args: &[&str]) -> Result<String> {
    let me = std::env::current_exe()?;
    let o = cg
        .command(ns, &me)
        .arg("client")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !o.status.success() {
        bail!(
            "client {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// How long a DNS answer takes through egressd's proxy when it carries an
/// address not yet allowed (egressd adds it to the allowlist before it
/// answers), in ms: the upstream's answer changes before each query.
pub(crate) fn admission_latency(
    cg: &TestCgroup,
    ns: &Netns,
    upstream: &DnsServer,
    p: &Params,
) -> Result<Stat> {
    let mut ms = Vec::new();
    for i in 0..p.reps * 4 {
        let ip = format!("198.51.100.{}", 100 + i);
        upstream.set(NEW_NAME, &[&ip], 300);
        let out = client_output(cg, ns, &["dns", UPSTREAM, NEW_NAME, "1"])?;
        let t: f64 = out.trim().parse().context("dns client output")?;
        ms.push(t / 1e6);
    }
    Ok(stat(ms))
}

/// Name, total run time (ns) and run count of each loaded egressd program
/// (`egress_*`), read with the bpf(2) syscall (bpf_prog_info).
pub(crate) fn program_stats() -> Vec<(String, u64, u64)> {
    const GET_NEXT_ID: i64 = 11;
    const GET_FD_BY_ID: i64 = 13;
    const GET_INFO_BY_FD: i64 = 15;
    let bpf = |cmd: i64, attr: &mut [u64; 16]| -> i64 {
        // SAFETY: a zero-padded bpf_attr covering the fields these commands use.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128) }
    };
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id); // start_id
        if bpf(GET_NEXT_ID, &mut attr) < 0 {
            break;
        }
        id = (attr[0] >> 32) as u32; // next_id
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id); // prog_id
        let fd = bpf(GET_FD_BY_ID, &mut attr);
        if fd < 0 {
            continue;
        }
        let mut info = [0u64; 32];
        let mut attr = [0u64; 16];
        // struct { u32 bpf_fd; u32 info_len; u64 info; }
        attr[0] = fd as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        let ok = bpf(GET_INFO_BY_FD, &mut attr) == 0;
        // SAFETY: a descriptor the kernel gave us.
        unsafe { libc::close(fd as i32) };
        if !ok {
            continue;
        }
        // bpf_prog_info: name[16] at byte 64, run_time_ns at 192, run_cnt at 200.
        let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let name = String::from_utf8_lossy(&bytes[64..80])
            .trim_end_matches('\0')
            .to_string();
        if name.starts_with("egress_") {
            out.push((name, info[24], info[25]));
        }
    }
    out
}

/// Per TCP connect+close and per UDP connect(): the in-kernel time of each
/// egressd program (ns, summed over its runs) and how often it ran.
pub(crate) fn program_costs(cg: &TestCgroup, ns: &Netns, p: &Params) -> Result<Value> {
    let connects = p.connects.to_string();
    let bytes = p.bulk_bytes.to_string();
    // (kind, client arguments, how many units it does: connects, or MB).
    let passes: [(&str, [&str; 3], f64); 3] = [
        ("tcp", ["tcp", TARGET, &connects], p.connects as f64),
        ("udp", ["udp", TARGET, &connects], p.connects as f64),
        ("bulk", ["bulk", BULK, &bytes], p.bulk_bytes as f64 / 1e6),
    ];
    with_stats(|| program_passes(cg, ns, &passes))
}

/// Runs `f` with the kernel's BPF run-time statistics on (they add a
/// clock read per run, so timed passes run without).
pub(crate) fn with_stats(f: impl FnOnce() -> Result<Value>) -> Result<Value> {
    let knob = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(knob).unwrap_or_default();
    std::fs::write(knob, "1").context("enabling BPF run-time statistics")?;
    let result = f();
    // Put back, whatever happened.
    let _ = std::fs::write(knob, before.trim());
    result
}

/// Each pass (kind, client arguments, units it does), once: the kernel's
/// run time of each program per unit.
pub(crate) fn program_passes(
    cg: &TestCgroup,
    ns: &Netns,
    passes: &[(&str, [&str; 3], f64)],
) -> Result<Value> {
    let mut result = json!({});
    for &(kind, args, units) in passes {
        let sum = || {
            let mut m = std::collections::BTreeMap::<String, (u64, u64)>::new();
            for (name, t, c) in program_stats() {
                let e = m.entry(name).or_default();
                *e = (e.0 + t, e.1 + c);
            }
            m
        };
        let start = sum();
        let ran = measure(cg, ns, &args, 1);
        let end = sum();
        let mut per = serde_json::Map::new();
        let mut total = 0.0;
        for (name, (t1, c1)) in &end {
            let (t0, c0) = start.get(name).copied().unwrap_or_default();
            let (t, c) = (t1.saturating_sub(t0), c1.saturating_sub(c0));
            if c > 0 {
                let ns_per = t as f64 / units;
                total += ns_per;
                per.insert(
                    name.clone(),
                    json!({"ns_per_unit": ns_per, "runs_per_unit": c as f64 / units}),
                );
            }
        }
        ran?;
        result[kind] = json!({"total_ns_per_unit": total, "programs": per});
    }
    Ok(result)
}

/// Connect costs (ns per connect) and bulk throughput (MB/s) in `cg`,
/// and in `floor` (a cgroup nothing governs) in the same repetitions: each
/// repetition measures the floor (with `on(false)`: the enforcement under
/// test off) and then `cg` (with `on(true)`), so that drift on a shared VM
/// falls on both. Returns JSON with each series and the per-repetition
/// ratios (cg / floor; for bulk, floor / cg, so that above 1 is a cost).
pub(crate) fn paired(
    cg: &TestCgroup,
    floor: &TestCgroup,
    ns: &Netns,
    p: &Params,
    on: &mut dyn FnMut(bool) -> Result<()>,
) -> Result<Value> {
    let mut out = json!({});
    let connects = p.connects.to_string();
    let bulk = p.bulk_bytes.to_string();
    let kinds: [(&str, &[&str]); 3] = [
        ("tcp_connect_ns", &["tcp", TARGET, &connects]),
        ("udp_connect_ns", &["udp", TARGET, &connects]),
        ("bulk_mb_s", &["bulk", BULK, &bulk]),
    ];
    for (key, args) in kinds {
        let value = |ns_taken: f64| {
            if key == "bulk_mb_s" {
                p.bulk_bytes as f64 / (ns_taken / 1e9) / 1e6
            } else {
                ns_taken / p.connects as f64
            }
        };
        let (mut base, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..p.reps {
            on(false)?;
            let b = value(measure(floor, ns, args, 1)?[0]);
            on(true)?;
            let w = value(measure(cg, ns, args, 1)?[0]);
            ratios.push(if key == "bulk_mb_s" { b / w } else { w / b });
            base.push(b);
            with.push(w);
        }
        out[key] = json_stat(stat(with));
        out[format!("floor_{key}")] = json_stat(stat(base));
        out[key.replace("_ns", "").replace("_mb_s", "") + "_ratio"] = json_stat(stat(ratios));
    }
    Ok(out)
}
