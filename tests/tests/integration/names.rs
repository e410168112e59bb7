//! Names, not addresses: one address of a front door serves many names, so
//! a connection to an address that only a host rule allows must name, in
//! its first bytes, a host that the policy's DNS answered with that
//! address. The front door here serves the allowed name and an attacker's
//! on the same address, routing by SNI and Host as a CDN does; every
//! refusal is proven there (the connection reached it with 0 bytes), and
//! every allowed case too (the name's bytes arrived).

use egress_tests::{
    dns::DnsServer, egressd::exec, front_door::FrontDoor, netns::Netns, require_root,
};
use serde_json::Value;

const UPSTREAM: &str = "198.51.100.53:53";
const DOOR4: &str = "198.51.100.1";
const DOOR6: &str = "2001:db8::1";

fn zone(ns: &Netns) -> DnsServer {
    DnsServer::start(ns, UPSTREAM, &[("api.model.test", &[DOOR4, DOOR6], 300)]).unwrap()
}

const ALLOW: &[&str] = &[
    "--resolver",
    UPSTREAM,
    "--allow",
    "api.model.test:443",
    "--allow",
    "api.model.test:80",
];

/// The connections that brought bytes naming `name` (SNI or Host).
fn named<'a>(conns: &'a [Value], name: &str) -> Vec<&'a Value> {
    conns
        .iter()
        .filter(|c| c["sni"] == name || c["host"] == name)
        .collect()
}

/// Connections that reached the door with nothing.
fn empty(conns: &[Value]) -> usize {
    conns.iter().filter(|c| c["bytes"] == 0).count()
}

