//! Reloading policies while the agent keeps connecting: no moment in which
//! a destination neither policy allows is reachable, or one both allow is
//! refused; a broken file changes nothing; a changed file is picked up.

use std::{process::Command, thread, time::Duration};

use egress_tests::{
    egressd::{bin, Daemon, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    require_root,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

fn policy(cg: &TestCgroup, allow: &[&str]) -> String {
    let rules: String = allow
        .iter()
        .map(|a| format!("  - ip: {a}\n    ports: [443]\n"))
        .collect();
    format!("name: agent\ncgroups: [{}]\nallow:\n{rules}", cg.rel_str())
}

/// Tries each destination in turn for `secs` seconds; prints, per
/// destination, how many attempts connected, how many were refused (EPERM),
/// and how many stalled (a connect allowed just before a reload whose
/// packets the backstop then dropped, or a busy listener).
const PROBER: &str = r#"
import socket, sys, time
dests = sys.argv[2:]
counts = {d: [0, 0, 0] for d in dests}
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for d in dests:
        try:
            socket.create_connection((d, 443), timeout=0.5).close(); counts[d][0] += 1
        except PermissionError:
            counts[d][1] += 1
        except OSError:
            counts[d][2] += 1
for d in dests:
    print(d, *counts[d])
"#;

fn counts(out: &[u8]) -> std::collections::HashMap<String, (u64, u64)> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            (
                v[0].to_string(),
                (v[1].parse().unwrap(), v[2].parse().unwrap()),
            )
            // v[3]: stalls, judged through the events below
        })
        .collect()
}

#[test]
fn reload_storm_never_opens_or_closes_what_both_agree_on() {
    require_root();
    let ns = Netns::new("storm").unwrap();
    let (x, y, z, w) = ("198.51.100.1", "198.51.100.2", "203.0.113.1", "203.0.113.9");
    let _listeners: Vec<Listener> = [x, y, z]
        .iter()
        .map(|a| Listener::tcp(&ns, &format!("{a}:443")).unwrap())
        .collect();
    let never = Listener::tcp(&ns, &format!("{w}:443")).unwrap();
    let cg = TestCgroup::new("storm").unwrap();
    let dir = TempDir::new("storm").unwrap();
    let (a, b) = (policy(&cg, &[x, y]), policy(&cg, &[y, z]));
    let file = dir.write("agent.yaml", &a).unwrap();
    let daemon = Daemon::start(&ns, &file).unwrap();

    let prober = cg
        .command(&ns, "python3")
        .args(["-c", PROBER, "6", x, y, z, w])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reloads = 0;
    for i in 0..300 {
        // Whole files only (write aside, then rename), as a careful operator
        // would: the one-second poll must never read half a file.
        let tmp = dir.0.join("agent.yaml.tmp");
        std::fs::write(&tmp, if i % 2 == 0 { &b } else { &a }).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        daemon.signal(libc::SIGHUP);
        reloads += 1;
        thread::sleep(Duration::from_millis(15));
    }
    let out = prober.wait_with_output().unwrap();
    let c = counts(&out.stdout);
    // Nothing egressd did to Y: no refusal, no dropped packet (a stall with
    // no event is the busy listener's), and no event lost.
    let y_events: Vec<_> = daemon
        .events()
        .into_iter()
        .filter(|e| e["daddr"] == y)
        .collect();
    assert!(
        y_events.is_empty(),
        "{y}, allowed by both, was refused during reloads: {y_events:?}"
    );
    assert_eq!(
        daemon.metric("egressd_events_lost_total", &[]).unwrap(),
        0.0
    );
    assert_eq!(
        c[y].1, 0,
        "{y}, allowed by both, was refused during reloads: {c:?}"
    );
    assert_eq!(
        c[w].0, 0,
        "{w}, allowed by neither, was reached during reloads: {c:?}"
    );
    assert_eq!(never.count(), 0);
    // The reloads took effect: X and Z were each both allowed and refused.
    for d in [x, z] {
        assert!(
            c[d].0 > 0 && c[d].1 > 0,
            "{d} never changed over {reloads} reloads: {c:?}"
        );
    }
    assert!(
        daemon
            .metric("egressd_reloads_total", &[("result", "ok")])
            .unwrap()
            >= 50.0
    );
    assert_eq!(
        daemon
            .metric("egressd_reloads_total", &[("result", "error")])
            .unwrap(),
        0.0
    );
}

