//! Loopback rules mean egressd's own loopback. An agent that makes a
//! network namespace of its own has a loopback of its own too, where
//! something else may listen: a rule for 127.0.0.1 must not reach it.

use egress_tests::{egressd::exec, listen::Listener, netns::Netns, require_root};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// In a new network namespace: a listener on 127.0.0.1:8080, then a
/// connect to it; prints the probe's result, then what the listener saw.
fn in_new_netns() -> String {
    format!(
        r#"unshare -n sh -c "ip link set lo up
python3 -c 'import socket
s = socket.socket(); s.bind((\"127.0.0.1\", 8080)); s.listen(); s.settimeout(2)
print(\"listening\", flush=True)
try:
    s.accept(); print(\"accepted\")
except OSError:
    print(\"nothing\")' &
sleep 0.5; {PROBE} tcp 127.0.0.1:8080; wait""#
    )
}

/// Output lines in order (the listener and the probe print concurrently).
fn sorted(out: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(out)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[test]
fn loopback_rule_means_egressds_namespace_only() {
    require_root();
    let ns = Netns::new("loop").unwrap();
    let here = Listener::tcp(&ns, "127.0.0.1:8080").unwrap();
    let script = in_new_netns();

    let ungoverned = ns.command("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(
        sorted(&ungoverned.stdout),
        ["accepted", "listening", "ok"],
        "{ungoverned:?}"
    );

    // The probes in another network namespace make it (`unshare -n`).
    let allow = ["--allow", "127.0.0.1:8080", "--allow-namespaces"];
    let r = exec(&ns, &allow, &[PROBE, "tcp", "127.0.0.1:8080"]).unwrap();
    if !egress_tests::kernel_at_least(5, 14) {
        // No netns cookie: egressd cannot tell its own loopback from
        // another's, so it refuses both, and says so.
        assert_eq!(r.stdout.trim(), "error: 1", "{r:?}");
        assert!(r.stderr.contains("loopback rules refuse"), "{r:?}");
        assert_eq!(here.count(), 0);
        eprintln!("no SO_NETNS_COOKIE on this kernel: asserted that loopback rules refuse, and egressd says so");
    } else {
        assert_eq!(
            r.stdout.trim(),
            "ok",
            "the allowed loopback of egressd's namespace: {}",
            r.stderr
        );
        assert_eq!(here.count(), 1);
    }
    let before = here.count();

    let r = exec(&ns, &allow, &["sh", "-c", &script]).unwrap();
    assert_eq!(
        sorted(r.stdout.as_bytes()),
        ["error: 1", "listening", "nothing"],
        "{}",
        r.stderr
    );
    assert_eq!(r.events[0]["reason"], "loopback_of_another_netns");
    assert_eq!(
        here.count(),
        before,
        "nothing more reached egressd's loopback either"
    );
}

/// A datagram to the unspecified address goes to loopback (the kernel
/// turns 0.0.0.0 into 127.0.0.1 when a socket connects to it): from a
/// network namespace the agent made, it is refused as that namespace's
/// loopback is, though a rule allows 127.0.0.1 for UDP.
#[test]
fn the_unspecified_address_is_loopback_too() {
    require_root();
    let ns = Netns::new("unspec").unwrap();
    let script = r#"unshare -n sh -c "ip link set lo up
python3 -c 'import socket
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind((\"127.0.0.1\", 8080)); r.settimeout(1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.connect((\"0.0.0.0\", 8080)); s.send(b\"secret\"); print(\"sent\")
except OSError as e:
    print(\"refused\", e.errno)
try:
    r.recv(100); print(\"received\")
except OSError:
    print(\"nothing\")'""#;
    let r = exec(
        &ns,
        &["--allow", "127.0.0.1:8080/udp", "--allow-namespaces"],
        &["sh", "-c", script],
    )
    .unwrap();
    assert_eq!(r.stdout, "refused 1\nnothing\n", "{r:?}");
}
