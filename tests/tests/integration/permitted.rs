//! The permitted channels: what goes out through each allowed rule is
//! counted in the kernel (connections, datagrams, payload bytes each way)
//! and matches what the listener received; a rule's upload budget bounds
//! what reaches its destinations (the excess never arrives), refuses new
//! connections and datagrams with an event of its own until the window
//! turns, and is counted.

use std::{process::Command, thread, time::Duration};

use egress_tests::{
    egressd::{bin, Daemon, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    require_root,
};
use serde_json::Value;

/// The daemon's status document.
fn status(d: &Daemon) -> Value {
    let out = Command::new(bin())
        .args(["status", "--json", "--instance", &d.instance])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The counters of rule `label` of the first policy.
fn rule(d: &Daemon, label: &str) -> Value {
    let s = status(d);
    s["policies"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == label)
        .cloned()
        .unwrap_or_else(|| panic!("no rule {label} in {s}"))
}

/// Sends `up` bytes over TCP to ADDR:PORT and reads the answer to the end;
/// then `n` datagrams of `size` bytes to UDP ADDR:PORT. Prints what was
/// received, and `refused` if a datagram or connection was refused.
const CLIENT: &str = r#"
import socket, sys
host, port, up, uhost, uport, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
if up >= 0:
    s = socket.create_connection((host, port), timeout=3)
    s.sendall(b"u" * up)
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += len(d)
    print("received", got)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for i in range(n):
    try:
        u.sendto(b"d" * size, (uhost, uport))
        sent += 1
    except PermissionError:
        print("refused datagram", i)
        break
print("sent", sent)
"#;

fn policy(tmp: &TempDir, cg: &TestCgroup, extra: &str) -> std::path::PathBuf {
    tmp.write(
        "p.yaml",
        &format!(
            "name: counted\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n  - ip: 203.0.113.7\n    ports: [9000]\n    protocol: udp\n{extra}",
            cg.rel_str()
        ),
    )
    .unwrap()
}

#[test]
fn rule_counters_match_what_the_listener_received() {
    require_root();
    let ns = Netns::new("rulecount").unwrap();
    let tmp = TempDir::new("rulecount").unwrap();
    let cg = TestCgroup::new("rulecount").unwrap();
    let tcp = Listener::tcp_replying(&ns, "198.51.100.1:443", 80_000).unwrap();
    let udp = Listener::udp(&ns, "203.0.113.7:9000").unwrap();
    let d = Daemon::start(&ns, &policy(&tmp, &cg, "")).unwrap();
    let args = [
        "-c",
        CLIENT,
        "198.51.100.1",
        "443",
        "1000000",
        "203.0.113.7",
        "9000",
        "20",
        "700",
    ];
    let out = cg.run(&ns, "python3", &args).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("received 80000"),
        "{out:?}"
    );
    let (sent, udp_bytes) = (tcp.bytes(), udp.bytes());
    assert_eq!((sent, udp_bytes), (1_000_000, 20 * 700));

    let t = rule(&d, "198.51.100.1:443");
    let u = rule(&d, "203.0.113.7:9000/udp");
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
    // Within one packet of what the listener read (payload bytes, counted
    // as they leave; TCP's retransmissions would count again).
    assert!(n(&t, "bytes_out").abs_diff(sent) <= 1500, "{t} vs {sent}");
    assert!(n(&t, "bytes_in").abs_diff(80_000) <= 1500, "{t}");
    assert_eq!(n(&t, "connections"), 1, "{t}");
    assert_eq!(
        (n(&u, "datagrams"), n(&u, "bytes_out")),
        (20, udp_bytes),
        "{u}"
    );

    // The same as Prometheus counters, labelled by policy and rule.
    let m = d.metrics().unwrap();
    let sample =
        |name: &str, labels: &[(&str, &str)]| egress_tests::egressd::sum_samples(&m, name, labels);
    assert_eq!(
        sample(
            "egressd_rule_bytes_total",
            &[
                ("policy", "counted"),
                ("rule", "198.51.100.1:443"),
                ("direction", "out")
            ]
        ),
        n(&t, "bytes_out") as f64,
        "{m}"
    );
    assert_eq!(
        sample(
            "egressd_rule_datagrams_total",
            &[("rule", "203.0.113.7:9000/udp")]
        ),
        20.0
    );
    // And in `status` as people read it.
    let text = d.status();
    assert!(
        text.contains("rule 198.51.100.1:443: 1 connection(s), 976.6 KiB out, "),
        "{text}"
    );
}

/// An agent allowed a broad endpoint tries to upload more than the rule's
/// budget: the excess never arrives; new connections and datagrams are
/// refused with `budget_spent` until the window turns.
#[test]
fn a_spent_budget_stops_the_upload() {
    require_root();
    let ns = Netns::new("budget").unwrap();
    let tmp = TempDir::new("budget").unwrap();
    let cg = TestCgroup::new("budget").unwrap();
    let tcp = Listener::tcp(&ns, "198.51.100.2:443").unwrap();
    let udp = Listener::udp(&ns, "203.0.113.1:9000").unwrap();
    let budgeted = "  - ip: 198.51.100.2\n    ports: [443]\n    budget: {upload: 64 KiB, per: 60s}\n  - ip: 203.0.113.1\n    ports: [9000]\n    protocol: udp\n    budget: {upload: 10 KB, per: 2s}\n";
    let d = Daemon::start(&ns, &policy(&tmp, &cg, budgeted)).unwrap();
    let upload = |up: &str, datagrams: &str| {
        let args = [
            "-c",
            CLIENT,
            "198.51.100.2",
            "443",
            up,
            "203.0.113.1",
            "9000",
            datagrams,
            "1000",
        ];
        cg.run(&ns, "timeout", &[&["8", "python3"][..], &args[..]].concat())
            .unwrap()
    };
    // Datagrams: ten of 1000 bytes fit in 10 KB; the eleventh is refused.
    let out = upload("-1", "30");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("refused datagram 10"),
        "{out:?}"
    );
    assert_eq!((udp.count(), udp.bytes()), (10, 10_000));
    // A megabyte where 64 KiB are allowed: the client stalls (its segments
    // are dropped) and gives up.
    let out = upload("1000000", "0");
    assert!(
        !out.status.success(),
        "{out:?} {} {}",
        tcp.bytes(),
        rule(&d, "198.51.100.2:443")
    );
    let arrived = tcp.bytes();
    assert!(
        arrived > 0 && arrived <= 64 * 1024,
        "{arrived} bytes arrived"
    );
    // While the budget is spent, a new connection is refused at connect().
    let before = tcp.count();
    let out = upload("10", "0");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{out:?}"
    );
    assert_eq!(tcp.count(), before);
    assert_eq!(tcp.bytes(), arrived);
    let events = d.events();
    assert!(
        events.iter().any(|e| e["reason"] == "budget_spent"
            && e["daddr"] == "198.51.100.2"
            && e["hook"] == "connect4"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "budget_spent" && e["daddr"] == "203.0.113.1"),
        "{events:?}"
    );
    let r = rule(&d, "198.51.100.2:443");
    assert!(r["over_budget"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["budget"]["bytes"], 65536, "{r}");
    assert!(d.wait_metric(
        "egressd_rule_over_budget_total",
        &[("rule", "198.51.100.2:443")],
        1.0
    ));
    // The datagrams' window (2 s) has turned since: they go again.
    thread::sleep(Duration::from_millis(500));
    let out = upload("-1", "1");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(udp.count(), 11);
}

