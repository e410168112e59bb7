//! deploy/systemd's units under a real systemd (PID 1): what a unit file
//! promises only systemd can show. Each test installs the units (egressd
//! pointing at the binary under test), a policy, and an agent that runs in
//! the agent unit, in a network namespace of the test's; and removes them
//! all again.
//!
//! Only a VM whose PID 1 is systemd runs these (`cargo xtask vm-test
//! --lane systemd`, which marks the machine disposable); elsewhere they are
//! counted as skipped.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use egress_tests::{egressd::bin, listen::Listener, netns::Netns, require_root, systemd_units};

const UNITS: &str = "/etc/systemd/system";
const INSTALLED: &str = "/usr/local/bin/egressd";
const POLICY: &str = "/etc/egressd/policies/doc-summarizer.yaml";
const AGENT: &str = "/run/egressd-test-agent.py";
const OUT: &str = "/run/egressd-test-agent.out";
const DROPIN: &str = "/etc/systemd/system/doc-summarizer.service.d";
const ALLOWED: &str = "198.51.100.1";
const REFUSED: &str = "203.0.113.9";

/// The agent's first move is the refused connect, then the allowed one;
/// then the channels the unit closes (a packet socket, a vsock socket,
/// io_uring). One line each.
const ONCE: &str = "import ctypes, socket\n\
for a in ('203.0.113.9', '198.51.100.1'):\n\
\x20   try:\n\
\x20       socket.create_connection((a, 443), timeout=2).close(); print(a, 'ok')\n\
\x20   except OSError as e:\n\
\x20       print(a, 'refused', e.errno)\n\
for name, fam, kind in (('packet', 17, socket.SOCK_RAW), ('vsock', 40, socket.SOCK_STREAM)):\n\
\x20   try:\n\
\x20       socket.socket(fam, kind).close(); print(name, 'made')\n\
\x20   except OSError as e:\n\
\x20       print(name, 'refused', e.errno)\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
fd = libc.syscall(425, 1, ctypes.create_string_buffer(120))\n\
print('io_uring', 'made' if fd >= 0 else 'refused %d' % ctypes.get_errno(), flush=True)\n";

/// A prober that never stops: both connects, every 50 ms, a line each.
const PROBER: &str = "import socket, time\n\
while True:\n\
\x20   for a in ('203.0.113.9', '198.51.100.1'):\n\
\x20       try:\n\
\x20           socket.create_connection((a, 443), timeout=2).close(); r = 'ok'\n\
\x20       except OSError as e:\n\
\x20           r = 'refused %d' % e.errno\n\
\x20       print(a, r, flush=True)\n\
\x20   time.sleep(0.05)\n";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `systemctl ARGS`; panics with its output if it fails.
fn systemctl(args: &[&str]) {
    let out = run("systemctl", args);
    assert!(
        out.status.success(),
        "systemctl {}: {}\negressd's journal:\n{}",
        args.join(" "),
        text(&out),
        journal("egressd.service")
    );
}

