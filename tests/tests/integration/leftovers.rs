//! What outlives the command: the bytes a refused socket still holds when
//! `exec`'s command ends. TCP keeps sending what it queued; once the
//! programs are off the cgroup nothing would stop it. Each case is proven
//! at the receiving end, for seconds after the command exited.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    thread,
    time::Duration,
};

use egress_tests::{
    egressd::{bin, TempDir},
    listen::Listener,
    netns::Netns,
    outside::PYTHON,
    require_root,
};

/// A 64 KiB budget, and an agent that writes a megabyte into each of two
/// sockets (as much as their send buffers take) and exits at once: what
/// the backstop refused stays queued in the sockets. After the command,
/// no more than the budget may arrive.
#[test]
fn a_budget_holds_after_the_command_exits() {
    require_root();
    let ns = Netns::new("leftbudget").unwrap();
    let tmp = TempDir::new("leftbudget").unwrap();
    let tcp = Listener::tcp(&ns, "198.51.100.2:443").unwrap();
    let policy = tmp
        .write(
            "budget.yaml",
            "name: budget\nallow:\n  - ip: 198.51.100.2\n    ports: [443]\n    budget: {upload: 64 KiB, per: 60s}\n",
        )
        .unwrap();
    const AGENT: &str = r#"
import socket
socks = [socket.create_connection(("198.51.100.2", 443), timeout=3) for _ in range(2)]
queued = 0
for s in socks:
    s.setblocking(False)
    data = b"u" * 1000000
    while data:
        try:
            n = s.send(data)
        except BlockingIOError:
            break
        queued += n
        data = data[n:]
print("queued", queued, flush=True)
"#;
    let out = ns
        .command(bin())
        .args(["exec", "--policy"])
        .arg(&policy)
        .args(["--", PYTHON, "-c", AGENT])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let queued: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(queued > 2 * 64 * 1024, "{out:?}");
    thread::sleep(Duration::from_secs(3));
    let arrived = tcp.bytes();
    assert!(
        arrived <= 64 * 1024,
        "{arrived} bytes arrived after the command exited, with a budget of 65536 ({queued} queued): {out:?}"
    );
}

/// An agent under `exec --listen 8443` whose script `agent` listens on
/// 198.51.100.1:8443 and prints "listening", and a peer the policy does
/// not allow (203.0.113.9) that connects in once it does. SYN cookies are
/// forced: a cookie SYN-ACK belongs to no socket (no program sees it), so
/// the peer completes the handshake. The peer reads until 2 s after the
/// agent and exec have ended (at most 120 s), and says how many bytes it
/// got; exec's stderr goes to a file (a scan's refusals make it long).
fn inbound_from_a_refused_peer(tag: &str, agent: &str) -> (String, String) {
    let ns = Netns::new(tag).unwrap();
    let set = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.tcp_syncookies=2"])
        .status()
        .unwrap();
    assert!(set.success());
    let tmp = TempDir::new(tag).unwrap();
    let err = std::fs::File::create(tmp.0.join("stderr")).unwrap();
    let mut exec = ns
        .command(bin())
        .args([
            "exec",
            "--allow",
            "198.51.100.1:443",
            "--listen",
            "8443",
            // The flood's agent makes a user and network namespace of its
            // own: exec refuses those unless allowed, and the record must
            // hold where they are.
            "--allow-namespaces",
            "--",
        ])
        .args([PYTHON, "-c", agent])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(exec.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    const PEER: &str = r#"
import select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("203.0.113.9", 0)); s.settimeout(3)
s.connect(("198.51.100.1", 8443))
got = 0
end = time.time() + 120
while time.time() < end:
    r, _, _ = select.select([s, sys.stdin], [], [], 0.2)
    if sys.stdin in r and not sys.stdin.readline():
        end = min(end, time.time() + 2)
    if s in r:
        try:
            b = s.recv(65536)
        except OSError:
            break
        if not b:
            break
        got += len(b)
print("got", got, flush=True)
"#;
    let mut peer = ns
        .command(PYTHON)
        .args(["-c", PEER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exec.wait().unwrap();
    drop(peer.stdin.take());
    let mut said = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut said);
    let peer = peer.wait_with_output().unwrap();
    let err = std::fs::read_to_string(tmp.0.join("stderr")).unwrap_or_default();
    let said = format!(
        "{said}exec: {status:?}; {}",
        err.lines().take(5).collect::<Vec<_>>().join("; ")
    );
    (
        said,
        String::from_utf8_lossy(&peer.stdout).trim().to_string(),
    )
}

/// The agent writes to a refused peer that connected in, and exits: the
/// backstop dropped those bytes, and they stay queued in the socket. The
/// peer keeps its end open and reads for seconds after the command
/// ended: nothing.
#[test]
fn bytes_refused_to_an_inbound_peer_stay_refused_after_the_command_exits() {
    require_root();
    const AGENT: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("198.51.100.1", 8443)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"s" * 2007)
print("wrote", flush=True)
"#;
    let (said, got) = inbound_from_a_refused_peer("leftinbound", AGENT);
    assert!(said.contains("wrote"), "{said}");
    assert_eq!(
        got, "got 0",
        "the peer received the refused bytes after the command ended: {said}"
    );
}

/// What egressd knows of a socket cannot be pushed out by the agent. It
/// accepts a connection from a peer the policy does not allow, then,
/// inside a user and network namespace of its own, makes 300,000 TCP
/// self-connects on loopback through the one port a loopback connect
/// there could pass (the port of egressd's DNS proxy, found by a scan): a
/// map of accepted sockets with room for 262,144 would have dropped the
/// idle accepted socket's entry. Then it writes to that peer, which must
/// receive nothing.
#[test]
fn flooding_self_connects_does_not_unjudge_an_accepted_socket() {
    require_root();
    const AGENT: &str = r#"
import ctypes, fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("198.51.100.1", 8443)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x40000000) != 0:
    print("unshare failed", ctypes.get_errno(), flush=True); sys.exit(1)
lo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fcntl.ioctl(lo, 0x8914, struct.pack("16sH14x", b"lo", 0x1 | 0x40))
port = None
for p in range(1, 65536):
    if p == 53:
        continue  # redirected to the proxy: never a self-connect
    t = socket.socket()
    try:
        t.connect(("127.0.0.1", p))
    except ConnectionRefusedError:
        port = p
        break
    except OSError:
        pass
    finally:
        t.close()
made = 0
if port is not None:
    for i in range(300000):
        t = socket.socket()
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            t.bind(("127.0.0.1", port)); t.connect(("127.0.0.1", port)); made += 1
        except OSError:
            pass
        t.close()
print("port", port, "self-connects", made, flush=True)
try:
    c.sendall(b"s" * 2007)
    print("wrote", flush=True)
except OSError as e:
    print("refused", e.errno, flush=True)
"#;
    let (said, got) = inbound_from_a_refused_peer("flood", AGENT);
    assert!(said.contains("self-connects"), "{said}");
    assert_eq!(
        got, "got 0",
        "the peer received the agent's data after {said}"
    );
}