/// A ClientHello for `sni`, as large as a post-quantum one (a padding
/// extension first, so the server_name is in its last bytes), written in
/// `parts` writes (with TCP_NODELAY, 50 ms apart: one segment each) to
/// `addr`:443. Prints what the exchange came to.
fn split_hello(sni: &str, addr: &str, parts: usize) -> String {
    format!(
        r#"
import socket, time
def hello(sni, pad):
    name = sni.encode()
    entry = b'\0' + len(name).to_bytes(2, 'big') + name
    lst = len(entry).to_bytes(2, 'big') + entry
    ext = (0x15).to_bytes(2, 'big') + pad.to_bytes(2, 'big') + b'\0' * pad
    ext += (0).to_bytes(2, 'big') + len(lst).to_bytes(2, 'big') + lst
    body = b'\x03\x03' + b'\x11' * 32 + b'\x20' + b'\x22' * 32 + b'\x00\x02\x13\x01\x01\x00'
    body += len(ext).to_bytes(2, 'big') + ext
    hs = b'\x01' + len(body).to_bytes(3, 'big') + body
    return b'\x16\x03\x01' + len(hs).to_bytes(2, 'big') + hs
h = hello('{sni}', 1800)
family = socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(2)
s.connect(('{addr}', 443))
step = -(-len(h) // {parts})
for i in range(0, len(h), step):
    s.sendall(h[i:i + step]); time.sleep(0.05)
print('sent', len(h), flush=True)
time.sleep(0.5)
"#
    )
}

/// curl over TLS (IPv4 and IPv6) and plain HTTP: the allowed name is
/// served; the attacker's name on the same address gets nothing through,
/// and each refusal is reported with the name presented.
#[test]
fn a_name_the_policy_did_not_resolve_there_reaches_nothing_behind_the_address() {
    require_root();
    let ns = Netns::new("names").unwrap();
    let _dns = zone(&ns);
    let door =
        FrontDoor::start(&ns, &[DOOR4, DOOR6], &["api.model.test", "attacker.test"]).unwrap();
    let ca = door.cert_path().display().to_string();
    let curl = |flags: &str, name: &str, port: u16, addr: &str| {
        let scheme = if port == 443 { "https" } else { "http" };
        let at = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr.to_string()
        };
        format!(
            "curl -sS -m 3 {flags} --cacert {ca} --resolve {name}:{port}:{at} {scheme}://{name}/; echo \" rc=$?\"; "
        )
    };
    let mut script = String::new();
    script += &curl("--tlsv1.3", "api.model.test", 443, DOOR4);
    script += &curl(
        "--tlsv1.2 --tls-max 1.2 --http1.1",
        "api.model.test",
        443,
        DOOR4,
    );
    script += &curl("", "api.model.test", 443, DOOR6);
    script += &curl("", "api.model.test", 80, DOOR4);
    script += &curl("", "attacker.test", 443, DOOR4);
    script += &curl("", "attacker.test", 443, DOOR6);
    script += &curl("", "attacker.test", 80, DOOR4);
    let r = exec(&ns, ALLOW, &["sh", "-c", &script]).unwrap();
    assert_eq!(
        r.stdout.matches("hello api.model.test rc=0").count(),
        4,
        "the allowed name was not served: {r:?}"
    );
    assert_eq!(r.stdout.matches(" rc=0").count(), 4, "{r:?}");
    // A refused connection is cut at once (egressd destroys its socket):
    // its client does not wait for its own timeout (curl's 28).
    assert_eq!(r.stdout.matches(" rc=28").count(), 0, "{r:?}");
    let conns = door.wait(7);
    assert!(
        named(&conns, "attacker.test").is_empty(),
        "the attacker's name reached the door: {conns:?}"
    );
    assert_eq!(named(&conns, "api.model.test").len(), 4, "{conns:?}");
    assert_eq!(empty(&conns), 3, "{conns:?}");
    let refused: Vec<&Value> = r
        .events
        .iter()
        .filter(|e| e["reason"] == "name_not_at_address")
        .collect();
    assert_eq!(refused.len(), 3, "{:?}", r.events);
    for e in &refused {
        assert_eq!(e["name"], "attacker.test", "{e}");
        assert_eq!(e["comm"], "curl", "{e}");
        assert_eq!(e["verdict"], "denied", "{e}");
    }
    let kinds: Vec<&str> = refused
        .iter()
        .map(|e| e["presented"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "tls_server_name").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "http_host").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(r.events.len(), 3, "other events: {:?}", r.events);
    // Counted to the rules whose addresses they reached.
    let rule_line = |label: &str| {
        r.stderr
            .lines()
            .find(|l| l.starts_with(&format!("egressd: {label}: ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        rule_line("api.model.test:443").contains("2 refused for the name presented"),
        "{}",
        r.stderr
    );
    assert!(
        rule_line("api.model.test:80").contains("1 refused for the name presented"),
        "{}",
        r.stderr
    );
}

/// What names no host: a ClientHello without server_name, plain bytes on
/// the TLS port. And a post-quantum-sized ClientHello written in two and
/// in three segments, its server_name in the last: judged whole, with no
/// retransmission waited for; the allowed name's bytes all arrive, the
/// attacker's none.
#[test]
fn no_name_is_refused_and_a_split_client_hello_is_judged_whole() {
    require_root();
    let ns = Netns::new("names-split").unwrap();
    let _dns = zone(&ns);
    let door =
        FrontDoor::start(&ns, &[DOOR4, DOOR6], &["api.model.test", "attacker.test"]).unwrap();
    let plain = format!(
        "import socket\ns = socket.create_connection(('{DOOR4}', 443), timeout=2)\ns.sendall(b'hello, any name at all\\n')\nimport time; time.sleep(0.5)\nprint('plain sent')"
    );
    let mut script = String::new();
    script += &format!(
        "openssl s_client -connect {DOOR4}:443 -noservername </dev/null >/dev/null 2>&1; "
    );
    script += &format!("python3 -c \"{}\"; ", plain.replace('"', "\\\""));
    for (sni, addr, parts) in [
        ("api.model.test", DOOR4, 2),
        ("api.model.test", DOOR6, 3),
        ("attacker.test", DOOR4, 2),
        ("attacker.test", DOOR6, 3),
    ] {
        script += &format!(
            "python3 -c \"{}\"; ",
            split_hello(sni, addr, parts).replace('"', "\\\"")
        );
    }
    let r = exec(&ns, ALLOW, &["sh", "-c", &script]).unwrap();
    let conns = door.wait(6);
    assert_eq!(conns.len(), 6, "{conns:?} {r:?}");
    let api = named(&conns, "api.model.test");
    assert_eq!(
        api.len(),
        2,
        "the split ClientHello of the allowed name: {conns:?}"
    );
    for c in &api {
        assert!(c["bytes"].as_u64().unwrap() > 1800, "{c}");
    }
    assert!(named(&conns, "attacker.test").is_empty(), "{conns:?}");
    assert_eq!(empty(&conns), 4, "{conns:?}");
    let kinds: Vec<&str> = r
        .events
        .iter()
        .filter(|e| e["reason"] == "name_not_at_address")
        .map(|e| e["presented"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "tls_without_server_name",
            "no_name",
            "tls_server_name",
            "tls_server_name"
        ],
        "{:?}",
        r.events
    );
}

/// UDP to an address only a host rule allows names no host egressd can
/// judge (QUIC's Initial among others): refused at once with EPERM, so a
/// client falls back to TCP without waiting, both sent to an address and
/// on a connected socket. Nothing reaches the door.
#[test]
fn datagrams_to_a_named_address_are_refused_at_once() {
    require_root();
    let ns = Netns::new("names-udp").unwrap();
    let _dns = zone(&ns);
    let door = egress_tests::listen::Listener::udp(&ns, "198.51.100.1:443").unwrap();
    let script = "import socket\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        try: s.sendto(b'initial', ('198.51.100.1', 443)); print('sent')\n\
        except PermissionError: print('refused')\n\
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        c.connect(('198.51.100.1', 443))\n\
        try: c.send(b'initial'); print('sent')\n\
        except PermissionError: print('refused')";
    let args = ["--resolver", UPSTREAM, "--allow", "api.model.test:443/any"];
    let r = exec(&ns, &args, &["python3", "-c", script]).unwrap();
    assert_eq!(r.stdout, "refused\nrefused\n", "{r:?}");
    assert_eq!(door.count(), 0, "a datagram reached the door");
    assert_eq!(r.events.len(), 2, "{:?}", r.events);
    for e in &r.events {
        assert_eq!(e["reason"], "name_not_at_address", "{e}");
        assert_eq!(e["protocol"], "udp", "{e}");
        assert_eq!(e["comm"], "python3", "{e}");
    }
}

/// Audit mode reports what enforce would refuse, and lets it through: the
/// attacker's name reaches the door, reported once, with the name.
#[test]
fn audit_reports_the_name_enforce_would_refuse() {
    require_root();
    let ns = Netns::new("names-audit").unwrap();
    let _dns = zone(&ns);
    let door = FrontDoor::start(&ns, &[DOOR4], &["api.model.test", "attacker.test"]).unwrap();
    let ca = door.cert_path().display().to_string();
    let script = format!(
        "curl -sS -m 3 --cacert {ca} --resolve attacker.test:443:{DOOR4} https://attacker.test/"
    );
    let mut args = ALLOW.to_vec();
    args.push("--audit");
    let r = exec(&ns, &args, &["sh", "-c", &script]).unwrap();
    assert_eq!(r.stdout, "hello attacker.test", "{r:?}");
    let conns = door.wait(1);
    assert_eq!(named(&conns, "attacker.test").len(), 1, "{conns:?}");
    assert_eq!(r.events.len(), 1, "{:?}", r.events);
    let e = &r.events[0];
    assert_eq!(e["reason"], "name_not_at_address", "{e}");
    assert_eq!(e["verdict"], "audited", "{e}");
    assert_eq!(e["name"], "attacker.test", "{e}");
}
