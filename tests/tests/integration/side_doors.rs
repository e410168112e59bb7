//! Every way out that the sock_addr hooks must judge, tried from inside a
//! governed cgroup with `egressd exec --allow`: the allowed destination is
//! reached (so the test can see traffic), the denied one receives nothing.

use egress_tests::{
    egressd::{exec, ExecResult},
    listen::Listener,
    netns::Netns,
    require_root,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// What the agent is allowed: one IPv4 and one IPv6 address, port 443, TCP
/// and UDP; and io_uring, whose connect and sendmsg the hooks must judge.
const ALLOW: &[&str] = &[
    "--allow-io-uring",
    "--allow",
    "198.51.100.1:443",
    "--allow",
    "198.51.100.1:443/udp",
    "--allow",
    "[2001:db8::1]:443",
    "--allow",
    "[2001:db8::1]:443/udp",
];

fn probe(ns: &Netns, mode: &str, addr: &str, mapped: bool) -> ExecResult {
    let mut cmd = vec![PROBE, mode, addr];
    if mapped {
        cmd.push("--mapped");
    }
    exec(ns, ALLOW, &cmd).expect("egressd exec runs")
}

/// Tries `mode` at an allowed and at a denied destination of the same
/// family and protocol; the first must arrive, the second must not.
fn door(mode: &str, udp: bool, allowed: &str, denied: &str, mapped: bool) {
    require_root();
    let ns = Netns::new("door").unwrap();
    let listen = |a: &str| {
        if udp {
            Listener::udp(&ns, a).unwrap()
        } else {
            Listener::tcp(&ns, a).unwrap()
        }
    };
    let (good, bad) = (listen(allowed), listen(denied));

    let ok = probe(&ns, mode, allowed, mapped);
    assert_eq!(
        ok.stdout.trim(),
        "ok",
        "{mode} to allowed {allowed}: {}",
        ok.stderr
    );
    assert_eq!(ok.code, Some(0));
    assert!(
        good.count() >= 1,
        "{mode}: the allowed listener saw nothing"
    );
    assert!(
        ok.events.is_empty(),
        "{mode}: allowed attempt reported: {:?}",
        ok.events
    );

    let refused = probe(&ns, mode, denied, mapped);
    assert_eq!(
        refused.stdout.trim(),
        "error: 1",
        "{mode} to denied {denied} was not refused with EPERM: {}",
        refused.stderr
    );
    assert_eq!(
        refused.code,
        Some(1),
        "exec exits with the command's status"
    );
    assert_eq!(
        bad.count(),
        0,
        "{mode}: the denied listener received something"
    );
    let e = refused
        .events
        .first()
        .unwrap_or_else(|| panic!("{mode}: no deny event"));
    let want_ip = denied.rsplit_once(':').unwrap().0.trim_matches(['[', ']']);
    assert_eq!(e["daddr"], want_ip, "{mode}: event {e}");
    assert_eq!(e["dport"], 443);
    assert_eq!(e["verdict"], "denied");
    assert_eq!(e["reason"], "destination_not_allowed");
    assert_eq!(e["protocol"], if udp { "udp" } else { "tcp" });
    assert_eq!(e["policy"], "exec");
    assert_eq!(e["comm"], "probe");
    assert!(
        refused.stderr.contains(want_ip),
        "summary names the destination: {}",
        refused.stderr
    );
}

const V4_OK: &str = "198.51.100.1:443";
const V4_NO: &str = "203.0.113.9:443";
const V6_OK: &str = "[2001:db8::1]:443";
const V6_NO: &str = "[2001:db8::2]:443";

#[test]
fn tcp_ipv4() {
    door("tcp", false, V4_OK, V4_NO, false);
}

#[test]
fn tcp_ipv6() {
    door("tcp", false, V6_OK, V6_NO, false);
}

#[test]
fn tcp_ipv4_mapped_on_ipv6_socket() {
    door("tcp", false, V4_OK, V4_NO, true);
}

#[test]
fn udp_connected_ipv4() {
    door("udp-connect", true, V4_OK, V4_NO, false);
}

#[test]
fn udp_connected_ipv6() {
    door("udp-connect", true, V6_OK, V6_NO, false);
}

#[test]
fn udp_connected_mapped() {
    door("udp-connect", true, V4_OK, V4_NO, true);
}

#[test]
fn udp_sendto_ipv4() {
    door("udp-sendto", true, V4_OK, V4_NO, false);
}

#[test]
fn udp_sendto_ipv6() {
    door("udp-sendto", true, V6_OK, V6_NO, false);
}

#[test]
fn udp_sendto_mapped() {
    door("udp-sendto", true, V4_OK, V4_NO, true);
}

#[test]
fn udp_sendmsg_ipv4() {
    door("udp-sendmsg", true, V4_OK, V4_NO, false);
}

#[test]
fn udp_sendmsg_ipv6() {
    door("udp-sendmsg", true, V6_OK, V6_NO, false);
}

#[test]
fn udp_sendmmsg_ipv4() {
    door("udp-sendmmsg", true, V4_OK, V4_NO, false);
}

#[test]
fn udp_sendmmsg_ipv6() {
    door("udp-sendmmsg", true, V6_OK, V6_NO, false);
}

#[test]
fn udp_connected_with_control_message_ipv4() {
    door("udp-cmsg", true, V4_OK, V4_NO, false);
}

#[test]
fn udp_connected_with_control_message_ipv6() {
    door("udp-cmsg", true, V6_OK, V6_NO, false);
}

#[test]
fn udp_ipv4_address_on_ipv6_socket() {
    door("udp-v4-on-v6", true, V4_OK, V4_NO, false);
}

#[test]
fn tcp_fast_open_sendto_ipv4() {
    door("tfo-sendto", false, V4_OK, V4_NO, false);
}

#[test]
fn tcp_fast_open_sendto_ipv6() {
    door("tfo-sendto", false, V6_OK, V6_NO, false);
}

#[test]
fn tcp_fast_open_connect_ipv4() {
    door("tfo-connect", false, V4_OK, V4_NO, false);
}

#[test]
fn tcp_fast_open_connect_ipv6() {
    door("tfo-connect", false, V6_OK, V6_NO, false);
}

#[test]
fn io_uring_connect_ipv4() {
    door("uring-connect", false, V4_OK, V4_NO, false);
}

#[test]
fn io_uring_connect_ipv6() {
    door("uring-connect", false, V6_OK, V6_NO, false);
}

#[test]
fn io_uring_sendmsg_ipv4() {
    door("uring-sendmsg", true, V4_OK, V4_NO, false);
}

#[test]
fn io_uring_sendmsg_ipv6() {
    door("uring-sendmsg", true, V6_OK, V6_NO, false);
}

/// The allowed address on a port, or with a protocol, it is not allowed for.
#[test]
fn allowed_address_on_other_port_or_protocol() {
    require_root();
    let ns = Netns::new("port").unwrap();
    let tcp_other = Listener::tcp(&ns, "198.51.100.1:8443").unwrap();
    let udp_other = Listener::udp(&ns, "198.51.100.1:8443").unwrap();
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443"],
        &[PROBE, "tcp", "198.51.100.1:8443"],
    )
    .unwrap();
    assert_eq!(r.stdout.trim(), "error: 1");
    assert_eq!(r.events[0]["reason"], "port_not_allowed");
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:8443"],
        &[PROBE, "udp-sendto", "198.51.100.1:8443"],
    )
    .unwrap();
    assert_eq!(r.stdout.trim(), "error: 1", "TCP-only rule let UDP through");
    assert_eq!(r.events[0]["reason"], "port_not_allowed");
    assert_eq!(tcp_other.count(), 0);
    assert_eq!(udp_other.count(), 0);
}

