//! The command line as a user meets it: `check` on good and broken policies,
//! the example policies loaded into the kernel, `exec` usage errors.

use std::{path::PathBuf, process::Command};

use egress_tests::{
    dns::DnsServer,
    egressd::{bin, exec, ReachableCopy, TempDir},
    listen::Listener,
    netns::Netns,
    require_root,
};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "example policies are missing");
    files
}

fn check(args: &[&str], files: &[PathBuf]) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .arg("check")
        .args(args)
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn example_policies_pass_check_strictly() {
    let (code, out, err) = check(&["--strict"], &examples());
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.lines().count(), examples().len());
}

/// A policy named without a directory (`egressd check p.yaml`, run where it
/// is) finds its `cidr_file` beside it.
#[test]
fn cidr_file_beside_a_policy_named_without_directory() {
    let tmp = TempDir::new("bare").unwrap();
    tmp.write("mirrors.list", "203.0.113.0/28\n").unwrap();
    let file = tmp
        .write("p.yaml", "name: p\nallow:\n  - cidr_file: mirrors.list\n")
        .unwrap();
    let out = Command::new(bin())
        .arg("check")
        .arg("p.yaml")
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
}

/// Each example policy loads into the kernel and enforces: its model API is
/// reachable, an exfiltration host is not.
#[test]
fn example_policies_load_and_enforce() {
    require_root();
    let ns = Netns::new("examples").unwrap();
    let _dns = DnsServer::start(
        &ns,
        "198.51.100.53:53",
        &[
            ("api.model.test", &["198.51.100.1"], 300),
            ("git.forge.test", &["198.51.100.2"], 300),
            ("packages.index.test", &["2001:db8::2"], 300),
        ],
    )
    .unwrap();
    let _api = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let exfil = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    for file in examples() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let policy = file.to_str().unwrap();
        let args = ["--policy", policy, "--resolver", "198.51.100.53:53"];
        let r = exec(
            &ns,
            &args,
            &[
                "sh",
                "-c",
                &format!("{PROBE} tcp 198.51.100.1:443; {PROBE} tcp 203.0.113.9:443"),
            ],
        )
        .unwrap();
        let lines: Vec<&str> = r.stdout.lines().collect();
        let api_expected = if name.starts_with("offline") {
            "error: 1"
        } else {
            "ok"
        };
        let exfil_expected = if name.contains("audit") {
            "ok"
        } else {
            "error: 1"
        };
        assert_eq!(
            lines,
            [api_expected, exfil_expected],
            "{name}: {}",
            r.stderr
        );
    }
    // Only the audit-mode policy let the exfiltration attempt through.
    assert_eq!(exfil.count(), 1);
}

#[test]
fn broken_policies_name_file_line_and_field() {
    let dir = TempDir::new("broken").unwrap();
    let cases: &[(&str, usize, &str)] = &[
        (
            "name: a\nallow:\n  - host: api.model.test\n    port: 443\n",
            4,
            "unknown field `port`",
        ),
        (
            "name: a\nallow:\n  - cidr: 203.0.113.7/24\n",
            3,
            "203.0.113.0/24",
        ),
        (
            "name: a\nallow:\n  - cidr: 203.0.113.0/24\n    ports: [99999]\n",
            4,
            "out of range",
        ),
        ("name: a\nallow:\n  - host: \"*.com\"\n", 3, "wildcard"),
        (
            "name: a\nallow:\n  - host: https://api.model.test/v1\n",
            3,
            "URL",
        ),
        (
            "name: a\nallow:\n  - host: api.model.test:443\n",
            3,
            "ports: [443]",
        ),
        ("name: a\nmode: block\n", 2, "unknown variant `block`"),
        (
            "name: a\nallow:\n  - ip: 198.51.100.1\n    protocol: sctp\n",
            4,
            "unknown variant `sctp`",
        ),
    ];
    for (i, (text, line, needle)) in cases.iter().enumerate() {
        let f = dir.write(&format!("p{i}.yaml"), text).unwrap();
        let (code, _, err) = check(&[], std::slice::from_ref(&f));
        assert_eq!(code, Some(2), "case {i} accepted: {text}");
        let place = format!("{}:{line}:", f.display());
        assert!(err.contains(&place), "case {i}: want {place} in {err}");
        assert!(err.contains(needle), "case {i}: want {needle:?} in {err}");
    }
}

