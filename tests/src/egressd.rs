//! Running the real `egressd` binary: `exec` for one command, `run` as a
//! daemon, and governed test cgroups for processes the daemon enforces on.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use egressd::kernel::{cgroup::Cgroup, mounts};
use serde_json::Value;

use crate::netns::Netns;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// The egressd binary under test.
pub fn bin() -> PathBuf {
    std::env::var_os("EGRESSD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/egressd"))
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        let p = std::env::temp_dir().join(unique(&format!("egt-{tag}")));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.0.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of a program in a fresh directory that every user can reach, for
/// a test that runs it as another user: the checkout itself may sit below a
/// directory only root can enter (root's home, `mktemp -d`). Removed on drop.
pub struct ReachableCopy {
    dir: TempDir,
    pub path: PathBuf,
}

impl ReachableCopy {
    pub fn new(program: &Path) -> Result<ReachableCopy> {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("reachable")?;
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))?;
        for a in dir.0.ancestors().skip(1) {
            let mode = std::fs::metadata(a)?.permissions().mode();
            if mode & 0o001 == 0 {
                bail!(
                    "{} (mode {mode:o}) is not searchable by other users: set TMPDIR to a directory they can reach",
                    a.display()
                );
            }
        }
        let name = program
            .file_name()
            .context("a program path ends in a name")?;
        let path = dir.0.join(name);
        std::fs::copy(program, &path).with_context(|| format!("copying {}", program.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(ReachableCopy { dir, path })
    }

    /// The directory the copy is in.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

/// What one `egressd exec` did.
#[derive(Debug)]
pub struct ExecResult {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub events: Vec<Value>,
}

/// Runs `egressd exec ARGS -- COMMAND` inside `ns`, with events captured.
pub fn exec(ns: &Netns, args: &[&str], command: &[&str]) -> Result<ExecResult> {
    exec_under(ns, &[], args, command)
}

/// As `exec`, with egressd started by `wrapper` (a program and its
/// arguments, which runs egressd's command line after them): for
/// instance in a mount namespace of its own.
pub fn exec_under(
    ns: &Netns,
    wrapper: &[&str],
    args: &[&str],
    command: &[&str],
) -> Result<ExecResult> {
    let tmp = TempDir::new("exec")?;
    let events = tmp.0.join("events.jsonl");
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = ns.command(program);
            c.args(rest).arg(bin());
            c
        }
        None => ns.command(bin()),
    };
    let out: Output = cmd
        .arg("exec")
        .args(args)
        .arg("--events-json")
        .arg(&events)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .output()
        .context("running egressd exec")?;
    let events = std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("event lines are JSON"))
        .collect();
    Ok(ExecResult {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        events,
    })
}

/// A cgroup for a test, below the cgroup2 root; emptied and removed on drop.
pub struct TestCgroup {
    pub cgroup: Cgroup,
    /// Path relative to the cgroup2 root, as a policy names it.
    pub rel: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> Result<TestCgroup> {
        let rel = PathBuf::from("egressd-test.slice").join(unique(tag));
        let cgroup = Cgroup::at(&mounts::cgroup2_root()?, &rel);
        Ok(TestCgroup { cgroup, rel })
    }

    /// A cgroup at `rel` below this one, creating it and its parents.
    pub fn child_path(&self, rel: &str) -> Result<TestCgroup> {
        let rel = self.rel.join(rel);
        let cgroup = Cgroup::at(&mounts::cgroup2_root()?, &rel);
        cgroup.create()?;
        Ok(TestCgroup { cgroup, rel })
    }

    /// A child cgroup of this one (created).
    pub fn child(&self, name: &str) -> Result<TestCgroup> {
        let rel = self.rel.join(name);
        let cgroup = Cgroup::at(&mounts::cgroup2_root()?, &rel);
        cgroup.create()?;
        Ok(TestCgroup { cgroup, rel })
    }

    pub fn rel_str(&self) -> String {
        self.rel.display().to_string()
    }

