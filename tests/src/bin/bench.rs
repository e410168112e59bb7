//! `egress-bench`: what egressd costs, measured side by side with no
//! enforcement (the floor) and with nftables, in one run, inside a
//! throwaway network namespace. Run by `cargo xtask bench` (root).
//!
//! `egress-bench run [--smoke] [--out DIR]` measures and writes
//! BENCHMARKS.md and bench-results.json; `egress-bench client ...` is the
//! workload, started inside the cgroup under test.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
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

const TARGET: &str = "198.51.100.1:8080";
const BULK: &str = "198.51.100.1:8081";
const DENIED: &str = "203.0.113.9:8080";
const UPSTREAM: &str = "198.51.100.53:53";

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

// ---------------------------------------------------------------- client

/// The workload, run inside the cgroup under test; prints its measurements.
fn client(args: &[String]) -> Result<()> {
    let n = |i: usize| -> Result<u64> { Ok(args.get(i).context("missing count")?.parse()?) };
    match args.first().map(String::as_str) {
        Some("tcp") => {
            let addr: SocketAddr = args[1].parse()?;
            let count = n(2)?;
            let t = Instant::now();
            for _ in 0..count {
                let s = TcpStream::connect(addr)?;
                // Close with a reset: tens of thousands of connects must not
                // leave as many ports in TIME_WAIT.
                reset_on_close(&s);
            }
            println!("{}", t.elapsed().as_nanos());
        }
        Some("udp") => {
            let addr: SocketAddr = args[1].parse()?;
            let count = n(2)?;
            let t = Instant::now();
            for _ in 0..count {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(addr)?;
            }
            println!("{}", t.elapsed().as_nanos());
        }
        Some("bulk") => {
            let addr: SocketAddr = args[1].parse()?;
            let bytes = n(2)?;
            let buf = vec![7u8; 1 << 16];
            let mut s = TcpStream::connect(addr)?;
            let t = Instant::now();
            let mut sent = 0u64;
            while sent < bytes {
                s.write_all(&buf)?;
                sent += buf.len() as u64;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            let mut ack = [0u8; 1];
            let _ = s.read(&mut ack);
            println!("{}", t.elapsed().as_nanos());
        }
        Some("storm") => {
            // COUNT connects to ADDR, all on one TCP socket: each must be
            // refused by egressd (EPERM); prints the time and the refusals.
            let addr: std::net::SocketAddrV4 = args[1].parse()?;
            let count = n(2)?;
            // SAFETY: a plain socket call.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*addr.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            let t = Instant::now();
            let mut refused = 0u64;
            for _ in 0..count {
                // SAFETY: a valid socket and address.
                let rc = unsafe {
                    libc::connect(
                        fd,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if rc == 0 {
                    bail!("a connect to {addr} was let through");
                }
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                    refused += 1;
                }
            }
            println!("{} {refused}", t.elapsed().as_nanos());
        }
        Some("dnsflood") => {
            // COUNT A queries for NAME with WINDOW in flight at once;
            // prints the time and how many were answered.
            let server: SocketAddr = args[1].parse()?;
            let name = &args[2];
            let count = n(3)?;
            let window = n(4)?;
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 1500];
            let t = Instant::now();
            let (mut sent, mut answered) = (0u64, 0u64);
            while sent < count.min(window) {
                s.send(&query(sent as u16, name))?;
                sent += 1;
            }
            while answered < sent {
                let Ok(n) = s.recv(&mut buf) else {
                    break; // timed out: the rest are unanswered
                };
                // Only a NOERROR answer with a record counts.
                if n < 12 || buf[3] & 0x0f != 0 || buf[6..8] == [0, 0] {
                    bail!(
                        "DNS flood: an answer that is not one ({:02x?})",
                        &buf[..n.min(12)]
                    );
                }
                answered += 1;
                if sent < count {
                    s.send(&query(sent as u16, name))?;
                    sent += 1;
                }
            }
            println!("{} {answered}", t.elapsed().as_nanos());
        }
        Some("dns") => {
            // Sequential A queries for NAME; prints each latency in ns.
            let server: SocketAddr = args[1].parse()?;
            let name = &args[2];
            let count = n(3)?;
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            let mut buf = [0u8; 1500];
            for i in 0..count {
                let q = query(i as u16, name);
                let t = Instant::now();
                s.send(&q)?;
                s.recv(&mut buf)?;
                let _ = writeln!(out, "{}", t.elapsed().as_nanos());
            }
            print!("{out}");
        }
        _ => bail!("client tcp|udp|bulk|storm|dns|dnsflood ..."),
    }
    Ok(())
}

/// SO_LINGER with a zero timeout: close() sends a reset and leaves no
/// TIME_WAIT behind.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and option buffer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// A DNS query for `name` (A, recursion desired).
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

// ---------------------------------------------------------------- servers

/// Accepts and closes connections on `addr` (connect cost), and sinks bulk
/// data on `bulk`, inside `ns`, until the process ends.
fn serve(ns: &Netns) -> Result<()> {
    let (a, b): (SocketAddr, SocketAddr) = (TARGET.parse()?, BULK.parse()?);
    let listener = ns.run(move || listen(a))?;
    let bulk = ns.run(move || listen(b))?;
    thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    thread::spawn(move || {
        for c in bulk.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                let mut buf = vec![0u8; 1 << 16];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                let _ = c.write_all(b"k");
            });
        }
    });
    // A UDP receiver, so that UDP connect() has a destination that exists.
    let u: SocketAddr = TARGET.parse()?;
    let sock = ns.run(move || Ok(UdpSocket::bind(u)?))?;
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while sock.recv(&mut buf).is_ok() {}
    });
    Ok(())
}