#[test]
fn check_warns_about_broad_endpoints() {
    let dir = TempDir::new("broad").unwrap();
    let f = dir
        .write("p.yaml", "name: a\nallow:\n  - cidr: 0.0.0.0/0\n    ports: [443]\n  - host: x.webhook.site\n    ports: [443]\n")
        .unwrap();
    let (code, out, err) = check(&[], std::slice::from_ref(&f));
    assert_eq!(code, Some(0), "warnings alone keep a policy usable: {err}");
    assert!(out.contains("2 warning(s)"), "{out}");
    assert!(
        err.contains(&format!("{}:3: warning:", f.display())),
        "{err}"
    );
    assert!(err.contains("whole Internet"), "{err}");
    let (code, _, _) = check(&["--strict"], &[f]);
    assert_eq!(code, Some(2));
}

#[test]
fn exec_usage_errors_exit_2_without_running_anything() {
    let out = Command::new(bin())
        .args([
            "exec",
            "--allow",
            "198.51.100.1",
            "--",
            "touch",
            "/tmp/egressd-must-not-exist",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no port"));
    assert!(!std::path::Path::new("/tmp/egressd-must-not-exist").exists());
}

#[test]
fn exec_exits_with_the_command_status() {
    require_root();
    let ns = Netns::new("status").unwrap();
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443"],
        &["sh", "-c", "exit 7"],
    )
    .unwrap();
    assert_eq!(r.code, Some(7));
    assert!(r.stderr.contains("nothing was denied"), "{}", r.stderr);
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443"],
        &["sh", "-c", "kill -KILL $$"],
    )
    .unwrap();
    assert_eq!(r.code, Some(137), "killed by SIGKILL: 128 + 9");
}