/// A client that writes and closes at once: the kernel sends what it
/// buffered after the socket is released. Those bytes count too.
#[test]
fn bytes_sent_after_close_are_counted() {
    require_root();
    let ns = Netns::new("closeflush").unwrap();
    let tmp = TempDir::new("closeflush").unwrap();
    let cg = TestCgroup::new("closeflush").unwrap();
    let tcp = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let d = Daemon::start(&ns, &policy(&tmp, &cg, "")).unwrap();
    const WRITE_AND_CLOSE: &str = r#"
import socket
s = socket.create_connection(("198.51.100.1", 443), timeout=3)
s.sendall(b"w" * 3000000)
s.close()
"#;
    let out = cg.run(&ns, "python3", &["-c", WRITE_AND_CLOSE]).unwrap();
    assert!(out.status.success(), "{out:?}");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(tcp.bytes(), 3_000_000);
    let t = rule(&d, "198.51.100.1:443");
    let out_bytes = t["bytes_out"].as_u64().unwrap();
    // Counted as packets leave: a segment TCP sent again counts again (a
    // busy machine's loopback drops some), and each holds at most 64 KiB.
    let again = retransmitted_segments(&ns);
    assert!(
        out_bytes + 1500 >= 3_000_000 && out_bytes <= 3_000_000 + again * 65536,
        "{t}, {again} segment(s) sent again"
    );
}

