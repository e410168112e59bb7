//! UNIX sockets (Linux 6.7's cgroup hooks): a local daemon outside the
//! cgroup (a mail server, docker.sock, a resolver) would carry data out for
//! the agent. A connect() or an addressed datagram reaches only the names
//! the policy lists; each refusal is proven at the deputy, which logs every
//! byte that reaches it. On an older kernel, egressd must say that UNIX
//! sockets are not judged.

use std::path::Path;

use egress_tests::{
    egressd::{exec, Daemon, ExecResult, TempDir, TestCgroup},
    kernel_at_least,
    netns::Netns,
    outside::{Outside, PYTHON},
    require_root,
};

/// A deputy outside the cgroup, as root: a stream and a datagram socket at
/// `dir/stream.sock` and `dir/dgram.sock`, and an abstract stream socket
/// `@name`. It appends what reaches it to `dir/log` (`stream 6`, ...).
fn deputy(ns: &Netns, dir: &Path, name: &str) -> Outside {
    let d = dir.display();
    let program = format!(
        "import socket, select\n\
         log = open('{d}/log', 'a', buffering=1)\n\
         st = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); st.bind('{d}/stream.sock'); st.listen(8)\n\
         dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); dg.bind('{d}/dgram.sock')\n\
         ab = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); ab.bind('\\0{name}'); ab.listen(8)\n\
         print('ready', flush=True)\n\
         while True:\n    \
             r, _, _ = select.select([st, dg, ab], [], [], 60)\n    \
             if not r: break\n    \
             for s in r:\n        \
                 if s is dg:\n            \
                     log.write('dgram %d\\n' % len(s.recv(1000))); continue\n        \
                 c, _ = s.accept(); c.settimeout(2)\n        \
                 try: got = c.recv(1000)\n        \
                 except Exception: got = b''\n        \
                 log.write('%s %d\\n' % ('stream' if s is st else 'abstract', len(got))); c.close()\n"
    );
    let (deputy, ready) = Outside::start(ns, 0, &program);
    assert_eq!(ready, "ready");
    deputy
}

/// A client that tries each `kind=name` of its arguments (`stream`,
/// `dgram`: send 6 bytes; `own`: bind that path, connect to it, send
/// through it) and prints `<kind> sent` or `<kind> refused <errno>`.
const CLIENT: &str = "import socket, sys, errno\n\
for arg in sys.argv[1:]:\n    \
    kind, name = arg.split('=', 1)\n    \
    name = name.replace('@', '\\0', 1) if name.startswith('@') else name\n    \
    try:\n        \
        if kind == 'dgram':\n            \
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'secret', name)\n        \
        elif kind == 'own':\n            \
            l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind(name); l.listen(1)\n            \
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(name); s.sendall(b'secret')\n            \
            c, _ = l.accept(); assert c.recv(10) == b'secret'\n        \
        else:\n            \
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(name); s.sendall(b'secret')\n        \
        print(kind, 'sent')\n    \
    except OSError as e:\n        \
        print(kind, 'refused', errno.errorcode.get(e.errno, e.errno))\n";

fn run(ns: &Netns, flags: &[&str], attempts: &[String]) -> ExecResult {
    let mut args = vec!["--allow", "198.51.100.1:443"];
    args.extend_from_slice(flags);
    let mut command = vec![PYTHON, "-c", CLIENT];
    command.extend(attempts.iter().map(String::as_str));
    exec(ns, &args, &command).unwrap()
}

/// What reached the deputy, after giving it a moment to log.
fn reached(dir: &Path) -> String {
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
}

/// On a kernel without the hooks, `exec` must say so: asserted instead.
fn hooks_or_warning(r: &ExecResult) -> bool {
    if kernel_at_least(6, 7) {
        return true;
    }
    assert!(r.stderr.contains("UNIX sockets are not judged"), "{r:?}");
    eprintln!("this kernel has no cgroup UNIX hooks: asserted that exec says so");
    false
}

