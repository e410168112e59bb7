//! The egress backstop's verdicts without traffic: crafted packets run
//! through the `egress_packet` program a real `egressd run` attached to a
//! cgroup, with BPF_PROG_TEST_RUN, as a process of that cgroup would send
//! them (tests/src/bin/testrun.rs). Each packet's verdict is checked, each
//! refusal's event (its reason and destination), and what the allowed
//! payload counted to its rule.

use std::process::Command;

use egress_tests::{
    egressd::{bin, Daemon, TempDir, TestCgroup},
    netns::Netns,
    require_root,
};

const TESTRUN: &str = env!("CARGO_BIN_EXE_testrun");
const SRC4: [u8; 4] = [198, 51, 100, 3];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A TCP segment from port 40000 (or `sport`) with `flags` and `payload`.
fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend(1000u32.to_be_bytes());
    h.extend(0u32.to_be_bytes());
    h.extend([5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend(payload);
    h
}

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(40000u16.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend(((8 + payload.len()) as u16).to_be_bytes());
    h.extend([0, 0]);
    h.extend(payload);
    h
}

/// An Ethernet frame of an IPv4 packet to `dst` (`options`: with four
/// bytes of IP options).
fn v4(proto: u8, dst: [u8; 4], options: bool, l4: &[u8]) -> Vec<u8> {
    let words: u8 = if options { 6 } else { 5 };
    let total = (usize::from(words) * 4 + l4.len()) as u16;
    let mut f = vec![0u8; 12];
    f.extend([0x08, 0x00, 0x40 | words, 0]);
    f.extend(total.to_be_bytes());
    f.extend([0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend(SRC4);
    f.extend(dst);
    if options {
        f.extend([1, 1, 1, 1]); // no-operation options
    }
    f.extend(l4);
    f
}

/// An Ethernet frame of an IPv6 packet to `dst`, its first header `next`
/// (`ext`: the extension headers before the transport's).
fn v6(next: u8, dst: [u8; 16], ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend(((ext.len() + l4.len()) as u16).to_be_bytes());
    f.extend([next, 64]);
    f.extend(SRC6);
    f.extend(dst);
    f.extend(ext);
    f.extend(l4);
    f
}

fn v6_addr(last: u8) -> [u8; 16] {
    let mut a = SRC6;
    a[15] = last;
    a
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn the_backstop_ladder_on_crafted_packets() {
    require_root();
    let ns = Netns::new("verdicts").unwrap();
    let tmp = TempDir::new("verdicts").unwrap();
    let cg = TestCgroup::new("verdicts").unwrap();
    let policy = tmp
        .write(
            "v.yaml",
            &format!(
                "name: verdicts\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n  - ip: 198.51.100.2\n    ports: [53]\n    protocol: udp\n  - ip: 2001:db8::1\n    ports: [443]\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let d = Daemon::start(&ns, &policy).unwrap();
    const ONE: [u8; 4] = [198, 51, 100, 1];
    const TWO: [u8; 4] = [198, 51, 100, 2];
    const FAR: [u8; 4] = [203, 0, 113, 9];
    // Routing header (type 0 would be refused anyway): next header TCP.
    let routing = [6u8, 0, 0, 0, 0, 0, 0, 0];
    // What, the frame, the verdict, and the refusal's reason and destination.
    type Case = (
        &'static str,
        Vec<u8>,
        u32,
        Option<(&'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "a SYN to an allowed address and port",
            v4(6, ONE, false, &tcp(40000, 443, SYN, b"")),
            1,
            None,
        ),
        (
            "payload to an allowed peer (no record: judged by its peer)",
            v4(6, ONE, false, &tcp(40000, 443, ACK, &[7; 100])),
            1,
            None,
        ),
        (
            "a SYN to another port of it",
            v4(6, ONE, false, &tcp(40000, 444, SYN, b"")),
            0,
            Some(("packet_destination_not_allowed", "198.51.100.1")),
        ),
        (
            "a SYN to an address no rule names",
            v4(6, FAR, false, &tcp(40000, 443, SYN, b"")),
            0,
            Some(("packet_destination_not_allowed", "203.0.113.9")),
        ),
        (
            "IPv4 options, to an allowed peer",
            v4(6, ONE, true, &tcp(40000, 443, SYN, b"")),
            0,
            Some(("ip_options", "198.51.100.1")),
        ),
        (
            "a protocol no rule allows (GRE)",
            v4(47, ONE, false, &[0; 8]),
            0,
            Some(("protocol_not_allowed", "198.51.100.1")),
        ),
        (
            "a datagram to an allowed UDP port",
            v4(17, TWO, false, &udp(53, b"q")),
            1,
            None,
        ),
        (
            "a datagram to a TCP-only rule's port",
            v4(17, ONE, false, &udp(443, b"q")),
            0,
            Some(("packet_destination_not_allowed", "198.51.100.1")),
        ),
        (
            "a SYN-ACK from a port no listen rule opens",
            v4(6, ONE, false, &tcp(8080, 443, SYN | ACK, b"")),
            0,
            Some(("listen_not_allowed", "198.51.100.1")),
        ),
        (
            "an IPv6 SYN to an allowed address",
            v6(6, v6_addr(1), &[], &tcp(40000, 443, SYN, b"")),
            1,
            None,
        ),
        (
            "an IPv6 routing header, to an allowed peer",
            v6(43, v6_addr(1), &routing, &tcp(40000, 443, SYN, b"")),
            0,
            Some(("ip_options", "2001:db8::1")),
        ),
        (
            "an IPv6 SYN to an address no rule names",
            v6(6, v6_addr(2), &[], &tcp(40000, 443, SYN, b"")),
            0,
            Some(("packet_destination_not_allowed", "2001:db8::2")),
        ),
    ];
    let frames: Vec<String> = cases.iter().map(|(_, f, _, _)| hex(f)).collect();
    let mut args = vec![cg.cgroup.path.to_str().unwrap()];
    args.extend(frames.iter().map(String::as_str));
    let out = cg.run(&ns, TESTRUN, &args).unwrap();
    assert!(out.status.success(), "{out:?}");
    let verdicts: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(verdicts.len(), cases.len());
    for ((what, _, want, _), got) in cases.iter().zip(&verdicts) {
        assert_eq!(got, want, "{what}");
    }
    // Each refusal is reported, in order, with its reason and destination.
    let refused: Vec<(&str, &str)> = cases.iter().filter_map(|c| c.3).collect();
    let events = d.wait_events(refused.len());
    let seen: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["hook"] == "packet_egress")
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["daddr"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = refused
        .iter()
        .map(|(r, a)| (r.to_string(), a.to_string()))
        .collect();
    assert_eq!(seen, want, "{events:?}");
    // The allowed payload counted to its rule (the SYNs carry none).
    let status = Command::new(bin())
        .args(["status", "--json", "--instance", &d.instance])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let rule = status["policies"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "198.51.100.1:443")
        .cloned()
        .unwrap();
    assert_eq!(rule["bytes_out"], 100, "{rule}");
}