    /// A command that starts inside this cgroup and inside `ns`.
    pub fn command(&self, ns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = ns.command(program);
        let procs = std::ffi::CString::new(
            self.cgroup
                .path
                .join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: open/write/close are async-signal-safe; the CString was
        // allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0\n".as_ptr().cast(), 2) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        cmd
    }

    /// Runs a command to completion inside this cgroup and `ns`.
    pub fn run(&self, ns: &Netns, program: &str, args: &[&str]) -> Result<Output> {
        Ok(self
            .command(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.cgroup.kill_all(Duration::from_secs(5));
        let _ = self.cgroup.remove();
    }
}

/// What a daemon instance leaves behind when it is killed: its pins in
/// bpffs and its control socket under `/run/egressd`. Dropping this removes
/// both, so a test that fails half-way leaves no enforcement and no socket;
/// an instance never dropped (its test's thread outlived the test) is
/// cleaned up when the test process exits.
pub struct Instance(pub String);

/// Instances not dropped yet, for the clean-up at exit.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Instance {
    pub fn new(name: String) -> Instance {
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        AT_EXIT.call_once(|| {
            extern "C" fn clean_up() {
                let names = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
                for name in names {
                    remove_instance(&name);
                }
            }
            // SAFETY: registering a plain function to run at exit.
            unsafe { libc::atexit(clean_up) };
        });
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        Instance(name)
    }
}

fn remove_instance(name: &str) {
    let socket = egressd::report::control::socket_path(name);
    let _ = std::fs::remove_file(socket.with_extension("held"));
    let _ = std::fs::remove_file(socket);
    let _ = Command::new(bin())
        .args(["detach", "--instance", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Instance {
    fn drop(&mut self) {
        remove_instance(&self.0);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| *n != self.0);
    }
}

/// `egressd run`, in a namespace, with its event lines collected.
pub struct Daemon {
    child: Child,
    pub instance: String,
    /// `None` once `kill` handed the leftovers to the caller.
    leftovers: Option<Instance>,
    pub metrics_port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    pub log: Arc<Mutex<Vec<String>>>,
    ns_fd: i32,
}

impl Daemon {
    /// What `egressd status` says of this daemon (its text).
    pub fn status(&self) -> String {
        let out = Command::new(bin())
            .args(["status", "--instance", &self.instance])
            .output()
            .expect("running egressd status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `egressd run --policy POLICY` in `ns` and waits until it enforces.
    pub fn start(ns: &Netns, policy: &Path) -> Result<Daemon> {
        Self::start_with(ns, policy, &[])
    }

    /// As `start`, with more `egressd run` options.
    pub fn start_with(ns: &Netns, policy: &Path, extra: &[&str]) -> Result<Daemon> {
        Self::start_instance(ns, policy, &unique("test"), extra)
    }

    /// As `start`, with the event lines written to `events` (a file) rather
    /// than parsed: for floods of events (`events()` stays empty).
    pub fn start_to_file(ns: &Netns, policy: &Path, events: &Path) -> Result<Daemon> {
        let file = std::fs::File::create(events)?;
        Self::spawn(ns, policy, &unique("test"), &[], Some(file))
    }

    /// As `start_with`, under a given pin instance name (a restarted daemon).
    pub fn start_instance(
        ns: &Netns,
        policy: &Path,
        instance: &str,
        extra: &[&str],
    ) -> Result<Daemon> {
        Self::spawn(ns, policy, instance, extra, None)
    }

    fn spawn(
        ns: &Netns,
        policy: &Path,
        instance: &str,
        extra: &[&str],
        events_file: Option<std::fs::File>,
    ) -> Result<Daemon> {
        let instance = instance.to_string();
        let to_file = events_file.is_some();
        let metrics_port = 9469;
        let mut child = ns
            .command(bin())
            .arg("run")
            .arg("--policy")
            .arg(policy)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--instance", &instance])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(events_file.map_or_else(Stdio::piped, Stdio::from))
            .stderr(Stdio::piped())
            .spawn()
            .context("starting egressd run")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        if !to_file {
            let stdout = child.stdout.take().unwrap();
            let ev = events.clone();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let v: Value = serde_json::from_str(&line)
                        .expect("egressd run prints JSON lines on stdout");
                    ev.lock().unwrap().push(v);
                }
            });
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lg = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Kept before it is told: whoever is told finds it.
                let ready = line.contains("enforcing");
                lg.lock().unwrap().push(line);
                if ready {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut d = Daemon {
            child,
            leftovers: Some(Instance::new(instance.clone())),
            instance,
            metrics_port,
            events,
            log,
            ns_fd: ns.fd(),
        };
        // Large allowlists take a while to load; a daemon that dies ends the
        // wait at once (its stderr closes).
        if ready_rx.recv_timeout(Duration::from_secs(300)).is_err() {
            let status = d.child.try_wait()?;
            bail!(
                "egressd run did not start ({status:?}):\n{}",
                d.log.lock().unwrap().join("\n")
            );
        }
        Ok(d)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until at least `n` events arrived (at most 5 s).
    pub fn wait_events(&self, n: usize) -> Vec<Value> {
        for _ in 0..500 {
            if self.events.lock().unwrap().len() >= n {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.events()
    }

    /// Waits (at most 5 s) until a line of egressd's log (read from its
    /// stderr by another thread) satisfies `f`; says whether one did.
    pub fn wait_log(&self, f: impl Fn(&str) -> bool) -> bool {
        for _ in 0..100 {
            if self.log.lock().unwrap().iter().any(|l| f(l)) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The Prometheus text from the metrics endpoint.
    pub fn metrics(&self) -> Result<String> {
        let (fd, port) = (self.ns_fd, self.metrics_port);
        thread::spawn(move || -> Result<String> {
            // SAFETY: setns on this helper thread only.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("metrics thread panicked"))?
    }

    /// The sum of the samples of metric `name` whose labels include `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(sum_samples(&self.metrics()?, name, labels))
    }

    /// Waits (at most 5 s) until a metric reaches `at_least`; says whether it did.
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> bool {
        for _ in 0..100 {
            if self.metric(name, labels).is_ok_and(|v| v >= at_least) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGKILL, then waits: no clean-up by the daemon, no detach. The pins
    /// stay until the returned guard is dropped.
    pub fn kill(mut self) -> Result<Instance> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(self
            .leftovers
            .take()
            .expect("a live daemon has its leftovers"))
    }

    /// SIGTERM, then waits; returns the exit code.
    pub fn stop(&mut self) -> Result<Option<i32>> {
        self.signal(libc::SIGTERM);
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        bail!("egressd did not stop on SIGTERM within 5 s")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `leftovers` drops after this: detach and the socket's removal.
    }
}

/// Sums the samples of `name` in Prometheus text whose labels include `labels`.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