/// A name in a directory the command's uid can write: the command would
/// make the name first, as a symbolic link to a deputy's socket, and
/// connect to it by the allowed name (names are matched as written).
/// `exec` refuses to run (exit 2, saying which directory), and the deputy
/// gets nothing; with the directory root's, the command runs, cannot make
/// the link, and the deputy gets nothing either; a link made there by
/// root does reach the deputy (the channel is real).
#[test]
fn exec_refuses_a_unix_name_its_command_could_redirect() {
    require_root();
    let ns = Netns::new("unixw").unwrap();
    let dir = TempDir::new("unixw").unwrap();
    let _deputy = deputy(&ns, &dir.0, "egt-unixw");
    let tool = dir.0.join("tool");
    std::fs::create_dir(&tool).unwrap();
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(&dir.0, 0o755);
    mode(&dir.0.join("stream.sock"), 0o666);
    std::os::unix::fs::chown(&tool, Some(65534), Some(65534)).unwrap();
    let allowed = tool.join("api.sock");
    let agent = format!(
        "import os, socket\n\
         try:\n\
         \x20   os.symlink('{d}/stream.sock', '{a}'); print('linked')\n\
         except OSError as e:\n\
         \x20   print('link refused', e.errno)\n\
         try:\n\
         \x20   s = socket.socket(socket.AF_UNIX); s.connect('{a}'); s.sendall(b'secret'); print('sent')\n\
         except OSError as e:\n\
         \x20   print('connect refused', e.errno)",
        d = dir.0.display(),
        a = allowed.display()
    );
    let args = [
        "--user",
        "nobody",
        "--allow-unix",
        allowed.to_str().unwrap(),
    ];
    let r = exec(&ns, &args, &[PYTHON, "-c", &agent]).unwrap();
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains(&format!("can write {}", tool.display())),
        "{r:?}"
    );
    assert_eq!(r.stdout, "", "the command ran: {r:?}");
    assert_eq!(reached(&dir.0), "");
    std::os::unix::fs::chown(&tool, Some(0), Some(0)).unwrap();
    let r = exec(&ns, &args, &[PYTHON, "-c", &agent]).unwrap();
    assert_eq!(r.stdout.lines().next(), Some("link refused 13"), "{r:?}");
    assert_eq!(reached(&dir.0), "", "{r:?}");
    // The link, made by one who may (root, here), leads the allowed name
    // to the deputy: what the refusal keeps the command from doing.
    std::os::unix::fs::symlink(dir.0.join("stream.sock"), &allowed).unwrap();
    let r = exec(&ns, &args, &[PYTHON, "-c", &agent]).unwrap();
    assert_eq!(r.stdout.lines().nth(1), Some("sent"), "{r:?}");
    assert_eq!(reached(&dir.0), "stream 6\n", "{r:?}");
}

/// The policy names no UNIX socket: a stream connect, a datagram sent to a
/// path (as to /dev/log) and an abstract name are refused, and the deputy
/// gets nothing. Each refusal is an event naming the path. nscd's socket,
/// which glibc tries on every lookup, is refused without an event.
#[test]
fn exec_refuses_unix_sockets_the_policy_does_not_name() {
    require_root();
    let ns = Netns::new("unixdeny").unwrap();
    let dir = TempDir::new("unixdeny").unwrap();
    let name = format!("egressd-test-unix-{}", std::process::id());
    let _deputy = deputy(&ns, &dir.0, &name);
    let d = dir.0.display();
    let r = run(
        &ns,
        &[],
        &[
            format!("stream={d}/stream.sock"),
            format!("dgram={d}/dgram.sock"),
            format!("stream=@{name}"),
            "stream=/run/nscd/socket".into(),
        ],
    );
    if !hooks_or_warning(&r) {
        return;
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "stream refused EPERM",
            "dgram refused EPERM",
            "stream refused EPERM",
            "stream refused EPERM"
        ],
        "{r:?}"
    );
    assert_eq!(reached(&dir.0), "", "the deputy was reached");
    let paths: Vec<&str> = r
        .events
        .iter()
        .filter(|e| e["reason"] == "unix_not_allowed")
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(
        paths.contains(&format!("{d}/stream.sock").as_str()),
        "{r:?}"
    );
    assert!(paths.contains(&format!("{d}/dgram.sock").as_str()), "{r:?}");
    assert!(
        r.events.iter().all(|e| e["path"] != "/run/nscd/socket"),
        "nscd's refusal is not an event: {r:?}"
    );
    assert!(r.stderr.contains("unix_not_allowed"), "{r:?}");
}