/// A connected UDP socket handed a destination with family AF_UNSPEC:
/// udp_sendmsg still sends to that address, and the sendmsg4 hook sees
/// `user_family` 0 with the real address in `user_ip4`. It must be judged
/// by that address, not by the socket's (allowed) connected destination.
#[test]
fn udp_connected_then_sendto_with_unspec_family() {
    require_root();
    let ns = Netns::new("unspec").unwrap();
    let (good, bad) = (
        Listener::udp(&ns, V4_OK).unwrap(),
        Listener::udp(&ns, V4_NO).unwrap(),
    );
    let ungoverned = ns
        .command(PROBE)
        .args(["udp-unspec", V4_NO, "--via", V4_OK])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ungoverned.stdout).trim(), "ok");
    assert_eq!(
        bad.count(),
        1,
        "the kernel did not send to the AF_UNSPEC address"
    );
    let r = exec(&ns, ALLOW, &[PROBE, "udp-unspec", V4_NO, "--via", V4_OK]).unwrap();
    assert_eq!(r.stdout.trim(), "error: 1", "{}", r.stderr);
    assert_eq!(
        bad.count(),
        1,
        "the governed datagram reached the denied listener"
    );
    assert_eq!(
        r.events[0]["hook"], "sendmsg4",
        "refused by the hook, not only the backstop"
    );
    assert_eq!(r.events[0]["daddr"], "203.0.113.9");
    let r = exec(&ns, ALLOW, &[PROBE, "udp-unspec", V4_OK, "--via", V4_OK]).unwrap();
    assert_eq!(r.stdout.trim(), "ok", "{}", r.stderr);
    assert_eq!(good.count(), 1);
}

/// UDP-Lite never meets the connect hook (the kernel has no pre-connect
/// for it), so a connected UDP-Lite socket is judged by the backstop alone.
/// Port 0 to an allowed address (only port 443 is) must not pass as "a
/// fragment without ports": the capture on the path sees nothing.
#[test]
fn udplite_to_port_zero_of_an_allowed_address() {
    require_root();
    let ns = Netns::new("udplite").unwrap();
    for (family, addr) in [("AF_INET", "198.51.100.1"), ("AF_INET6", "2001:db8::1")] {
        let seen = Listener::capture(&ns, addr).unwrap();
        let script = format!(
            "import socket\n\
             s = socket.socket(socket.{family}, socket.SOCK_DGRAM, 136)\n\
             s.connect(('{addr}', 0))\n\
             try:\n    s.send(b'secret'); print('sent')\n\
             except PermissionError: print('refused')"
        );
        let r = exec(&ns, ALLOW, &["python3", "-c", &script]).unwrap();
        assert_eq!(r.stdout.trim(), "refused", "{family}: {r:?}");
        assert_eq!(
            seen.count(),
            0,
            "{family}: a UDP-Lite datagram reached port 0"
        );
    }
}
