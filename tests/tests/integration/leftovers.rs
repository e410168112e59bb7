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

/// SYN cookies answer for the agent's listening socket (a cookie SYN-ACK
/// belongs to no socket: no program sees it), so a peer the policy does
/// not allow completes the handshake. The agent writes to it and exits:
/// the backstop dropped those bytes, and they stay queued. The peer keeps
/// its end open and reads for seconds after the command ended: nothing.
#[test]
fn bytes_refused_to_an_inbound_peer_stay_refused_after_the_command_exits() {
    require_root();
    let ns = Netns::new("leftinbound").unwrap();
    let set = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.tcp_syncookies=2"])
        .status()
        .unwrap();
    assert!(set.success());
    const AGENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("198.51.100.1", 8443)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"s" * 2007)
print("wrote", flush=True)
sys.stdin.readline()
"#;
    let mut agent = ns
        .command(bin())
        .args([
            "exec",
            "--allow",
            "198.51.100.1:443",
            "--listen",
            "8443",
            "--",
        ])
        .args([PYTHON, "-c", AGENT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    // The peer connects, then reads until 5 s after the agent was told to
    // end (by closing its stdin).
    const PEER: &str = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("203.0.113.9", 0)); s.settimeout(3)
s.connect(("198.51.100.1", 8443))
print("connected", flush=True)
got = 0
end = time.time() + 7
s.settimeout(0.2)
while time.time() < end:
    try:
        b = s.recv(65536)
    except socket.timeout:
        continue
    except OSError as e:
        print("closed", e, flush=True)
        break
    if not b:
        break
    got += len(b)
print("got", got, flush=True)
"#;
    let peer = ns
        .command(PYTHON)
        .args(["-c", PEER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "wrote");
    // The agent ends; exec cleans up after it.
    drop(agent.stdin.take());
    let status = agent.wait().unwrap();
    let peer = peer.wait_with_output().unwrap();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(agent.stderr.as_mut().unwrap(), &mut err);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&peer.stdout),
        String::from_utf8_lossy(&peer.stderr)
    );
    assert!(said.contains("connected"), "{said} {status:?} {err}");
    assert!(
        said.contains("got 0"),
        "the peer received the refused bytes after the command ended: {said}; exec: {status:?} {err}"
    );
}

/// What egressd knows of a socket cannot be pushed out by the agent. It
/// accepts a connection from a peer the policy does not allow (SYN cookies
/// complete the handshake unseen), then, inside a user and network
/// namespace of its own, makes 300,000 TCP self-connects on loopback
/// through the one port a loopback connect there could pass (the port of
/// egressd's DNS proxy, found by a scan): a map of accepted sockets with
/// room for 262,144 would have dropped the idle accepted socket's entry.
/// Then it writes to that peer, which must receive nothing.
#[test]
fn flooding_self_connects_does_not_unjudge_an_accepted_socket() {
    require_root();
    let ns = Netns::new("flood").unwrap();
    let set = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.tcp_syncookies=2"])
        .status()
        .unwrap();
    assert!(set.success());
    const AGENT: &str = r#"
import ctypes, errno, fcntl, socket, struct, sys
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
    // exec's stderr to a file: a scan's refusals make it write a lot.
    let tmp = TempDir::new("flood").unwrap();
    let err = std::fs::File::create(tmp.0.join("stderr")).unwrap();
    let mut agent = ns
        .command(bin())
        .args([
            "exec",
            "--allow",
            "198.51.100.1:443",
            "--listen",
            "8443",
            "--",
        ])
        .args([PYTHON, "-c", AGENT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    // The peer reads until 2 s after its stdin closes (when the agent has
    // ended), at most 120 s.
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
    let status = agent.wait().unwrap();
    drop(peer.stdin.take());
    let mut said = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut said);
    let peer = peer.wait_with_output().unwrap();
    let got = String::from_utf8_lossy(&peer.stdout).to_string();
    assert!(said.contains("self-connects"), "{said} {status:?}");
    assert!(
        got.trim() == "got 0",
        "the peer received the agent's data after {said}: {got}"
    );
}