/// A unit's property, as `systemctl show` gives it.
fn property(unit: &str, name: &str) -> String {
    let out = run("systemctl", &["show", "--value", "-p", name, unit]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits (up to `limit`, polling) until `ok`; false if it never was.
fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ok()
}

/// The journal of `unit`, as lines.
fn journal(unit: &str) -> String {
    let _ = run("journalctl", &["--sync"]);
    String::from_utf8_lossy(&run("journalctl", &["-u", unit, "--no-pager", "-o", "cat"]).stdout)
        .into_owned()
}

fn policy(cgroup: &str, allowed: &[&str]) -> String {
    let mut p = format!("name: doc-summarizer\ncgroups: [{cgroup}]\nallow:\n");
    for a in allowed {
        p.push_str(&format!("  - ip: {a}\n    ports: [443]\n"));
    }
    p
}

/// Where egressd and its units come from.
enum Source {
    /// This checkout: the binary under test, deploy/systemd's units.
    Tree,
    /// The Debian package `cargo xtask deb` made, installed with apt.
    Package(String),
}

/// The refused connect's deny event is in egressd's journal (within 20 s).
fn assert_refusal_journaled() {
    let daddr = format!("\"daddr\":\"{REFUSED}\"");
    assert!(
        wait_until(Duration::from_secs(20), || journal("egressd.service")
            .lines()
            .any(|l| l.contains(&daddr) && l.contains("doc-summarizer"))),
        "{}",
        journal("egressd.service")
    );
}

/// The units installed on this (disposable) machine, with the listeners of
/// both addresses; removed on drop, with whatever egressd pinned.
struct Installed {
    /// Kept: the agent unit joins it by its path.
    _ns: Netns,
    allowed: Listener,
    refused: Listener,
    packaged: bool,
}

impl Installed {
    /// Installs the units, the doc-summarizer policy for `cgroup` (allowing
    /// ALLOWED:443) and `agent` as the agent unit's program, in the test's
    /// namespace; `oneshot`: it runs once per start.
    fn new(tag: &str, cgroup: &str, agent: &str, oneshot: bool) -> Installed {
        Installed::from(Source::Tree, tag, cgroup, agent, oneshot)
    }

    fn from(source: Source, tag: &str, cgroup: &str, agent: &str, oneshot: bool) -> Installed {
        require_root();
        // It writes /etc/egressd and /etc/systemd/system: never on a machine
        // someone uses, even with --include-ignored.
        assert_eq!(
            std::env::var("EGRESSD_TEST_DISPOSABLE_HOST").as_deref(),
            Ok("1"),
            "this test installs egressd's units under /etc: it runs only in vm-test's throwaway VM"
        );
        let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
        assert_eq!(init.trim(), "systemd", "PID 1 is not systemd");
        let ns = Netns::new(tag).unwrap();
        let allowed = Listener::tcp(&ns, &format!("{ALLOWED}:443")).unwrap();
        let refused = Listener::tcp(&ns, &format!("{REFUSED}:443")).unwrap();
        std::fs::create_dir_all(Path::new(POLICY).parent().unwrap()).unwrap();
        std::fs::write(POLICY, policy(cgroup, &[ALLOWED])).unwrap();
        let packaged = match &source {
            // Installed as the README says: the binary where the units name
            // it (the unit's PrivateTmp= and ProtectHome= hide a checkout
            // under /tmp or /root from egressd), the units as shipped.
            Source::Tree => {
                std::fs::create_dir_all(Path::new(INSTALLED).parent().unwrap()).unwrap();
                let _ = std::fs::remove_file(INSTALLED);
                std::fs::copy(bin(), INSTALLED).unwrap();
                for u in systemd_units() {
                    std::fs::copy(&u, Path::new(UNITS).join(u.file_name().unwrap())).unwrap();
                }
                false
            }
            // As operations.md says: apt installs egressd and its unit; the
            // agent unit is the package's example.
            Source::Package(deb) => {
                let out = run("apt-get", &["install", "-y", deb]);
                assert!(
                    out.status.success(),
                    "apt-get install {deb}: {}",
                    text(&out)
                );
                std::fs::copy(
                    "/usr/share/doc/egressd/examples/doc-summarizer.service",
                    Path::new(UNITS).join("doc-summarizer.service"),
                )
                .unwrap();
                true
            }
        };
        std::fs::write(AGENT, agent).unwrap();
        let _ = std::fs::remove_file(OUT);
        std::fs::create_dir_all(DROPIN).unwrap();
        let kind = if oneshot {
            "Type=oneshot\nRestart=no\n"
        } else {
            "Type=simple\nRestart=no\n"
        };
        std::fs::write(
            Path::new(DROPIN).join("test.conf"),
            format!(
                "[Service]\n{kind}ExecStart=\nExecStart=/usr/bin/python3 {AGENT}\n\
                 NetworkNamespacePath=/run/netns/{}\nStandardOutput=append:{OUT}\n",
                ns.name
            ),
        )
        .unwrap();
        systemctl(&["daemon-reload"]);
        Installed {
            _ns: ns,
            allowed,
            refused,
            packaged,
        }
    }

    /// The agent's lines so far: (address or channel, outcome).
    fn lines(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(OUT)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Waits until the prober has written `more` lines beyond `from`.
    fn wait_for_probes(&self, from: usize, more: usize) -> usize {
        assert!(
            wait_until(Duration::from_secs(60), || self.lines().len()
                >= from + more),
            "the prober stopped probing: {:?}",
            self.lines()
        );
        self.lines().len()
    }

    /// Every probe so far: the refused address refused (EPERM), the allowed
    /// one reached; and the refused listener never reached.
    fn assert_every_probe_judged(&self) {
        let lines = self.lines();
        let wrong: Vec<_> = lines
            .iter()
            .filter(|(a, r)| (a == REFUSED && r != "refused 1") || (a == ALLOWED && r != "ok"))
            .collect();
        assert!(wrong.is_empty(), "probes judged wrongly: {wrong:?}");
        assert_eq!(self.refused.count(), 0, "the refused address was reached");
    }

    /// Starts the (oneshot) agent once; what its connects to the refused
    /// and the allowed address got.
    fn once(&self) -> (String, String) {
        systemctl(&["start", "doc-summarizer.service"]);
        let lines = self.lines();
        let last = |addr: &str| {
            lines
                .iter()
                .rev()
                .find(|(a, _)| a == addr)
                .map(|(_, r)| r.clone())
                .unwrap_or_default()
        };
        (last(REFUSED), last(ALLOWED))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run(
            "systemctl",
            &["stop", "doc-summarizer.service", "egressd.service"],
        );
        let _ = run("systemctl", &["reset-failed"]);
        let _ = run(bin().to_str().unwrap(), &["detach"]);
        if self.packaged {
            let _ = run("apt-get", &["purge", "-y", "egressd"]);
            let _ = std::fs::remove_file(Path::new(UNITS).join("doc-summarizer.service"));
        }
        let _ = std::fs::remove_file(INSTALLED);
        for u in systemd_units() {
            let _ = std::fs::remove_file(Path::new(UNITS).join(u.file_name().unwrap()));
        }
        let _ = std::fs::remove_dir_all(DROPIN);
        let _ = std::fs::remove_dir_all(Path::new(UNITS).join("egressd.service.d"));
        let _ = std::fs::remove_dir_all("/etc/egressd");
        let _ = std::fs::remove_file(AGENT);
        let _ = run("systemctl", &["daemon-reload"]);
    }
}

/// egressd starts as a notify service and says READY=1 only once it
/// enforces (the cgroup is governed the moment `systemctl start` returns,
/// with no wait); its watchdog is set. The agent unit's ExecStartPre finds
/// its cgroup governed; the agent reaches the allowed address and not the
/// refused one, whose deny event is in egressd's journal; the channels the
/// unit closes (packet and vsock sockets, io_uring) stay closed.
#[test]
#[ignore = "needs systemd as PID 1: cargo xtask vm-test --lane systemd runs it"]
fn units_govern_an_agent_under_systemd() {
    let units = Installed::new("sdunit", "agents.slice", ONCE, true);
    systemctl(&["start", "egressd.service"]);
    let governed = run(
        bin().to_str().unwrap(),
        &[
            "governed",
            "--cgroup",
            "agents.slice",
            "--policy",
            "doc-summarizer",
        ],
    );
    assert!(
        governed.status.success(),
        "READY=1 before enforcing: {}",
        text(&governed)
    );
    assert_eq!(property("egressd.service", "WatchdogUSec"), "30s");
    systemctl(&["start", "doc-summarizer.service"]);
    let lines = units.lines();
    let want: Vec<(String, String)> = [
        (REFUSED, "refused 1"),
        (ALLOWED, "ok"),
        ("packet", "refused 97"),
        ("vsock", "refused 97"),
        ("io_uring", "refused 1"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert!(lines.ends_with(&want), "{lines:?}");
    assert_eq!(units.allowed.count(), 1);
    assert_eq!(units.refused.count(), 0, "the refused address was reached");
    assert_refusal_journaled();
}

/// The Debian package, as a stranger meets it: `apt-get install` of the
/// .deb puts egressd at /usr/sbin and its unit where systemd finds it;
/// with a policy in /etc/egressd/policies and the package's example agent
/// unit, `systemctl start egressd` governs the agent (the allowed address
/// reached, the refused one not, the deny in egressd's journal); `man`
/// finds the page; `apt-get purge` takes it all away again.
#[test]
#[ignore = "needs systemd as PID 1: cargo xtask vm-test --lane systemd runs it"]
fn the_package_installs_with_apt_and_governs_an_agent() {
    let deb = std::env::var("EGRESSD_DEB")
        .ok()
        .filter(|d| !d.is_empty())
        .expect("EGRESSD_DEB: no package in the VM; run `cargo xtask deb` before `cargo xtask vm-test --lane systemd`");
    let units = Installed::from(Source::Package(deb), "sddeb", "agents.slice", ONCE, true);
    let version = run("/usr/sbin/egressd", &["--version"]);
    assert!(
        text(&version).starts_with(&format!("egressd {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        text(&version)
    );
    let unit = property("egressd.service", "FragmentPath");
    assert!(
        unit.ends_with("lib/systemd/system/egressd.service"),
        "egressd.service is {unit}, not the package's"
    );
    let listed = run("dpkg", &["-L", "egressd"]);
    assert!(
        text(&listed).contains("/usr/share/man/man8/egressd.8.gz"),
        "{}",
        text(&listed)
    );
    systemctl(&["start", "egressd.service"]);
    systemctl(&["start", "doc-summarizer.service"]);
    // After the line of the unit's ExecStartPre (`egressd governed`).
    let lines: Vec<(String, String)> = units
        .lines()
        .into_iter()
        .filter(|(a, _)| a != "governed")
        .collect();
    assert!(
        lines.starts_with(&[
            (REFUSED.to_string(), "refused 1".to_string()),
            (ALLOWED.to_string(), "ok".to_string()),
        ]),
        "{lines:?}"
    );
    assert_eq!(units.allowed.count(), 1);
    assert_eq!(units.refused.count(), 0, "the refused address was reached");
    assert_refusal_journaled();
    systemctl(&["stop", "doc-summarizer.service", "egressd.service"]);
    let purged = run("apt-get", &["purge", "-y", "egressd"]);
    assert!(purged.status.success(), "{}", text(&purged));
    assert!(!Path::new("/usr/sbin/egressd").exists());
    assert!(!Path::new("/lib/systemd/system/egressd.service").exists());
}

/// The ExecStartPre gate: with egressd unable to enforce (its policy file
/// is broken), the agent unit fails to start and the agent never runs; and
/// egressd's journal says what to fix.
#[test]
#[ignore = "needs systemd as PID 1: cargo xtask vm-test --lane systemd runs it"]
fn the_agent_cannot_start_while_egressd_is_not_enforcing() {
    let units = Installed::new("sdgate", "agents.slice", ONCE, true);
    std::fs::write(
        POLICY,
        "name: doc-summarizer\ncgroups: [agents.slice]\nallow: [\n",
    )
    .unwrap();
    let out = run("systemctl", &["start", "doc-summarizer.service"]);
    assert!(!out.status.success(), "the agent started: {}", text(&out));
    // Refused by its own gate, not by a dependency.
    assert!(
        units
            .lines()
            .iter()
            .any(|(a, r)| a == "egressd:" && r.starts_with("NOT GOVERNED")),
        "ExecStartPre did not refuse: {:?}",
        units.lines()
    );
    assert!(
        units
            .lines()
            .iter()
            .all(|(a, _)| a != ALLOWED && a != REFUSED),
        "the agent ran: {:?}",
        units.lines()
    );
    assert_eq!(units.allowed.count() + units.refused.count(), 0);
    assert!(
        wait_until(Duration::from_secs(20), || journal("egressd.service")
            .contains("doc-summarizer.yaml")),
        "egressd's journal does not name the broken file:\n{}",
        journal("egressd.service")
    );
}

/// `systemctl restart egressd` (twice) and `systemctl stop egressd`: the
/// agent keeps running (same process, never restarted), and a prober in it
/// that connects every 50 ms finds the policy in force throughout: the
/// pinned programs enforce while egressd is down.
#[test]
#[ignore = "needs systemd as PID 1: cargo xtask vm-test --lane systemd runs it"]
fn restarting_or_stopping_egressd_leaves_no_gap_and_the_agent_running() {
    let units = Installed::new("sdrestart", "agents.slice", PROBER, false);
    systemctl(&["start", "doc-summarizer.service"]);
    let mut seen = units.wait_for_probes(0, 6);
    let agent = property("doc-summarizer.service", "MainPID");
    for _ in 0..2 {
        systemctl(&["restart", "egressd.service"]);
        seen = units.wait_for_probes(seen, 6);
    }
    systemctl(&["stop", "egressd.service"]);
    assert_eq!(property("egressd.service", "ActiveState"), "inactive");
    seen = units.wait_for_probes(seen, 20);
    units.assert_every_probe_judged();
    systemctl(&["start", "egressd.service"]);
    units.wait_for_probes(seen, 6);
    units.assert_every_probe_judged();
    assert_eq!(
        property("doc-summarizer.service", "MainPID"),
        agent,
        "the agent was restarted"
    );
    assert_eq!(property("doc-summarizer.service", "NRestarts"), "0");
    assert_eq!(property("doc-summarizer.service", "ActiveState"), "active");
    assert!(units.allowed.count() > 0);
}

/// An egressd that stops answering (SIGSTOP) is killed by the watchdog and
/// restarted by systemd; the agent's probes are judged throughout.
#[test]
#[ignore = "needs systemd as PID 1: cargo xtask vm-test --lane systemd runs it"]
fn a_stuck_egressd_is_restarted_by_the_watchdog_with_no_gap() {
    let units = Installed::new("sdwatchdog", "agents.slice", PROBER, false);
    // The shipped 30 s, shortened so that the test does not wait a minute.
    let dropin = Path::new(UNITS).join("egressd.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(dropin.join("test.conf"), "[Service]\nWatchdogSec=6s\n").unwrap();
    systemctl(&["daemon-reload"]);
    systemctl(&["start", "doc-summarizer.service"]);
    let seen = units.wait_for_probes(0, 6);
    // Fed: alive for longer than the watchdog's period.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        property("egressd.service", "NRestarts"),
        "0",
        "{}",
        journal("egressd.service")
    );
    let pid = property("egressd.service", "MainPID");
    assert!(run("kill", &["-STOP", &pid]).status.success());
    assert!(
        wait_until(Duration::from_secs(60), || {
            property("egressd.service", "NRestarts") == "1"
                && property("egressd.service", "ActiveState") == "active"
        }),
        "the watchdog did not restart egressd: {}",
        journal("egressd.service")
    );
    assert_ne!(property("egressd.service", "MainPID"), pid);
    assert!(journal("egressd.service").contains("Watchdog timeout"));
    units.wait_for_probes(seen, 6);
    units.assert_every_probe_judged();
}

/// `systemctl reload egressd` returns once the reload is done: a broken
/// policy fails it (non-zero, and the journal says why) and the old policy
/// stays in force; a good one is in force the moment it returns.
#[test]
#[ignore = "needs systemd as PID 1: cargo xtask vm-test --lane systemd runs it"]
fn reload_waits_for_the_daemon_and_a_broken_policy_fails_it() {
    let units = Installed::new("sdreload", "agents.slice", ONCE, true);
    systemctl(&["start", "egressd.service"]);
    assert_eq!(units.once(), ("refused 1".into(), "ok".into()));
    std::fs::write(
        POLICY,
        "name: doc-summarizer\ncgroups: [agents.slice]\nallow: [\n",
    )
    .unwrap();
    let out = run("systemctl", &["reload", "egressd.service"]);
    assert!(
        !out.status.success(),
        "a broken policy reloaded: {}",
        text(&out)
    );
    assert!(
        wait_until(Duration::from_secs(20), || journal("egressd.service")
            .contains("reload refused, the running policies stay in force")),
        "{}",
        journal("egressd.service")
    );
    assert_eq!(property("egressd.service", "ActiveState"), "active");
    assert_eq!(units.once(), ("refused 1".into(), "ok".into()));
    // Now allowing both: in force when `systemctl reload` returns.
    std::fs::write(POLICY, policy("agents.slice", &[ALLOWED, REFUSED])).unwrap();
    systemctl(&["reload", "egressd.service"]);
    assert_eq!(units.once(), ("ok".into(), "ok".into()));
    assert_eq!(units.refused.count(), 1);
}

/// The policy governs the agent's own cgroup, as policies/doc-summarizer
/// does: each restart of the agent unit removes and recreates it, and the
/// agent's first connect (to the refused address) is refused every time.
#[test]
#[ignore = "needs systemd as PID 1: cargo xtask vm-test --lane systemd runs it"]
fn a_restarted_agent_is_governed_from_its_first_process() {
    let cgroup = "agents.slice/doc-summarizer.service";
    let units = Installed::new("sdagent", cgroup, ONCE, true);
    systemctl(&["start", "egressd.service"]);
    for round in 1..=3 {
        systemctl(&["start", "doc-summarizer.service"]);
        let firsts: Vec<String> = units
            .lines()
            .into_iter()
            .filter(|(a, _)| a == REFUSED)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(firsts.len(), round, "{:?}", units.lines());
        assert!(
            firsts.iter().all(|r| r == "refused 1"),
            "round {round}: {firsts:?}"
        );
        // The unit is gone, and so is its cgroup (systemd removes it).
        assert_eq!(
            property("doc-summarizer.service", "ActiveState"),
            "inactive"
        );
    }
    assert_eq!(units.refused.count(), 0, "the refused address was reached");
    assert_eq!(units.allowed.count(), 3);
}
