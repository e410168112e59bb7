//! Channels other than a connect() or a datagram to an address: taking the
//! sockets of a process outside the cgroup, and local deputies over UNIX
//! sockets. Each attack is proven held at the receiving end.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use egress_tests::{
    egressd::{bin, exec, Daemon, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    require_root,
};

/// Debian's Python, which any user can run (`python3` on PATH may be a
/// shim in root's home).
const PYTHON: &str = "/usr/bin/python3";

/// A Python program run outside the governed cgroup (in `ns`), as `uid`,
/// that prints one line when ready; killed on drop.
struct Outside(Child);

impl Outside {
    fn start(ns: &Netns, uid: u32, program: &str) -> (Outside, String) {
        let id = uid.to_string();
        let mut child = ns
            .command("setpriv")
            .args(["--reuid", &id, "--regid", &id, "--clear-groups"])
            .args([PYTHON, "-c", program])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        (Outside(child), line.trim().to_string())
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    // setpriv execs python3: the holder's pid is python's.
    assert_eq!(r.stdout.trim(), "refused 1", "{r:?}");
    assert_eq!(bad.count(), 0, "the datagram left through a taken socket");
}

/// A local deputy outside the cgroup listens on an abstract UNIX socket
/// (as a session bus or a desktop agent does) and would carry whatever it
/// gets. The command cannot connect to it (Landlock ABI 6, Linux 6.12).
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
