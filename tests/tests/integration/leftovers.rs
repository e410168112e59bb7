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
    egressd::{bin, Daemon, TempDir, TestCgroup},
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

/// A test namespace whose listeners answer every SYN with a cookie.
fn cookies_forced(tag: &str) -> Netns {
    let ns = Netns::new(tag).unwrap();
    let set = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.tcp_syncookies=2"])
        .status()
        .unwrap();
    assert!(set.success());
    ns
}

/// A peer the policy does not allow (203.0.113.9) that connects to the
/// agent on 198.51.100.1:8443 and reads until 2 s after its stdin closes
/// (at most 120 s), then says how many bytes it got.
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

/// Starts `PEER` in `ns`.
fn peer(ns: &Netns) -> std::process::Child {
    ns.command(PYTHON)
        .args(["-c", PEER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// An agent under `exec --listen 8443` whose script `agent` listens on
/// 198.51.100.1:8443 and prints "listening", and a peer the policy does
/// not allow (203.0.113.9) that connects in once it does. SYN cookies are
/// forced: a cookie SYN-ACK belongs to no socket (no program sees it), so
/// the peer completes the handshake. The peer reads until 2 s after the
/// agent and exec have ended (at most 120 s), and says how many bytes it
/// got; exec's stderr goes to a file (a scan's refusals make it long).
fn inbound_from_a_refused_peer(tag: &str, agent: &str) -> (String, String) {
    let ns = cookies_forced(tag);
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
    let mut peer = peer(&ns);
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

/// What `egressd run` lets go of: an agent in a cgroup `run` governs
/// accepts a refused peer (SYN cookies forced, as above), writes 2007
/// bytes to it (refused, so queued in its socket), and then `let_go` is
/// done (to the daemon, the cgroup, the policy file) while the peer
/// reads. Returns what the agent said and what the peer got.
fn inbound_under_run(
    tag: &str,
    agent_exits: bool,
    let_go: impl FnOnce(&Netns, &Daemon, &TestCgroup, &std::path::Path),
) -> (String, String) {
    let ns = cookies_forced(tag);
    let tmp = TempDir::new(tag).unwrap();
    let cg = TestCgroup::new(tag).unwrap();
    let other = TestCgroup::new(&format!("{tag}2")).unwrap();
    let policy = tmp
        .write(
            "agent.yaml",
            &format!(
                "name: agent\ncgroups: [{}, {}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\nlisten:\n  - ports: [8443]\n",
                cg.rel_str(),
                other.rel_str()
            ),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    let agent = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("198.51.100.1", 8443)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"s" * 2007)
print("wrote", flush=True)
if not {agent_exits}:
    time.sleep(60)
"#,
        agent_exits = if agent_exits { "True" } else { "False" }
    );
    let mut agent = cg
        .command(&ns, PYTHON)
        .args(["-c", &agent])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    let mut said = String::new();
    out.read_line(&mut said).unwrap();
    assert_eq!(said.trim(), "listening");
    let mut peer = peer(&ns);
    out.read_line(&mut said).unwrap();
    if agent_exits {
        agent.wait().unwrap();
    }
    // What the backstop refused is queued; TCP retransmits it.
    thread::sleep(Duration::from_millis(500));
    let_go(&ns, &daemon, &cg, &policy);
    // TCP sends what it queued again after growing pauses (0.2 s, then
    // doubling): the peer reads for 6 s more.
    thread::sleep(Duration::from_secs(4));
    drop(peer.stdin.take());
    let peer = peer.wait_with_output().unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    said.push_str(&daemon.log.lock().unwrap().join("; "));
    (
        said,
        String::from_utf8_lossy(&peer.stdout).trim().to_string(),
    )
}

/// The agent exits, leaving its refused bytes in a socket no process
/// holds, and its cgroup is removed (as systemd does when a unit stops):
/// egressd makes it again and governs the new one. The old cgroup's
/// programs stay while that socket lives (the peer gets nothing), and go
/// once the kernel frees the old cgroup (they are not kept forever).
#[test]
fn bytes_refused_under_run_stay_refused_after_the_cgroup_is_removed() {
    require_root();
    let mut swept = false;
    let (said, got) = inbound_under_run("leftrmdir", true, |ns, daemon, cg, _| {
        cg.cgroup.remove().unwrap();
        assert!(
            daemon.wait_log(|l| l.contains("governed again")),
            "{:?}",
            daemon.log.lock().unwrap()
        );
        swept = kept_then_swept(ns, daemon);
    });
    nothing_arrived(&said, &got, "the cgroup was removed");
    assert!(
        swept,
        "the removed cgroup's links stayed after its last socket: {said}"
    );
}

/// A daemon restarted while the removed cgroup's socket lives (killed, as
/// a crash would) carries that cgroup's links into its own pins: the peer
/// still gets nothing, and the new daemon removes them once the socket is
/// gone.
#[test]
fn a_restarted_daemon_keeps_a_removed_cgroups_links_while_its_socket_lives() {
    require_root();
    let mut swept = false;
    let (said, got) = inbound_under_run("leftrestart", true, |ns, daemon, cg, policy| {
        cg.cgroup.remove().unwrap();
        assert!(daemon.wait_log(|l| l.contains("governed again")));
        daemon.signal(libc::SIGKILL);
        thread::sleep(Duration::from_millis(300));
        let again = Daemon::start_instance(ns, policy, &daemon.instance, &[]).unwrap();
        swept = kept_then_swept(ns, &again);
    });
    nothing_arrived(&said, &got, "egressd was restarted");
    assert!(
        swept,
        "the restarted daemon kept the removed cgroup's links after its last socket: {said}"
    );
}

/// While the removed cgroup's socket lives, `daemon` keeps its links
/// (TCP sends what it queued again after growing pauses: the peer reads
/// for 4 s meanwhile); once the socket is destroyed, whether `daemon`
/// removed them.
fn kept_then_swept(ns: &Netns, daemon: &Daemon) -> bool {
    let swept = |l: &str| l.contains("its links removed");
    thread::sleep(Duration::from_secs(4));
    assert!(!daemon.log.lock().unwrap().iter().any(|l| swept(l)));
    kill_the_peers_socket(ns);
    daemon.wait_log(swept)
}

/// Destroys the agent's end of its connection with the peer (`ss -K`).
fn kill_the_peers_socket(ns: &Netns) {
    let killed = ns
        .command("ss")
        .args(["-K", "dst", "203.0.113.9"])
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
}

/// A reload that no longer names the agent's cgroup releases it: what the
/// backstop refused while it was governed must not leave then.
#[test]
fn bytes_refused_under_run_stay_refused_after_a_reload_releases_the_cgroup() {
    require_root();
    let (said, got) = inbound_under_run("leftrelease", false, |_, daemon, cg, policy| {
        let text = std::fs::read_to_string(policy).unwrap();
        let rel = cg.rel_str();
        std::fs::write(policy, text.replace(&format!("{rel}, "), "")).unwrap();
        egressd_succeeds(&["reload", "--instance", &daemon.instance]);
    });
    nothing_arrived(&said, &got, "a reload released the cgroup");
}

/// `egressd detach` stops enforcing: what was refused before it must not
/// leave after it.
#[test]
fn bytes_refused_under_run_stay_refused_after_detach() {
    require_root();
    let (said, got) = inbound_under_run("leftdetach", false, |_, daemon, _, _| {
        egressd_succeeds(&["detach", "--instance", &daemon.instance]);
    });
    nothing_arrived(&said, &got, "detach");
}

/// Runs `egressd ARGS` (outside the test's namespace), which must succeed.
fn egressd_succeeds(args: &[&str]) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The agent wrote, and the peer got nothing of it after `what`.
fn nothing_arrived(said: &str, got: &str, what: &str) {
    assert!(said.contains("wrote"), "{said}");
    assert_eq!(
        got, "got 0",
        "the peer received the refused bytes after {what}: {said}"
    );
}