#[test]
fn a_broken_file_on_reload_changes_nothing() {
    require_root();
    let ns = Netns::new("broken").unwrap();
    let _x = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let denied = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("broken").unwrap();
    let dir = TempDir::new("broken").unwrap();
    let file = dir
        .write("agent.yaml", &policy(&cg, &["198.51.100.1"]))
        .unwrap();
    let daemon = Daemon::start(&ns, &file).unwrap();
    std::fs::write(
        &file,
        "name: agent\nallow:\n  - cidr: 0.0.0.0/0\n    port: 443\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let refused = daemon.wait_metric("egressd_reloads_total", &[("result", "error")], 1.0);
    assert!(refused, "the broken reload was not counted");
    assert!(
        daemon.wait_log(|l| l.contains("reload refused") && l.contains("unknown field `port`")),
        "the refusal was not logged"
    );
    let probe = |a: &str| {
        String::from_utf8_lossy(&cg.run(&ns, PROBE, &["tcp", a]).unwrap().stdout)
            .trim()
            .to_string()
    };
    assert_eq!(
        probe("198.51.100.1:443"),
        "ok",
        "the running policy was dropped"
    );
    assert_eq!(
        probe("203.0.113.9:443"),
        "error: 1",
        "the broken policy was applied"
    );
    assert_eq!(denied.count(), 0);
}

/// `egressd reload` answers once the daemon has reloaded: a broken file
/// fails it (exit 1, with the daemon's reason) and changes nothing; a good
/// one is in force the moment it exits 0.
#[test]
fn egressd_reload_answers_once_the_reload_is_done() {
    require_root();
    let ns = Netns::new("reloadcmd").unwrap();
    let _x = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let later = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("reloadcmd").unwrap();
    let dir = TempDir::new("reloadcmd").unwrap();
    let file = dir
        .write("agent.yaml", &policy(&cg, &["198.51.100.1"]))
        .unwrap();
    let daemon = Daemon::start(&ns, &file).unwrap();
    let reload = || {
        Command::new(bin())
            .args(["reload", "--instance", &daemon.instance])
            .output()
            .unwrap()
    };
    let probe = |a: &str| {
        String::from_utf8_lossy(&cg.run(&ns, PROBE, &["tcp", a]).unwrap().stdout)
            .trim()
            .to_string()
    };
    std::fs::write(
        &file,
        "name: agent\nallow:\n  - cidr: 0.0.0.0/0\n    port: 443\n",
    )
    .unwrap();
    let out = reload();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reload refused") && err.contains("unknown field `port`"),
        "{err}"
    );
    assert_eq!(probe("198.51.100.1:443"), "ok");
    assert_eq!(probe("203.0.113.9:443"), "error: 1");
    std::fs::write(&file, policy(&cg, &["198.51.100.1", "203.0.113.9"])).unwrap();
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        probe("203.0.113.9:443"),
        "ok",
        "not in force when reload returned"
    );
    assert_eq!(later.count(), 1);
}