/// A TCP listener with a deep accept queue (std's is 128): a burst of
/// connects must not overflow it, or SYN retransmits (a second each) would
/// swamp what is measured.
fn listen(addr: SocketAddr) -> Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        bail!("IPv4 only")
    };
    // SAFETY: plain syscalls on a socket we own; sockaddr_in is plain data.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), len) != 0
            || libc::listen(fd, 4096) != 0
        {
            bail!("listen on {addr}: {}", std::io::Error::last_os_error());
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}

// ---------------------------------------------------------------- measuring

/// Median, min, max of repeated measurements.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn json_stat(s: Stat) -> Value {
    json!({"median": s.median, "min": s.min, "max": s.max})
}

/// Runs the client in `cg` inside `ns`, `reps` times; returns its first
/// printed number of each run.
fn measure(cg: &TestCgroup, ns: &Netns, args: &[&str], reps: usize) -> Result<Vec<f64>> {
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
fn client_output(cg: &TestCgroup, ns: &Netns, args: &[&str]) -> Result<String> {
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
fn learn_latency(cg: &TestCgroup, ns: &Netns, upstream: &DnsServer, p: &Params) -> Result<Stat> {
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
fn program_stats() -> Vec<(String, u64, u64)> {
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
fn program_costs(cg: &TestCgroup, ns: &Netns, p: &Params) -> Result<Value> {
    let knob = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(knob).unwrap_or_default();
    std::fs::write(knob, "1").context("enabling BPF run-time statistics")?;
    let result = program_passes(cg, ns, p);
    // Put back, whatever happened.
    let _ = std::fs::write(knob, before.trim());
    result
}

fn program_passes(cg: &TestCgroup, ns: &Netns, p: &Params) -> Result<Value> {
    let mut result = json!({});
    let connects = p.connects.to_string();
    let bytes = p.bulk_bytes.to_string();
    // (kind, client arguments, how many units it does: connects, or MB).
    let passes: [(&str, [&str; 3], f64); 3] = [
        ("tcp", ["tcp", TARGET, &connects], p.connects as f64),
        ("udp", ["udp", TARGET, &connects], p.connects as f64),
        ("bulk", ["bulk", BULK, &bytes], p.bulk_bytes as f64 / 1e6),
    ];
    for (kind, args, units) in passes {
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
fn paired(
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

struct Params {
    reps: usize,
    connects: u64,
    bulk_bytes: u64,
    sizes: Vec<usize>,
    storm: u64,
    dns_queries: u64,
    dns_flood: u64,
}

/// A name the bench policy allows whose answer changes during the run.
const NEW_NAME: &str = "rotating.cdn.test";

/// DNS queries one client keeps in flight when measuring queries/s.
const DNS_WINDOW: u64 = 64;

// ---------------------------------------------------------------- allowlists

/// `n` allowlist entries, mixed /32 and shorter IPv4 prefixes (documentation
/// ranges only) and IPv6 /128 and /64..../48 prefixes in 2001:db8::/32; the
/// benchmark's destinations are among them.
fn entries(n: usize) -> Vec<String> {
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

/// A policy allowing the benchmark's destination and `entries` (written to
/// a `cidr_file` beside the policy, as large allowlists are).
fn policy_yaml(name: &str, cg: &TestCgroup, entries: &[String], tmp: &TempDir) -> String {
    let list = entries.iter().skip(1).fold(String::new(), |mut s, e| {
        let _ = writeln!(s, "{e}");
        s
    });
    let file = format!("{name}.list");
    tmp.write(&file, &list).expect("writing the list");
    format!(
        "name: {name}\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [8080, 8081]\n    protocol: any\n  - cidr_file: {file}\n    ports: [8080]\n  - host: {NEW_NAME}\n    ports: [443]\ndns:\n  upstream: [{UPSTREAM}]\n",
        cg.rel_str()
    )
}

fn rss_kib(pid: u32) -> u64 {
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
fn nft_load(ns: &Netns, cg: &TestCgroup, entries: &[String], tmp: &TempDir) -> Result<Duration> {
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
fn nft_chain_text(cg: &TestCgroup, with_v6: bool) -> String {
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
fn nft_chain(ns: &Netns, on: bool, tmp: &TempDir) -> Result<()> {
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
fn nft_file(ns: &Netns, file: &Path) -> Result<()> {
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

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn nft_flush(ns: &Netns) {
    let _ = ns.command("nft").arg("flush ruleset").status();
}

// ---------------------------------------------------------------- the run

/// Runs every section (or, with `only`, one section, printing its results
/// rather than writing the report).
fn run(smoke: bool, out: &Path, only: Option<&str>) -> Result<()> {
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
            let learn = learn_latency(&cg, &ns, &upstream, &p)?;
            // egressd's programs run only for the governed cgroup: the floor
            // cgroup beside it is measured with the daemon running.
            let mut e = paired(&cg, &floor, &ns, &p, &mut |_| Ok(()))?;
            // Where the added time goes: the kernel's run time of each
            // program, over one more pass with BPF statistics on (they add
            // a clock read per run, so the timed passes above run without).
            if size == *p.sizes.last().unwrap() {
                e["programs"] = program_costs(&cg, &ns, &p)?;
            }
            e["new_address_ms"] = json_stat(learn);
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

// ---------------------------------------------------------------- report

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn spread(s: &Value, scale: f64, digits: usize) -> String {
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        f(&s["median"]) / scale,
        f(&s["min"]) / scale,
        f(&s["max"]) / scale,
        d = digits
    )
}

/// What the figures mean, and where the misses come from (as far as known).
const NOTES: &str = "
Notes on this machine and these figures:

- Two virtual CPUs shared by the client, the listener, egressd and the
  kernel: run-to-run spread is large, bulk transfer most of all. Pairing
  each repetition with its own floor takes out slow drift, not the noise
  of one repetition: read a ratio together with its spread.
- connect(): the section above shows where egressd's time goes. A TCP
  connect+close runs `sock_create`, `connect4`, `sock_ops` (on five TCP
  events; it remembers accepted sockets, whose peer no hook judged) and,
  on each of its packets (SYN, ACK, RST here), the egress backstop; the
  benchmark's client also sets SO_LINGER, which runs `setsockopt`. About
  60 ns of each run is the statistics' own clock reads. The backstop
  reads headers straight from the packet; its SYN check is a second
  allowlist lookup (defence in depth: it checks the packet's real
  destination), its other packets take a fast path: one lookup of the
  socket's cookie among the accepted sockets, which finds nothing for a
  connected one. What is left is about 1 µs per TCP connect+close and
  0.2 µs per UDP connect(): 2 to 5 % of a loopback
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
fn programs(r: &Value) -> String {
    let Some(big) = r["sizes"].as_array().and_then(|s| s.last()) else {
        return String::new();
    };
    let pr = &big["egressd"]["programs"];
    let mut s = format!(
        "\n## Where the time goes ({} entries)\n\nThe kernel's run time of each egressd program (BPF statistics, `kernel.bpf_stats_enabled`, on for one extra pass of {} connects of each kind and one bulk transfer; they add two clock reads to each run, about 60 ns here, which an empty program also shows).\n\n| workload | program | runs | ns |\n|---|---|---|---|\n",
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

/// The issue's goals, each with what this run measured.
fn goals(r: &Value) -> String {
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

fn report(r: &Value) -> String {
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
