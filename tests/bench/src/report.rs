//! BENCHMARKS.md, written from the results.

use std::fmt::Write as _;

use serde_json::Value;

// ---------------------------------------------------------------- report

pub(crate) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub(crate) fn spread(s: &Value, scale: f64, digits: usize) -> String {
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        f(&s["median"]) / scale,
        f(&s["min"]) / scale,
        f(&s["max"]) / scale,
        d = digits
    )
}

/// What the figures mean, and where the misses come from (as far as known).
pub(crate) const NOTES: &str = "
Notes on this machine and these figures:

- Two virtual CPUs shared by the client, the listener, egressd and the
  kernel: run-to-run spread is large, bulk transfer most of all. Pairing
  each repetition with its own floor takes out slow drift, not the noise
  of one repetition: read a ratio together with its spread.
- connect(): the section above shows where egressd's time goes. A TCP
  connect+close runs `sock_create`, `connect4` (which also writes the
  socket's record in socket storage) and, on each of its packets (SYN,
  ACK, RST here), the egress backstop; the benchmark's client also sets
  SO_LINGER, which runs `setsockopt`. About 60 ns of each run is the
  statistics' own clock reads. The backstop reads headers straight from
  the packet; a packet of a TCP socket whose record says its peer passed
  (the connect hook's verdict, the SYN included) costs one lookup of that
  record and one of its policy, and, for a packet that carries payload,
  the count and budget charge of the rule the record names: no allowlist
  lookup. The ingress program counts what arrives the same way; on a
  packet without payload it stops before any lookup. Creating the
  record (socket storage, allocated with the socket's first connect) is
  most of `connect4`'s time. What is left is 1 to 2 µs per TCP
  connect+close and 0.2 to 0.5 µs per UDP connect(): 2 to 10 % of a loopback
  connect, which takes 7 to 30 µs, and well under 1 % of any connect
  that leaves the machine. The cost hardly depends on the number of
  entries (one longest-prefix lookup). nftables runs its chain on every
  packet of the namespace (the listener's too) and nothing on a UDP
  connect(), which sends no packet.
- Loading: compiling sorts the prefixes once; the trie is written in
  prefix order, many entries per bpf() call (BPF_MAP_UPDATE_BATCH).
  A policy's prefix entries are compiled once per load: a DNS answer
  with a new address writes only that address. The resident memory is
  mostly the compiled prefixes (to diff and delete on reload) and the
  list as parsed; the reload figure includes the old table, kept for a
  second's grace.
- Deny storm: one process per CPU reuses one socket for refused
  connect()s, at about three times the rate egressd can write events, so
  the 4 MiB ring buffer fills and most events are lost: every loss is
  counted, and the kernel counters stay exact. egressd writes up to 4096
  events in one write.
- DNS: one client with 64 queries in flight; the client, the upstream
  server and egressd share the two CPUs. Forwarded queries share upstream
  sockets (each takes at most 100 queries within a second, then a new one
  on a new random port does) and carry random query ids of egressd's own.
";

/// Where connect()'s and bulk transfer's added time goes, from BPF
/// run-time statistics.
pub(crate) fn programs(r: &Value) -> String {
    let Some(big) = r["sizes"].as_array().and_then(|s| s.last()) else {
        return String::new();
    };
    let pr = &big["egressd"]["programs"];
    let mut s = format!(
        "\n## Where the time goes ({} entries)\n\nThe kernel's run time of each egressd program (BPF statistics, `kernel.bpf_stats_enabled`, on for one extra pass of {} connects of each kind and one bulk transfer; they add two clock reads to each run, about 60 ns here, which an empty program also shows). The benchmark's rule carries an upload budget it never reaches, so each packet with payload pays for the lookup of its socket's record (the ingress program's too), its count and its budget charge (`egress_packet` out; `egress_packet_i`, the ingress program, in; see docs/security-model.md, Permitted channels). Divide a program's ns by its runs for its cost per packet. A budget is precise per packet, not per connection: each packet is charged as it leaves, and the one that would take the rule past its budget is dropped (with TCP's segmentation offload, a packet of up to 64 KiB), so no more than the budget leaves in a window.\n\n| workload | program | runs | ns |\n|---|---|---|---|\n",
        big["entries"], r["connects"]
    );
    for (kind, unit) in [
        ("tcp", "per connect"),
        ("udp", "per connect"),
        ("bulk", "per MB"),
    ] {
        for (name, v) in pr[kind]["programs"].as_object().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {kind} | {name} | {:.1} {unit} | {:.0} {unit} |",
                f(&v["runs_per_unit"]),
                f(&v["ns_per_unit"])
            );
        }
        let _ = writeln!(
            s,
            "| {kind} | all | | {:.0} {unit} |",
            f(&pr[kind]["total_ns_per_unit"])
        );
    }
    // A MB of the floor's bulk transfer takes 1e9 / (MB/s) ns.
    let floor_ns_per_mb = 1e9 / f(&big["egressd"]["floor_bulk_mb_s"]["median"]);
    let _ = writeln!(
        s,
        "\nBulk transfer: egressd's programs take {:.0} ns of each MB, which the floor moves in {:.0} ns: {:.2} % of the transfer's time, an upper bound on what egressd costs it (the throughput ratios above are lost in this machine's noise).",
        f(&pr["bulk"]["total_ns_per_unit"]),
        floor_ns_per_mb,
        100.0 * f(&pr["bulk"]["total_ns_per_unit"]) / floor_ns_per_mb
    );
    s
}

/// The goals, each with what this run measured.
pub(crate) fn goals(r: &Value) -> String {
    let sizes = r["sizes"].as_array().cloned().unwrap_or_default();
    let Some(big) = sizes.last() else {
        return String::new();
    };
    let ratio_of = |who: &str, what: &str| f(&big[who][what]["median"]);
    let (e_tcp, n_tcp) = (
        ratio_of("egressd", "tcp_connect_ratio"),
        ratio_of("nftables", "tcp_connect_ratio"),
    );
    let (e_udp, n_udp) = (
        ratio_of("egressd", "udp_connect_ratio"),
        ratio_of("nftables", "udp_connect_ratio"),
    );
    let bulk = ratio_of("egressd", "bulk_ratio");
    let share = 100.0
        * f(&big["egressd"]["programs"]["bulk"]["total_ns_per_unit"])
        * f(&big["egressd"]["floor_bulk_mb_s"]["median"])
        / 1e9;
    let dns_added = f(&r["dns"]["proxied"]["p50_us"]) - f(&r["dns"]["direct"]["p50_us"]);
    let yes = |ok: bool| if ok { "met" } else { "**not met**" };
    let mut s = format!(
        "\n## Against the goals ({} entries)\n\n| goal | measured | |\n|---|---|---|\n",
        big["entries"]
    );
    let _ = writeln!(
        s,
        "| ≤ 1 % added to connect() | TCP {:+.1} %, UDP {:+.1} % | {} |",
        (e_tcp - 1.0) * 100.0,
        (e_udp - 1.0) * 100.0,
        yes(e_tcp <= 1.01 && e_udp <= 1.01)
    );
    let _ = writeln!(
        s,
        "| no worse than nftables | TCP {:.3} vs {:.3}, UDP {:.3} vs {:.3} | {} |",
        e_tcp,
        n_tcp,
        e_udp,
        n_udp,
        yes(e_tcp <= n_tcp && e_udp <= n_udp)
    );
    let _ = writeln!(
        s,
        "| 0 % on bulk transfer | egressd's programs take {share:.2} % of the transfer's time (an upper bound); throughput floor ÷ egressd {:.3} ({:.3}–{:.3}), noise | {} |",
        bulk,
        f(&big["egressd"]["bulk_ratio"]["min"]),
        f(&big["egressd"]["bulk_ratio"]["max"]),
        if share < 1.0 {
            "within 1 %, not 0"
        } else {
            "**not met**"
        }
    );
    let _ = writeln!(
        s,
        "| ≤ 100 µs added per DNS query at p50 | {dns_added:.0} µs | {} |",
        yes(dns_added <= 100.0)
    );
    let _ = writeln!(
        s,
        "| ≥ 50k DNS queries/s | {:.0} ({} in flight from one client; upstream directly: {:.0}) | {} |",
        f(&r["dns"]["proxied_qps"]["median"]),
        r["dns"]["window"],
        f(&r["dns"]["direct_qps"]["median"]),
        yes(f(&r["dns"]["proxied_qps"]["median"]) >= 50_000.0)
    );
    let _ = writeln!(
        s,
        "| 1M entries loaded in ≤ 3 s | {:.1} s | {} |",
        f(&big["egressd"]["load_s"]),
        yes(f(&big["egressd"]["load_s"]) <= 3.0)
    );
    let _ = writeln!(
        s,
        "| daemon RSS ≤ 100 MB | {:.0} MiB | {} |",
        f(&big["egressd"]["rss_mib"]),
        yes(f(&big["egressd"]["rss_mib"]) <= 100.0)
    );
    let d = &r["deny_storm"];
    let eps = f(&d["events_per_s"]);
    let _ = writeln!(
        s,
        "| ≥ 500k deny events/s, exact counters | {eps:.0} events/s written; counters exact: {}; {:.0} % of the storm's events lost, all counted | {} |",
        d["counters_exact"],
        100.0 * f(&d["events_lost"]) / f(&d["attempts"]),
        yes(eps >= 500_000.0 && d["counters_exact"] == true)
    );
    s
}

/// Names, not addresses: what judging a connection's name costs.
fn names(r: &Value) -> String {
    let n = &r["names"];
    if n.is_null() {
        return String::new();
    }
    let per = |k: &str| f(&n["programs"][k]["total_ns_per_unit"]);
    format!(
        "\n## Names, not addresses\n\n{} connections, each writing a ClientHello of curl's size (517 bytes) and reset, to one address: on a port an `ip` rule allows (judged by address) and on a port a host rule allows (its name judged), in interleaved rounds. Connection time, µs: by address {}, by name {} (ratio {:.3}). Programs' run time per connection, with BPF statistics on: {:.0} ns by address, {:.0} ns by name; the backstop adds **{:.0} ns** per connection for the name (goal: at most 300). Later segments pay nothing new (the record says the name passed).\n",
        n["connections"],
        spread(&n["by_address_ns_per_connection"], 1e3, 2),
        spread(&n["by_name_ns_per_connection"], 1e3, 2),
        f(&n["ratio"]),
        per("by_address"),
        per("by_name"),
        f(&n["backstop_added_ns_per_connection"]),
    )
}

pub(crate) fn report(r: &Value) -> String {
    let mut s = String::from("# egressd benchmarks\n\n");
    let m = &r["machine"];
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), kernel {}. Command: `cargo xtask bench`{}. Whole run: {:.0} s.\n",
        m["cpus"],
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        if m["smoke"].as_bool() == Some(true) {
            " --smoke (tiny sizes: numbers not meaningful)"
        } else {
            ""
        },
        f(&m["duration_s"])
    );
    s.push_str("Every figure is the median of the repetitions, with the smallest and largest in brackets, measured in one run inside a throwaway network namespace (loopback). Each repetition measures the floor (a cgroup nothing governs, with nftables' chain taken out) and then the setup, one after the other; the ratio is the median of the repetitions' ratios (for bulk, floor ÷ setup: above 1 is a cost), with their spread. Machine-readable: `bench-results.json`.\n\n");
    s.push_str("## connect() and bulk transfer\n\n");
    s.push_str("| setup | entries | TCP connect+close µs | its floor | ratio | UDP connect µs | its floor | ratio | bulk MB/s | its floor | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in r["sizes"].as_array().into_iter().flatten() {
        for who in ["egressd", "nftables"] {
            let x = &row[who];
            if let Some(why) = x["not_measured"].as_str() {
                let _ = writeln!(
                    s,
                    "| {who} | {} | not measured: {why} |||||||||",
                    row["entries"]
                );
                continue;
            }
            let _ = writeln!(
                s,
                "| {who} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row["entries"],
                spread(&x["tcp_connect_ns"], 1e3, 2),
                spread(&x["floor_tcp_connect_ns"], 1e3, 2),
                spread(&x["tcp_connect_ratio"], 1.0, 3),
                spread(&x["udp_connect_ns"], 1e3, 2),
                spread(&x["floor_udp_connect_ns"], 1e3, 2),
                spread(&x["udp_connect_ratio"], 1.0, 3),
                spread(&x["bulk_mb_s"], 1.0, 0),
                spread(&x["floor_bulk_mb_s"], 1.0, 0),
                spread(&x["bulk_ratio"], 1.0, 3),
            );
        }
    }
    s.push_str("\n## Loading policies\n\nThe bench policy is the `cidr_file` list, an `ip` rule and a `host` rule. *New address* is a DNS answer through egressd's proxy that carries an address the host rule has not had yet (egressd writes it into the allowlist before it answers), in ms.\n\n| entries | egressd start (load) s | egressd reload s | egressd RSS MiB | RSS after reload MiB | new address ms | nftables load s |\n|---|---|---|---|---|---|---|\n");
    for row in r["sizes"].as_array().into_iter().flatten() {
        let (e, n) = (&row["egressd"], &row["nftables"]);
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {:.2} |",
            row["entries"],
            f(&e["load_s"]),
            f(&e["reload_s"]),
            f(&e["rss_mib"]),
            f(&e["rss_after_reload_mib"]),
            spread(&e["new_address_ms"], 1.0, 2),
            f(&n["load_s"])
        );
    }
    s.push_str(&programs(r));
    s.push_str(&names(r));
    s.push_str(&goals(r));
    s.push_str(NOTES);
    let d = &r["deny_storm"];
    let _ = writeln!(
        s,
        "\n## Deny storm\n\n{} connects to a denied address from {} processes (one per CPU), each reusing one socket: {} refused with EPERM, {:.0} refused connects/s. The kernel counters counted {} (exact: {}). egressd took {} events off the ring buffer and wrote them as JSON lines ({} lines in its output), {:.0} events/s from the storm's start to the last line; {} lost (counted).",
        d["attempts"], d["processes"], d["refused"], f(&d["denies_per_s"]), d["counted"], d["counters_exact"], d["events_delivered"], d["event_lines_written"], f(&d["events_per_s"]), d["events_lost"]
    );
    let dn = &r["dns"];
    let _ = writeln!(
        s,
        "\n## DNS\n\nLatency: {} sequential A queries from one client. Queries/s: {} queries with {} in flight from one client, {} repetitions.\n\n| path | p50 µs | p99 µs | queries/s, sequential | queries/s, {} in flight |\n|---|---|---|---|---|\n| upstream directly | {:.0} | {:.0} | {:.0} | {} |\n| through egressd's proxy | {:.0} | {:.0} | {:.0} | {} |\n\nAdded at p50: {:.0} µs.",
        dn["queries"], dn["flood_queries"], dn["window"], r["reps"], dn["window"],
        f(&dn["direct"]["p50_us"]), f(&dn["direct"]["p99_us"]), f(&dn["direct"]["qps_sequential"]), spread(&dn["direct_qps"], 1.0, 0),
        f(&dn["proxied"]["p50_us"]), f(&dn["proxied"]["p99_us"]), f(&dn["proxied"]["qps_sequential"]), spread(&dn["proxied_qps"], 1.0, 0),
        f(&dn["proxied"]["p50_us"]) - f(&dn["direct"]["p50_us"])
    );
    s
}