/// `--allow-unix` names a path and an abstract name: those reach the
/// deputy; its datagram socket, and another abstract name, still do not
/// (with an abstract name allowed, the hook judges abstract names, not
/// Landlock's scope).
#[test]
fn exec_reaches_the_unix_sockets_the_policy_names() {
    require_root();
    let ns = Netns::new("unixallow").unwrap();
    let dir = TempDir::new("unixallow").unwrap();
    let name = format!("egressd-test-unix-{}", std::process::id());
    let other = format!("egressd-test-other-{}", std::process::id());
    let _deputy = deputy(&ns, &dir.0, &name);
    let (_other, ready) = Outside::start(
        &ns,
        0,
        &format!(
            "import socket, time\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind('\\0{other}'); s.listen(8)\n\
             print('ready', flush=True); time.sleep(60)"
        ),
    );
    assert_eq!(ready, "ready");
    let d = dir.0.display();
    let stream = format!("{d}/stream.sock");
    let abstract_name = format!("@{name}");
    let r = run(
        &ns,
        &["--allow-unix", &stream, "--allow-unix", &abstract_name],
        &[
            format!("stream={stream}"),
            format!("stream=@{name}"),
            format!("dgram={d}/dgram.sock"),
            format!("stream=@{other}"),
        ],
    );
    if !hooks_or_warning(&r) {
        return;
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "stream sent",
            "stream sent",
            "dgram refused EPERM",
            "stream refused EPERM"
        ],
        "{r:?}"
    );
    let mut log: Vec<String> = reached(&dir.0).lines().map(str::to_string).collect();
    log.sort();
    assert_eq!(log, ["abstract 6", "stream 6"], "{r:?}");
}

/// A directory entry covers the sockets beneath it, the agent's own among
/// them, but not a path that climbs out of it with `..`.
#[test]
fn a_directory_entry_does_not_cover_a_climb_out() {
    require_root();
    let ns = Netns::new("unixdir").unwrap();
    let dir = TempDir::new("unixdir").unwrap();
    let name = format!("egressd-test-unix-{}", std::process::id());
    let _deputy = deputy(&ns, &dir.0, &name);
    let d = dir.0.display();
    std::fs::create_dir(dir.0.join("work")).unwrap();
    let work = format!("{d}/work/");
    let r = run(
        &ns,
        &["--allow-unix", &work],
        &[
            format!("own={d}/work/own.sock"),
            format!("stream={d}/work/../stream.sock"),
            format!("stream={d}/stream.sock"),
        ],
    );
    if !hooks_or_warning(&r) {
        return;
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        ["own sent", "stream refused EPERM", "stream refused EPERM"],
        "{r:?}"
    );
    assert_eq!(reached(&dir.0), "", "the deputy was reached");
    // A name that would mislead is refused before anything runs.
    let bad = run(&ns, &["--allow-unix", "work/x.sock"], &[]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("--allow-unix"), "{bad:?}");
}