#[test]
fn a_changed_file_is_picked_up_and_cgroups_follow() {
    require_root();
    let ns = Netns::new("change").unwrap();
    let _l = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let (one, two) = (
        TestCgroup::new("one").unwrap(),
        TestCgroup::new("two").unwrap(),
    );
    two.cgroup.create().unwrap();
    let dir = TempDir::new("change").unwrap();
    let file = dir.write("agent.yaml", &policy(&one, &[])).unwrap();
    let daemon = Daemon::start(&ns, &file).unwrap();
    let probe = |cg: &TestCgroup| {
        String::from_utf8_lossy(
            &cg.run(&ns, PROBE, &["tcp", "203.0.113.9:443"])
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string()
    };
    assert_eq!(probe(&one), "error: 1");
    assert_eq!(probe(&two), "ok", "two is not governed yet");
    // Same policy, now governing `two` instead of `one`, and allowing nothing
    // still; no signal: the file change is noticed.
    std::fs::write(
        &file,
        format!("name: agent\ncgroups: [{}]\nallow: []\n", two.rel_str()),
    )
    .unwrap();
    let mut moved = false;
    for _ in 0..100 {
        if probe(&two) == "error: 1" && probe(&one) == "ok" {
            moved = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(moved, "the changed file was not applied");
    assert!(
        daemon
            .metric("egressd_reloads_total", &[("result", "ok")])
            .unwrap()
            >= 1.0
    );
}

/// A policy missing from the files on reload (say, an editor moved it aside
/// while saving) does not stop being enforced: the reload is refused.
#[test]
fn a_policy_missing_on_reload_stays_enforced() {
    require_root();
    let ns = Netns::new("missing").unwrap();
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("missing").unwrap();
    let dir = TempDir::new("missing").unwrap();
    let file = dir.write("agent.yaml", &policy(&cg, &[])).unwrap();
    dir.write(
        "other.yaml",
        "name: other\ncgroups: [egressd-test.slice/other-missing]\nallow: []\n",
    )
    .unwrap();
    let daemon = Daemon::start(&ns, &dir.0).unwrap();
    std::fs::rename(&file, dir.0.join("agent.yaml~")).unwrap();
    daemon.signal(libc::SIGHUP);
    let refused = daemon.wait_metric("egressd_reloads_total", &[("result", "error")], 1.0);
    assert!(refused, "dropping a policy was not refused");
    assert!(
        daemon.wait_log(|l| l.contains("no longer in the files")),
        "the refusal was not logged"
    );
    let out = cg.run(&ns, PROBE, &["tcp", "203.0.113.9:443"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "error: 1",
        "the missing policy stopped enforcing"
    );
    assert_eq!(bad.count(), 0);
    let _ = std::fs::remove_dir(
        egressd::kernel::mounts::cgroup2_root()
            .unwrap()
            .join("egressd-test.slice/other-missing"),
    );
}

/// A connection audit mode let through (to a destination the policy does
/// not allow) is judged again once a reload makes the policy enforce: what
/// the agent writes on it afterwards does not arrive. A byte-counting
/// listener proves it.
#[test]
fn a_connection_audit_let_through_is_cut_when_the_policy_enforces() {
    use std::io::{BufRead, BufReader, Write};
    require_root();
    let ns = Netns::new("auditcut").unwrap();
    let cg = TestCgroup::new("auditcut").unwrap();
    let dir = TempDir::new("auditcut").unwrap();
    let text = |mode: &str| {
        format!(
            "name: p\nmode: {mode}\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n",
            cg.rel_str()
        )
    };
    let policy = dir.write("p.yaml", &text("audit")).unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    // The receiving end, outside the cgroup: counts the bytes it gets.
    let mut sink = ns
        .command("python3")
        .args([
            "-c",
            "import socket\n\
             s = socket.socket(); s.bind(('203.0.113.9', 443)); s.listen(1)\n\
             print('ready', flush=True)\n\
             c, _ = s.accept(); c.settimeout(3); n = 0\n\
             try:\n    while True:\n        d = c.recv(100)\n        if not d: break\n        n += len(d)\n\
             except OSError: pass\n\
             print(n, flush=True)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sink_out = BufReader::new(sink.stdout.take().unwrap());
    let mut line = String::new();
    sink_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let mut agent = cg
        .command(&ns, "python3")
        .args([
            "-c",
            "import socket, sys\n\
             c = socket.create_connection(('203.0.113.9', 443), timeout=2)\n\
             c.sendall(b'a'); print('first', flush=True)\n\
             sys.stdin.readline()\n\
             try:\n    c.sendall(b'secret'); print('second', flush=True)\n\
             except OSError as e: print('refused', e.errno, flush=True)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent_out = BufReader::new(agent.stdout.take().unwrap());
    line.clear();
    agent_out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "first",
        "audit mode let the connection through"
    );
    dir.write("p.yaml.tmp", &text("enforce")).unwrap();
    std::fs::rename(dir.0.join("p.yaml.tmp"), &policy).unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(daemon.wait_log(|l| l.contains("reloaded")), "no reload");
    agent.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let _ = agent.wait_with_output();
    line.clear();
    sink_out.read_line(&mut line).unwrap();
    let _ = sink.wait();
    assert_eq!(
        line.trim(),
        "1",
        "bytes written after the policy began to enforce arrived"
    );
}