/// How many TCP segments namespace `ns` has sent again (its `RetransSegs`).
fn retransmitted_segments(ns: &Netns) -> u64 {
    let out = ns.command("cat").arg("/proc/net/snmp").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Escaping a budget by making the connected address leave the allowlist:
/// the agent pushes it out of its wildcard rule (which holds 64 addresses)
/// with lookups of other names under it, then sends on over the
/// connection it made before. The connection's record (see the eBPF
/// crate's `record.rs`) keeps the rule that allowed it: what it sends is
/// charged to that rule's budget, and nothing past the budget arrives.
#[test]
fn pushing_the_address_out_of_its_host_rule_does_not_escape_the_budget() {
    require_root();
    let ns = Netns::new("budgetevict").unwrap();
    let tmp = TempDir::new("budgetevict").unwrap();
    let cg = TestCgroup::new("budgetevict").unwrap();
    let names: Vec<(String, [String; 1])> = (0..70)
        .map(|i| (format!("n{i}.cdn.test"), [format!("203.0.113.{}", 100 + i)]))
        .collect();
    let up = ["198.51.100.2".to_string()];
    let mut zone: Vec<(&str, Vec<&str>, u32)> =
        vec![("up.cdn.test", up.iter().map(String::as_str).collect(), 300)];
    for (n, a) in &names {
        zone.push((n, a.iter().map(String::as_str).collect(), 300));
    }
    let zone: Vec<(&str, &[&str], u32)> = zone
        .iter()
        .map(|(n, a, t)| (*n, a.as_slice(), *t))
        .collect();
    let _upstream = egress_tests::dns::DnsServer::start(&ns, "198.51.100.53:53", &zone).unwrap();
    let tcp = Listener::tcp(&ns, "198.51.100.2:443").unwrap();
    let policy = tmp
        .write(
            "evict.yaml",
            // The client writes bare bytes, which name no host.
            &format!("name: evict\ncgroups: [{}]\nallow:\n  - host: \"*.cdn.test\"\n    ports: [443]\n    budget: {{upload: 64 KiB, per: 60s}}\n    any_name_at_address: true\ndns:\n  upstream: [198.51.100.53]\n", cg.rel_str()),
        )
        .unwrap();
    let d = Daemon::start(&ns, &policy).unwrap();
    // glibc asks a documentation address where no server runs: only
    // egressd's redirect to its proxy answers.
    let conf = tmp
        .write(
            "resolv.conf",
            "nameserver 203.0.113.53\noptions attempts:1 timeout:2\n",
        )
        .unwrap();
    const EVICT: &str = r#"
import socket, time
s = socket.create_connection(("up.cdn.test", 443), timeout=3)
s.sendall(b"u" * 10000)
for i in range(70):
    socket.getaddrinfo(f"n{i}.cdn.test", 443, socket.AF_INET)
print("pushed out", flush=True)
time.sleep(0.5)
try:
    s.sendall(b"u" * 1000000)
except OSError as e:
    print("stalled", e)
"#;
    let mount = format!(
        "mount --bind {} /etc/resolv.conf && exec python3 -c \"$0\"",
        conf.display()
    );
    let out = cg
        .run(&ns, "unshare", &["--mount", "sh", "-c", &mount, EVICT])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pushed out"),
        "{out:?}"
    );
    thread::sleep(Duration::from_secs(2));
    let arrived = tcp.bytes();
    assert!(
        (10_000..=64 * 1024).contains(&arrived),
        "{arrived} bytes arrived with a budget of 65536: {out:?}"
    );
    // The connection's record keeps its rule: what it sent is charged to
    // the budget, however the allowlist changed since.
    let r = rule(&d, "*.cdn.test:443");
    assert!(r["over_budget"].as_u64().unwrap() >= 1, "{r}");
    let out_bytes = r["bytes_out"].as_u64().unwrap();
    assert!((10_000..=64 * 1024).contains(&out_bytes), "{r}");
}
