//! `egressd status` and `egressd events`, against the running daemon over
//! its root-only control socket.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use egress_tests::{
    egressd::{bin, Daemon, ReachableCopy, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    require_root,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

#[test]
fn status_and_live_events() {
    require_root();
    let ns = Netns::new("live").unwrap();
    let target = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let (cga, cgb) = (
        TestCgroup::new("la").unwrap(),
        TestCgroup::new("lb").unwrap(),
    );
    let dir = TempDir::new("live").unwrap();
    dir.write(
        "a.yaml",
        &format!(
            "name: la\ncgroups: [{}]\nallow:\n  - cidr: 198.51.100.0/24\n    ports: [443]\n",
            cga.rel_str()
        ),
    )
    .unwrap();
    dir.write(
        "b.yaml",
        &format!(
            "name: lb\nmode: audit\ncgroups: [{}]\nallow: []\n",
            cgb.rel_str()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&ns, &dir.0).unwrap();

    // A live tail of policy la only.
    let mut tail = Command::new(bin())
        .args(["events", "--instance", &daemon.instance, "--policy", "la"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = tail.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    thread::sleep(Duration::from_millis(300));
    cgb.run(&ns, PROBE, &["tcp", "203.0.113.9:443"]).unwrap();
    cga.run(&ns, PROBE, &["tcp", "203.0.113.9:443"]).unwrap();
    let line = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a live event");
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        e["policy"], "la",
        "the filter let another policy's event through: {e}"
    );
    assert_eq!(e["daddr"], "203.0.113.9");
    tail.kill().unwrap();

    // The compact form, for people.
    let mut text = Command::new(bin())
        .args(["events", "--instance", &daemon.instance, "--format", "text"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = text.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    thread::sleep(Duration::from_millis(300));
    cga.run(&ns, PROBE, &["tcp", "203.0.113.9:443"]).unwrap();
    let line = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a live event");
    assert!(
        line.contains(" denied la tcp 203.0.113.9:443 by probe (pid ")
            && line.ends_with(": destination_not_allowed"),
        "{line}"
    );
    text.kill().unwrap();
    text.wait().unwrap();
    tail.wait().unwrap();

    let out = Command::new(bin())
        .args(["status", "--json", "--instance", &daemon.instance])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = s["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "la")
        .unwrap();
    assert_eq!(a["mode"], "enforce");
    assert_eq!(a["entries"]["ipv4"], 1);
    assert_eq!(a["denied"], 2);
    assert_eq!(a["cgroups"][0]["id"], cga.cgroup.id().unwrap());
    let b = s["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "lb")
        .unwrap();
    assert_eq!(b["mode"], "audit");
    assert_eq!(b["audited"], 1);
    // The audit-mode cgroup's connection arrived, the enforced one's did not.
    assert_eq!(target.count(), 1);
    let human = daemon.status();
    assert!(human.contains("policy la (enforce"), "{human}");
    // What this daemon cannot close is said, not left out.
    // Socket families: judged where BPF LSM runs, said where not.
    assert!(
        human.contains("socket families: judged")
            || (human.contains("socket families: not judged")
                && human.contains("not closed by egressd run: socket families")),
        "{human}"
    );
    // UNIX sockets: judged where the kernel has the hooks, said where not.
    if egress_tests::kernel_at_least(6, 7) {
        assert!(human.contains("UNIX sockets: judged"), "{human}");
    } else {
        assert!(
            human.contains("UNIX sockets: not judged")
                && human.contains("not closed by egressd run: UNIX sockets"),
            "{human}"
        );
    }
}

#[test]
fn only_root_may_ask() {
    require_root();
    let ns = Netns::new("rootonly").unwrap();
    let cg = TestCgroup::new("rootonly").unwrap();
    let dir = TempDir::new("rootonly").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: p\ncgroups: [{}]\nallow: []\n", cg.rel_str()),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    // A copy `nobody` can run wherever the checkout is.
    let egressd = ReachableCopy::new(&bin()).unwrap();
    let mut cmd = Command::new(&egressd.path);
    cmd.args(["status", "--instance", &daemon.instance]);
    // SAFETY: setgid/setuid between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("egressd runs as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody read the status: {out:?}");
    assert!(out.stdout.is_empty());
    // egressd itself ran and was refused at the control socket.
    assert!(
        stderr.contains(&format!(
            "connecting to /run/egressd/{}.sock",
            daemon.instance
        )) && stderr.contains("Permission denied"),
        "egressd did not run as nobody, or failed otherwise: {stderr}"
    );
}