/// SIGINT to egressd exec: the command is stopped, and its cgroup and
/// pinned programs are removed.
#[test]
fn exec_cleans_up_on_sigint() {
    require_root();
    let ns = Netns::new("sigint").unwrap();
    let mut child = ns
        .command(bin())
        .args(["exec", "--allow", "198.51.100.1:443", "--", "sleep", "30"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let instance = format!("exec-{}", child.id());
    let cgroup = egressd::kernel::mounts::cgroup2_root()
        .unwrap()
        .join("egressd.exec")
        .join(&instance);
    let pins = egressd::kernel::pins::instance_dir(&instance).unwrap();
    let mut started = false;
    // Up to a minute: loading the programs takes seconds under emulation.
    for _ in 0..3000 {
        if cgroup.join("cgroup.procs").exists()
            && !std::fs::read_to_string(cgroup.join("cgroup.procs"))
                .unwrap_or_default()
                .is_empty()
        {
            started = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(started, "the command never started in {}", cgroup.display());
    assert!(pins.exists(), "exec pins its links while it runs");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "sleep died of the forwarded SIGINT"
    );
    assert!(!cgroup.exists(), "the exec cgroup was left behind");
    assert!(!pins.exists(), "the exec pins were left behind");
}

/// SIGINT at any moment of `exec`'s start, even before the command runs,
/// leaves no cgroup and no pins behind (before the handlers were installed
/// first, one sent while the command started ended egressd at once).
#[test]
fn exec_cleans_up_on_an_early_sigint() {
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let ns = Netns::new("early").unwrap();
    for delay_ms in [0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64] {
        let mut command = ns.command(bin());
        command
            .args(["exec", "--allow", "198.51.100.1:443", "--", "sleep", "30"])
            .stderr(std::process::Stdio::null());
        // SIGINT's default action, whatever the test was started with (a
        // shell's background job inherits it ignored, and so would egressd
        // until its handler is in place).
        // SAFETY: signal() is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let instance = format!("exec-{}", child.id());
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        assert!(
            status.code() == Some(130) || status.signal() == Some(libc::SIGINT),
            "after {delay_ms} ms: {status:?}"
        );
        let cgroup = egressd::kernel::mounts::cgroup2_root()
            .unwrap()
            .join("egressd.exec")
            .join(&instance);
        let pins = egressd::kernel::pins::instance_dir(&instance).unwrap();
        let left = (cgroup.exists(), pins.exists());
        // Leave nothing for the next test, whatever the assertion says.
        if left.0 {
            let _ = egressd::kernel::cgroup::Cgroup {
                path: cgroup.clone(),
            }
            .kill_all(std::time::Duration::from_secs(2));
            let _ = std::fs::remove_dir(&cgroup);
        }
        let _ = Command::new(bin())
            .args(["detach", "--instance", &instance])
            .status();
        assert_eq!(
            left,
            (false, false),
            "after {delay_ms} ms: (cgroup, pins) left behind"
        );
    }
}

#[test]
fn detach_refuses_a_path_as_instance() {
    for bad in ["/", "..", "a/b", ""] {
        let out = Command::new(bin())
            .args(["detach", "--instance", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--instance {bad:?} accepted");
    }
}

/// `exec --user`: the command runs unprivileged, cannot move itself out of
/// its cgroup, and is still governed. The probe is a copy that `nobody` can
/// run wherever the checkout is.
#[test]
fn exec_as_an_unprivileged_user_cannot_escape() {
    require_root();
    let ns = Netns::new("user").unwrap();
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let probe = ReachableCopy::new(std::path::Path::new(PROBE)).unwrap();
    let root = egressd::kernel::mounts::cgroup2_root().unwrap();
    let escape = format!(
        "id -u; echo $$ > {}/cgroup.procs 2>/dev/null && echo escaped || echo stayed; {} tcp 203.0.113.9:443",
        root.display(),
        probe.path.display()
    );
    let r = exec(
        &ns,
        &["--user", "nobody", "--allow", "198.51.100.1:443"],
        &["sh", "-c", &escape],
    )
    .unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"65534"),
        "the command did not run as nobody: {r:?}"
    );
    assert_eq!(
        lines.get(1),
        Some(&"stayed"),
        "the command left its cgroup: {r:?}"
    );
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with("error:") || *l == "ok"),
        "the probe did not run as nobody: {r:?}"
    );
    assert_eq!(
        lines.get(2),
        Some(&"error: 1"),
        "nobody's connect was not refused: {r:?}"
    );
    assert_eq!(bad.count(), 0);
    assert!(!r.stderr.contains("runs as root"), "{}", r.stderr);
    let out = Command::new(bin())
        .args(["exec", "--user", "no-such-user-here", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `exec` shares stderr with its command: by default only warnings and its
/// summary, never colour codes when stderr is not a terminal; `-v` logs
/// what it does.
#[test]
fn exec_is_quiet_unless_asked() {
    require_root();
    let ns = Netns::new("quiet").unwrap();
    let r = exec(&ns, &["--allow", "198.51.100.1:443"], &["true"]).unwrap();
    assert!(!r.stderr.contains('\u{1b}'), "colour codes: {:?}", r.stderr);
    assert!(!r.stderr.contains("INFO"), "{}", r.stderr);
    assert!(r.stderr.contains("nothing was denied"), "{}", r.stderr);
    let r = exec(&ns, &["-v", "--allow", "198.51.100.1:443"], &["true"]).unwrap();
    assert!(
        r.stderr.contains("INFO") && r.stderr.contains("governed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains('\u{1b}'), "colour codes: {:?}", r.stderr);
}

/// Events the ring buffer had no room for are not silently missing from
/// `exec`'s summary: it says how many were lost and what the kernel's
/// exact counters counted.
#[test]
fn exec_says_when_events_were_lost() {
    require_root();
    let ns = Netns::new("lost").unwrap();
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let r = exec(
        &ns,
        &["--allow", "198.51.100.1:443", "--ring-buffer-bytes", "4096"],
        &[PROBE, "tcp", "203.0.113.9:443", "--count", "1000"],
    )
    .unwrap();
    assert_eq!(r.stdout.trim(), "error: 1", "{}", r.stderr);
    assert_eq!(bad.count(), 0);
    // A 4 KiB ring holds about 50 events: most of the 1000 are lost.
    assert!(
        r.events.len() < 1000,
        "no event was lost: {}",
        r.events.len()
    );
    assert!(
        r.stderr
            .contains(&format!("{} event(s) were lost", 1000 - r.events.len()))
            && r.stderr.contains("the kernel counted 1000 attempt(s)"),
        "{}",
        r.stderr
    );
    let out = Command::new(bin())
        .args(["exec", "--ring-buffer-bytes", "1000", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `egressd --version` names the version and the commit the binary was
/// built from (this checkout's HEAD, where it is one).
#[test]
fn version_names_the_commit() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let head = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".to_string(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    assert_eq!(
        text.trim(),
        format!("egressd {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}

/// The version is defined once, in the workspace's Cargo.toml: what else
/// names it (the image's label, the kustomization's tag, the crates
/// outside the workspace) says the same.
#[test]
fn the_version_is_defined_once() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let v = env!("CARGO_PKG_VERSION");
    assert!(
        read("Containerfile").contains(&format!("org.opencontainers.image.version=\"{v}\"")),
        "Containerfile"
    );
    assert!(
        read("deploy/kubernetes/kustomization.yaml").contains(&format!("newTag: \"{v}\"")),
        "kustomization.yaml"
    );
    for krate in ["egress-common/Cargo.toml", "egress-ebpf/Cargo.toml"] {
        assert!(
            read(krate).contains(&format!("\nversion = \"{v}\"\n")),
            "{krate}"
        );
    }
}
