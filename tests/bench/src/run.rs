//! The run: every section measured side by side with its baseline.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use egress_tests::{
    dns::DnsServer,
    egressd::{Daemon, TempDir, TestCgroup},
    netns::Netns,
};
use serde_json::{json, Value};

use crate::{
    client::serve,
    measure::{
        admission_latency, client_output, json_stat, measure, paired, program_costs,
        program_passes, stat, with_stats, Stat,
    },
    report::report,
    setup::{
        entries, nft_chain, nft_flush, nft_load, policy_yaml, rss_kib, Params, DNS_WINDOW, NEW_NAME,
    },
    DENIED, NAMED, TARGET, UPSTREAM,
};

// ---------------------------------------------------------------- the run

/// Runs every section (or, with `only`, one section, printing its results
/// rather than writing the report).
pub(crate) fn run(smoke: bool, out: &Path, only: Option<&str>) -> Result<()> {
    let want = |section: &str| only.is_none_or(|o| o == section);
    let p = if smoke {
        Params {
            reps: 3,
            connects: 500,
            bulk_bytes: 32 << 20,
            sizes: vec![10, 1000],
            storm: 2000,
            dns_queries: 200,
            dns_flood: 2000,
        }
    } else {
        Params {
            reps: 5,
            connects: 20_000,
            bulk_bytes: 1 << 30,
            sizes: vec![10, 10_000, 100_000, 1_000_000],
            storm: 2_000_000,
            dns_queries: 5000,
            dns_flood: 100_000,
        }
    };
    let started = Instant::now();
    let ns = Netns::new("bench")?;
    // Room for many short connections (per network namespace).
    let _ = ns
        .command("sysctl")
        .args([
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ])
        .status();
    serve(&ns)?;
    let upstream = DnsServer::start(
        &ns,
        UPSTREAM,
        &[
            ("api.model.test", &["198.51.100.1"], 300),
            (NEW_NAME, &["198.51.100.200"], 300),
        ],
    )?;
    let tmp = TempDir::new("bench")?;
    let mut results = json!({"reps": p.reps, "connects": p.connects});

    if want("connect") {
        // (a) the floor: a cgroup nothing governs, measured alongside each
        // of (b) egressd and (c) nftables, at each size.
        let floor = TestCgroup::new("floor")?;
        floor.cgroup.create()?;
        let mut rows = Vec::new();
        for &size in &p.sizes {
            let list = entries(size);
            let cg = TestCgroup::new("gov")?;
            let policy = tmp.write("bench.yaml", &policy_yaml("bench", &cg, &list, &tmp))?;
            eprintln!("bench: egressd, {size} entries");
            let t = Instant::now();
            let daemon = Daemon::start(&ns, &policy)?;
            let load = t.elapsed();
            let rss = rss_kib(daemon.pid());
            let before = daemon.metric("egressd_reloads_total", &[("result", "ok")])?;
            let t = Instant::now();
            daemon.signal(libc::SIGHUP);
            while daemon.metric("egressd_reloads_total", &[("result", "ok")])? <= before {
                if t.elapsed() > Duration::from_secs(300) {
                    bail!("reload of {size} entries did not finish");
                }
                thread::sleep(Duration::from_millis(20));
            }
            let reload = t.elapsed();
            let rss_after = rss_kib(daemon.pid());
            let admission = admission_latency(&cg, &ns, &upstream, &p)?;
            // egressd's programs run only for the governed cgroup: the floor
            // cgroup beside it is measured with the daemon running.
            let mut e = paired(&cg, &floor, &ns, &p, &mut |_| Ok(()))?;
            // Where the added time goes: the kernel's run time of each
            // program, over one more pass with BPF statistics on (they add
            // a clock read per run, so the timed passes above run without).
            if size == *p.sizes.last().unwrap() {
                e["programs"] = program_costs(&cg, &ns, &p)?;
            }
            e["new_address_ms"] = json_stat(admission);
            e["load_s"] = json!(load.as_secs_f64());
            e["reload_s"] = json!(reload.as_secs_f64());
            e["rss_mib"] = json!(rss as f64 / 1024.0);
            e["rss_after_reload_mib"] = json!(rss_after as f64 / 1024.0);
            drop(daemon);
            drop(cg);

            eprintln!("bench: nftables, {size} entries");
            let cg = TestCgroup::new("nft")?;
            cg.cgroup.create()?;
            // nftables matches cgroups with `socket cgroupv2` (Linux 5.13):
            // where the kernel refuses it, the comparison is not measured.
            let n = match nft_load(&ns, &cg, &list, &tmp) {
                Ok(nft_load) => {
                    // nftables' output chain runs for every packet of the
                    // namespace: it is taken out for the floor's turns and
                    // put back for its own (the sets stay loaded).
                    let mut n = paired(&cg, &floor, &ns, &p, &mut |on| nft_chain(&ns, on, &tmp))?;
                    n["load_s"] = json!(nft_load.as_secs_f64());
                    n
                }
                Err(e) => {
                    eprintln!("bench: nftables not measured: {e:#}");
                    json!({"not_measured": format!("{e:#}")})
                }
            };
            nft_flush(&ns);
            drop(cg);
            rows.push(json!({"entries": size, "egressd": e, "nftables": n}));
        }
        results["sizes"] = Value::Array(rows);
    }

    if want("names") {
        results["names"] = names(&ns, &tmp, &p)?;
    }

    if want("storm") {
        // Deny storm: refused connects per second from one process per CPU,
        // and events per second through the ring buffer to egressd's output.
        eprintln!("bench: deny storm");
        let cg = TestCgroup::new("storm")?;
        let policy = tmp.write("storm.yaml", &policy_yaml("storm", &cg, &entries(10), &tmp))?;
        let lines = tmp.0.join("storm-events.jsonl");
        let daemon = Daemon::start_to_file(&ns, &policy, &lines)?;
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let each = p.storm / cpus as u64;
        let attempts = each * cpus as u64;
        let me = std::env::current_exe()?;
        let t = Instant::now();
        let clients: Vec<_> = (0..cpus)
            .map(|_| {
                cg.command(&ns, &me)
                    .args(["client", "storm", DENIED, &each.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        let mut refused = 0u64;
        for c in clients {
            let o = c.wait_with_output()?;
            if !o.status.success() {
                bail!("storm client failed");
            }
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            refused += out
                .split_whitespace()
                .nth(1)
                .context("no output")?
                .parse::<u64>()?;
        }
        let storm_s = t.elapsed().as_secs_f64();
        // Events are counted as egressd takes them off the ring buffer and
        // writes them out; lost ones (ring buffer full) are counted too.
        let (delivered, lost) = loop {
            let d = daemon.metric("egressd_events_total", &[("policy", "storm")])?;
            let lost = daemon.metric("egressd_events_lost_total", &[("policy", "storm")])?;
            if d + lost >= attempts as f64 || t.elapsed() > Duration::from_secs(60) {
                break (d, lost);
            }
            thread::sleep(Duration::from_millis(5));
        };
        let drain_s = t.elapsed().as_secs_f64();
        let denied = daemon.metric(
            "egressd_egress_attempts_total",
            &[("policy", "storm"), ("verdict", "denied")],
        )?;
        drop(daemon);
        let written = std::fs::read_to_string(&lines)?.lines().count();
        results["deny_storm"] = json!({
            "attempts": attempts, "processes": cpus, "refused": refused,
            "denies_per_s": attempts as f64 / storm_s,
            "counted": denied, "counters_exact": denied == attempts as f64 && refused == attempts,
            "events_delivered": delivered, "events_lost": lost, "event_lines_written": written,
            "events_per_s": delivered / drain_s,
        });
        drop(cg);
    }

    if want("dns") {
        // DNS: through egressd's proxy (redirected; the name is allowed, so the
        // proxy asks the upstream) against the upstream directly.
        eprintln!("bench: DNS");
        let cg = TestCgroup::new("dns")?;
        let policy = tmp.write(
        "dns.yaml",
        &format!(
            "name: dns\ncgroups: [{}]\nallow:\n  - host: api.model.test\n    ports: [8080]\ndns:\n  upstream: [{UPSTREAM}]\n",
            cg.rel_str()
        ),
    )?;
        let daemon = Daemon::start(&ns, &policy)?;
        let plain = TestCgroup::new("dnsplain")?;
        plain.cgroup.create()?;
        let lat = |cg: &TestCgroup| -> Result<Vec<f64>> {
            let me = std::env::current_exe()?;
            let o = cg
                .command(&ns, &me)
                .args([
                    "client",
                    "dns",
                    UPSTREAM,
                    "api.model.test",
                    &p.dns_queries.to_string(),
                ])
                .output()?;
            if !o.status.success() {
                bail!("dns client: {}", String::from_utf8_lossy(&o.stderr));
            }
            Ok(String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect())
        };
        let pct = |mut v: Vec<f64>, q: f64| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[((v.len() - 1) as f64 * q) as usize]
        };
        let direct = lat(&plain)?;
        let proxied = lat(&cg)?;
        let sum = |v: &[f64]| v.iter().sum::<f64>() / 1e9;
        // Throughput: DNS_WINDOW queries in flight from one client.
        let flood = |cg: &TestCgroup| -> Result<Stat> {
            let args = [
                "dnsflood",
                UPSTREAM,
                "api.model.test",
                &p.dns_flood.to_string(),
                &DNS_WINDOW.to_string(),
            ];
            let mut qps = Vec::new();
            for _ in 0..p.reps {
                let o = client_output(cg, &ns, &args)?;
                let mut w = o
                    .split_whitespace()
                    .map(|x| x.parse::<f64>().unwrap_or(0.0));
                let (ns_taken, answered) = (w.next().unwrap_or(0.0), w.next().unwrap_or(0.0));
                if answered < p.dns_flood as f64 {
                    bail!("DNS flood: {answered} of {} queries answered", p.dns_flood);
                }
                qps.push(answered / (ns_taken / 1e9));
            }
            Ok(stat(qps))
        };
        let direct_qps = flood(&plain)?;
        let proxied_qps = flood(&cg).map_err(|e| {
            let log = daemon.log.lock().map(|l| l.join("\n")).unwrap_or_default();
            e.context(format!("egressd's log:\n{log}"))
        })?;
        results["dns"] = json!({
            "queries": p.dns_queries, "flood_queries": p.dns_flood, "window": DNS_WINDOW,
            "direct_qps": json_stat(direct_qps), "proxied_qps": json_stat(proxied_qps),
            "direct": {"p50_us": pct(direct.clone(), 0.5) / 1e3, "p99_us": pct(direct.clone(), 0.99) / 1e3, "qps_sequential": direct.len() as f64 / sum(&direct)},
            "proxied": {"p50_us": pct(proxied.clone(), 0.5) / 1e3, "p99_us": pct(proxied.clone(), 0.99) / 1e3, "qps_sequential": proxied.len() as f64 / sum(&proxied)},
        });
        drop(daemon);
    }

    if only.is_some() {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }

    results["machine"] = json!({
        "kernel": String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout).trim(),
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())),
        "smoke": smoke,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("bench-results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(out.join("BENCHMARKS.md"), report(&results))?;
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Names, not addresses: what a connection whose peer only a host rule
/// allows costs for its name to be judged. The same client writes a
/// ClientHello (curl's size) on each connection, to one address: on the
/// port an `ip` rule allows (no name judged) and on the port a host rule
/// allows (its name judged), in interleaved timed rounds, then once each
/// with BPF statistics on for the programs' run time per connection.
fn names(ns: &Netns, tmp: &TempDir, p: &Params) -> Result<Value> {
    eprintln!("bench: names");
    let cg = TestCgroup::new("names")?;
    let ip = TARGET.split(':').next().unwrap_or_default();
    let port = NAMED.rsplit(':').next().unwrap_or_default();
    let policy = tmp.write(
        "names.yaml",
        &format!(
            "name: names\ncgroups: [{}]\nallow:\n  - ip: {ip}\n    ports: [8080]\n  - host: api.model.test\n    ports: [{port}]\ndns:\n  upstream: [{UPSTREAM}]\n",
            cg.rel_str()
        ),
    )?;
    let daemon = Daemon::start(ns, &policy)?;
    // egressd resolves the exact name as it starts.
    let t = Instant::now();
    while client_output(&cg, ns, &["hello", NAMED, "1"]).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("api.model.test was not allowed");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let count = p.connects.to_string();
    let (mut by_ip, mut by_name) = (Vec::new(), Vec::new());
    for _ in 0..p.reps {
        by_ip.extend(measure(&cg, ns, &["hello", TARGET, &count], 1)?);
        by_name.extend(measure(&cg, ns, &["hello", NAMED, &count], 1)?);
    }
    let n = p.connects as f64;
    let passes: [(&str, [&str; 3], f64); 2] = [
        ("by_address", ["hello", TARGET, &count], n),
        ("by_name", ["hello", NAMED, &count], n),
    ];
    let programs = with_stats(|| program_passes(&cg, ns, &passes))?;
    // Every name passed: a refused one would cost less, and prove nothing.
    let refused = daemon.metric(
        "egressd_egress_attempts_total",
        &[("policy", "names"), ("reason", "name_not_at_address")],
    )?;
    if refused != 0.0 {
        bail!("{refused} connection(s) were refused for their name");
    }
    let (a, b) = (stat(by_ip), stat(by_name));
    let added = |k: &str| {
        programs["by_name"]["programs"][k]["ns_per_unit"]
            .as_f64()
            .unwrap_or(0.0)
            - programs["by_address"]["programs"][k]["ns_per_unit"]
                .as_f64()
                .unwrap_or(0.0)
    };
    Ok(json!({
        "connections": p.connects,
        "by_address_ns_per_connection": json_stat(Stat { median: a.median / n, min: a.min / n, max: a.max / n }),
        "by_name_ns_per_connection": json_stat(Stat { median: b.median / n, min: b.min / n, max: b.max / n }),
        "ratio": b.median / a.median,
        "programs": programs,
        "backstop_added_ns_per_connection": added("egress_packet"),
    }))
}