/// `egressd run`: a policy file's `channels.unix` opens a path for the
/// governed cgroup; a reload that drops it closes it again (the old
/// table's UNIX entries go with it).
#[test]
fn run_judges_unix_sockets_by_the_policy_file_and_its_reloads() {
    require_root();
    let ns = Netns::new("unixrun").unwrap();
    let dir = TempDir::new("unixrun").unwrap();
    let name = format!("egressd-test-unix-{}", std::process::id());
    let _deputy = deputy(&ns, &dir.0, &name);
    let cg = TestCgroup::new("unixrun").unwrap();
    let d = dir.0.display();
    let text = |unix: &str| {
        format!(
            "name: unixrun\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\nchannels:\n  unix: [{unix}]\n",
            cg.rel_str()
        )
    };
    let policy = dir
        .write("p.yaml", &text(&format!("{d}/stream.sock")))
        .unwrap();
    let daemon = Daemon::start(&ns, &policy).unwrap();
    if !kernel_at_least(6, 7) {
        // No hooks: the daemon must say that UNIX sockets are not judged.
        let status = daemon.status();
        assert!(status.contains("UNIX sockets: not judged"), "{status}");
        eprintln!("this kernel has no cgroup UNIX hooks: asserted that status says so");
        return;
    }
    let attempt = || {
        let out = cg
            .run(
                &ns,
                PYTHON,
                &["-c", CLIENT, &format!("stream={d}/stream.sock")],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(attempt(), "stream sent");
    assert_eq!(reached(&dir.0), "stream 6\n");
    dir.write("p.yaml.tmp", &text(&format!("{d}/dgram.sock")))
        .unwrap();
    std::fs::rename(dir.0.join("p.yaml.tmp"), &policy).unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(daemon.wait_log(|l| l.contains("reloaded")), "no reload");
    assert_eq!(attempt(), "stream refused EPERM");
    assert_eq!(reached(&dir.0), "stream 6\n", "reached after the reload");
    let events = daemon.wait_events(1);
    assert!(
        events.iter().any(
            |e| e["path"] == format!("{d}/stream.sock").as_str() && e["hook"] == "connect_unix"
        ),
        "{events:?}"
    );
}

/// A directory entry above a name-service socket (`--allow-unix /run/`)
/// must not let another spelling of that socket's path through: nscd's
/// `/run/nscd//socket` or `/run/./nscd/socket` would miss the longer,
/// refusing entry and match the directory's. Proven at a stand-in nscd,
/// in a mount namespace of the test's with a tmpfs over /run.
#[test]
fn another_spelling_does_not_reach_a_refused_socket_under_an_allowed_directory() {
    require_root();
    let ns = Netns::new("unixspell").unwrap();
    let dir = TempDir::new("unixspell").unwrap();
    let log = dir.0.join("log");
    let deputy = format!(
        "mount -t tmpfs none /run && mkdir /run/nscd && \
         {PYTHON} -c \"import socket\n\
s = socket.socket(socket.AF_UNIX); s.bind('/run/nscd/socket'); s.listen(8); s.settimeout(30)\n\
log = open('{}', 'a', buffering=1)\n\
while True:\n    c, _ = s.accept(); log.write('reached\\n')\" & \
         while [ ! -S /run/nscd/socket ]; do sleep 0.1; done; exec \"$@\"",
        log.display()
    );
    let r = egress_tests::egressd::exec_under(
        &ns,
        &["unshare", "--mount", "sh", "-c", &deputy, "sh"],
        &["--allow", "198.51.100.1:443", "--allow-unix", "/run/"],
        &[
            PYTHON,
            "-c",
            CLIENT,
            "stream=/run/nscd//socket",
            "stream=/run/./nscd/socket",
            "stream=/run/nscd/../nscd/socket",
            "stream=/run/nscd/socket",
        ],
    )
    .unwrap();
    if !hooks_or_warning(&r) {
        return;
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "stream refused EPERM",
            "stream refused EPERM",
            "stream refused EPERM",
            "stream refused EPERM"
        ],
        "{r:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "",
        "the stand-in nscd was reached"
    );
}

/// `exec`: the command cannot bind-mount another socket over a UNIX path
/// its policy allows (names are judged as written, before the kernel
/// resolves them): its Landlock domain refuses mount(2). The allowed
/// deputy is reached; the one it tried to put in its place is not.
#[test]
fn exec_cannot_mount_another_socket_over_an_allowed_path() {
    require_root();
    let ns = Netns::new("unixmount").unwrap();
    let dir = TempDir::new("unixmount").unwrap();
    let name = format!("egressd-test-unix-{}", std::process::id());
    let _deputy = deputy(&ns, &dir.0, &name);
    let d = dir.0.display();
    let (mut secret, ready) = Outside::start(
        &ns,
        0,
        &format!(
            "import socket\n\
             s = socket.socket(socket.AF_UNIX); s.bind('{d}/secret.sock'); s.listen(8); s.settimeout(20)\n\
             print('ready', flush=True)\n\
             c, _ = s.accept(); print('reached', flush=True)"
        ),
    );
    assert_eq!(ready, "ready");
    let stream = format!("{d}/stream.sock");
    let mount = format!("mount --bind {d}/secret.sock {stream} && echo mounted; exec \"$@\"");
    let target = format!("stream={stream}");
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443", "--allow-unix", &stream],
        &[
            "unshare",
            "--mount",
            "--propagation",
            "unchanged",
            "sh",
            "-c",
            &mount,
            "sh",
            PYTHON,
            "-c",
            CLIENT,
            &target,
        ],
    )
    .unwrap();
    if !hooks_or_warning(&r) {
        return;
    }
    // Refused by exec's Landlock domain; without Landlock exec says so.
    if r.stderr.contains("Landlock is not available") {
        eprintln!("no Landlock here: asserted that exec says so");
        return;
    }
    assert!(!r.stdout.contains("mounted"), "{r:?}");
    assert_eq!(r.stdout.trim(), "stream sent", "{r:?}");
    assert_eq!(reached(&dir.0), "stream 6\n", "{r:?}");
    let _ = secret.0.kill();
    assert_eq!(
        secret.line(),
        "",
        "the socket mounted in place of the allowed one was reached"
    );
}
