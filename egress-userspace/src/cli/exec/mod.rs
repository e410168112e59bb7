//! `egressd exec`: run one command in a fresh cgroup under a policy, print
//! what was denied when it ends, exit with its status. The command is also
//! confined by Landlock (`landlock`) and seccomp (`seccomp`) where the
//! kernel has them.

pub mod landlock;
pub mod seccomp;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::File,
    io::Write,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::ExitStatusExt},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use egress_common::verdict;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::usage::UsageError,
    dns::refresh,
    kernel::cgroup::Cgroup,
    kernel::mounts,
    kernel::{counters::reason_name, pins},
    policy::{
        dest::{parse_allow, parse_listen},
        load::load_file,
        DnsSettings, Mode, Policy,
    },
    report::describe::Describer,
    report::describe::DnsEvent,
    report::events::{address, comm, protocol_name, unix_name, EventStream, Record},
    report::metrics::Metrics,
    runtime::supervisor::Governor,
    state::allowlist::Allowlist,
};

pub struct ExecOptions {
    pub policy: Option<PathBuf>,
    pub allow: Vec<String>,
    pub audit: bool,
    pub resolver: Option<SocketAddr>,
    pub events_json: Option<PathBuf>,
    /// Run the command as this user (name or uid), with its primary group.
    pub user: Option<String>,
    /// Socket families to open beyond IP, UNIX and netlink (`--allow-family`).
    pub families: Vec<String>,
    /// Let the command use io_uring (`--allow-io-uring`).
    pub io_uring: bool,
    /// UNIX socket names the command may reach (`--allow-unix`).
    pub unix: Vec<String>,
    /// Ports the command may listen on (`--listen PORT[/udp|/any]`).
    pub listen: Vec<String>,
    /// Size of the deny-event ring buffer (`--ring-buffer-bytes`).
    pub ring_bytes: Option<u32>,
    pub command: Vec<OsString>,
}

/// The policy `exec` runs under: a file, or the `--allow` options.
fn build_policy(opts: &ExecOptions) -> Result<Policy> {
    let mut policy = match &opts.policy {
        Some(file) => {
            if !opts.allow.is_empty() {
                return Err(UsageError("give either --policy or --allow, not both".into()).into());
            }
            load_file(file)?
        }
        None => {
            let rules = opts
                .allow
                .iter()
                .map(|a| parse_allow(a).map_err(|e| UsageError(format!("--allow {e}"))))
                .collect::<Result<Vec<_>, UsageError>>()?;
            Policy {
                name: "exec".into(),
                mode: Mode::Enforce,
                cgroups: Vec::new(),
                pods: Vec::new(),
                rules,
                dns: DnsSettings::default(),
                listen: Vec::new(),
                channels: Default::default(),
                source: "command line".into(),
            }
        }
    };
    crate::compile::load::check(&policy)?;
    if opts.audit {
        policy.mode = Mode::Audit;
    }
    if let Some(r) = opts.resolver {
        policy.dns.upstream = vec![r];
    }
    for f in &opts.families {
        let family = f
            .parse()
            .map_err(|e| UsageError(format!("--allow-family {e}")))?;
        policy.channels.families.push(family);
    }
    policy.channels.io_uring |= opts.io_uring;
    for u in &opts.unix {
        let name = u
            .parse()
            .map_err(|e| UsageError(format!("--allow-unix {e}")))?;
        policy.channels.unix.push(name);
    }
    for l in &opts.listen {
        let listen = parse_listen(l).map_err(|e| UsageError(format!("--listen {e}")))?;
        policy.listen.push(listen);
    }
    Ok(policy)
}

/// One summary line's key: destination, hostname, process name, reason.
type Row = (String, String, String, String);

/// Denied attempts grouped by what and who, for the summary: count and pids.
#[derive(Default)]
struct Summary {
    rows: BTreeMap<Row, (u64, Vec<u32>)>,
    total: u64,
    /// Attempts not shown because `MAX_ROWS` distinct rows were reached.
    overflow: u64,
    /// Events the ring buffer had no room for, and the refused (or
    /// audited) attempts the kernel counted, events or not.
    lost: u64,
    counted: u64,
}

/// Distinct lines the summary keeps (an agent may try endless destinations).
const MAX_ROWS: usize = 1000;

impl Summary {
    fn add(&mut self, e: &Record, d: &Describer) {
        let dest = match address(e) {
            _ if e.unix.is_some() => unix_name(e.unix.as_deref().unwrap_or_default()),
            Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{}", e.port),
            Some(a) => format!("{a}:{}", e.port),
            None if e.hook == egress_common::hook::SOCK_CREATE => "(socket refused)".into(),
            None if e.hook == egress_common::hook::SOCKET_FAMILY => format!(
                "(socket of family {} refused)",
                crate::policy::fields::family_name(e.family)
            ),
            None => "(no destination)".into(),
        };
        let key = (
            match e.unix {
                Some(_) => format!("unix {dest}"),
                None => format!("{} {dest}", protocol_name(e.protocol)),
            },
            d.host(e).map(|h| format!(" ({h})")).unwrap_or_default(),
            comm(e).into_owned(),
            reason_name(e.reason).to_string(),
        );
        if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            self.overflow += 1;
            self.total += 1;
            return;
        }
        let row = self.rows.entry(key).or_default();
        row.0 += 1;
        if !row.1.contains(&e.tgid) {
            row.1.push(e.tgid);
        }
        self.total += 1;
    }

    fn add_dns(&mut self, e: &DnsEvent) {
        let who = e.asker.as_ref().map_or_else(
            || "a resolver query".to_string(),
            |a| crate::report::events::comm_of(&a.comm).into_owned(),
        );
        let key = (
            format!("dns {} {}", e.qtype, e.name),
            String::new(),
            who,
            e.reason.to_string(),
        );
        if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            self.overflow += 1;
            self.total += 1;
            return;
        }
        let row = self.rows.entry(key).or_default();
        row.0 += 1;
        if let Some(a) = &e.asker {
            if !row.1.contains(&a.tgid) {
                row.1.push(a.tgid);
            }
        }
        self.total += 1;
    }

    fn print(&self, audit: bool) {
        let mut err = std::io::stderr().lock();
        let verb = if audit { "would have denied" } else { "denied" };
        if self.lost > 0 {
            let _ = writeln!(
                err,
                "egressd: {} event(s) were lost (the ring buffer was full; --ring-buffer-bytes makes it larger): the kernel counted {} attempt(s) it {verb}, of which these:",
                self.lost, self.counted
            );
        }
        if self.total == 0 && self.lost == 0 {
            let _ = writeln!(
                err,
                "egressd: nothing was {}",
                if audit { "reported" } else { "denied" }
            );
            return;
        }
        let _ = writeln!(err, "egressd: {verb} {} attempt(s):", self.total);
        for ((dest, host, comm, reason), (count, pids)) in &self.rows {
            let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
            let _ = writeln!(
                err,
                "  {dest}{host} by {comm} (pid {}) x{count}: {reason}",
                pids.join(", ")
            );
        }
        if self.overflow > 0 {
            let _ = writeln!(
                err,
                "  ... and {} more attempt(s) to other destinations",
                self.overflow
            );
        }
    }
}

/// Opens `cgroup.procs` for the child to move itself in before exec.
fn procs_file(cgroup: &Cgroup) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.path.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cgroup.path.display()))
}

/// How many processes run with `uid` as their real or effective uid.
fn processes_of(uid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let uid = uid.to_string();
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|ids| ids.split_whitespace().take(2).any(|id| id == uid))
        })
        .count()
}

/// The user (and group) the command runs as: a name or a numeric id.
pub fn lookup_user(spec: &str) -> Result<(u32, u32), UsageError> {
    let c = std::ffi::CString::new(spec).map_err(|_| UsageError(format!("--user {spec:?}")))?;
    // SAFETY: getpwnam/getpwuid return a pointer into static storage, read
    // at once on this thread before anything else calls them.
    let pw = unsafe {
        match spec.parse::<u32>() {
            Ok(uid) => libc::getpwuid(uid),
            Err(_) => libc::getpwnam(c.as_ptr()),
        }
    };
    if pw.is_null() {
        return match spec.parse::<u32>() {
            Ok(uid) => Ok((uid, uid)),
            Err(_) => Err(UsageError(format!("--user {spec}: no such user"))),
        };
    }
    // SAFETY: pw is non-null and points at a valid passwd entry.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn spawn_in(
    cgroup: &Cgroup,
    command: &[OsString],
    user: Option<(u32, u32)>,
    filter: seccomp::Filter,
    scope_abstract_unix: bool,
) -> Result<tokio::process::Child> {
    let procs = procs_file(cgroup)?;
    let fd = procs.as_raw_fd();
    let domain = landlock::Domain::prepare(scope_abstract_unix)
        .context("preparing the command's Landlock domain")?;
    if domain.is_none() {
        let others = user.map_or(0, |(uid, _)| processes_of(uid));
        eprintln!(
            "egressd: warning: {}: the command can ptrace or pidfd_getfd processes of its uid outside its cgroup and send through their sockets{}",
            landlock::missing(),
            if others > 0 {
                format!(" (that uid has {others} such process(es) now: use a uid of its own)")
            } else {
                String::new()
            }
        );
    }
    let ruleset = domain.as_ref().map(landlock::Domain::raw_fd);
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the closure only makes async-signal-safe system calls
    // (write, setgroups, setgid, setuid, prctl, landlock_restrict_self,
    // seccomp through prctl)
    // with data prepared before
    // the fork, and touches no allocator.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            // Into the governed cgroup first: every socket is made inside.
            let pid = b"0\n";
            check(libc::write(fd, pid.as_ptr().cast(), pid.len()) as libc::c_int)?;
            if let Some((uid, gid)) = user {
                check(libc::setgroups(1, &gid))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // No taking over processes outside the cgroup (see `landlock`).
            if let Some(fd) = ruleset {
                landlock::enter(fd)?;
            }
            // No sockets of families no hook sees (see `seccomp`). Last:
            // the filter would refuse nothing the steps above need, but
            // it applies to this process from here on.
            filter.apply()
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]))?;
    drop(procs);
    drop(domain);
    Ok(child)
}

/// Exit code for a child's status: its code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

pub async fn exec(opts: ExecOptions) -> Result<i32> {
    if opts.command.is_empty() {
        return Err(UsageError(
            "no command given: egressd exec [OPTIONS] -- COMMAND [ARGS...]".into(),
        )
        .into());
    }
    crate::cli::usage::check_ring_bytes(opts.ring_bytes)?;
    let policy = build_policy(&opts)?;
    let user = opts.user.as_deref().map(lookup_user).transpose()?;
    // SAFETY: geteuid has no preconditions.
    if user.is_none_or(|(uid, _)| uid == 0) && unsafe { libc::geteuid() } == 0 {
        eprintln!("egressd: warning: the command runs as root, and root can leave its cgroup or detach egressd: use --user");
    }
    let audit = policy.mode == Mode::Audit;
    // Handlers before anything is made: a signal that comes early is
    // forwarded to the command once it runs, and everything is cleaned up;
    // without them it would end egressd and leave its cgroup and pins.
    let signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
        hup: signal(SignalKind::hangup())?,
    };
    let instance = format!("exec-{}", std::process::id());
    let root = mounts::cgroup2_root()?;
    let cgroup_rel = PathBuf::from("egressd.exec").join(&instance);
    let cgroup = Cgroup::at(&root, &cgroup_rel);
    // The pin root is checked before anything is made (a planted one is
    // refused, and must leave no cgroup behind).
    let pin_dir = pins::instance_dir(&instance)?;
    cgroup.create()?;
    let result = run_governed(policy, &cgroup_rel, &pin_dir, &opts, user, signals).await;
    // Clean up whatever happened: no process left, no pin, no cgroup; each
    // step is tried even if an earlier one failed.
    let killed = cgroup.kill_all(Duration::from_secs(5));
    let unpinned = pins::remove_tree(&pin_dir);
    let removed = cgroup.remove();
    let (status, summary) = result?;
    killed.and(unpinned).and(removed)?;
    summary.print(audit);
    Ok(exit_code(status))
}

/// The signals `exec` forwards to its command.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

async fn run_governed(
    mut policy: Policy,
    cgroup_rel: &std::path::Path,
    pin_dir: &std::path::Path,
    opts: &ExecOptions,
    user: Option<(u32, u32)>,
    signals: Signals,
) -> Result<(std::process::ExitStatus, Summary)> {
    let (allowlist, ring) = Allowlist::load(opts.ring_bytes)?;
    let allowlist = Arc::new(Mutex::new(allowlist));
    let metrics = Arc::new(Metrics::new());
    let (dns_tx, mut dns_rx) =
        tokio::sync::mpsc::channel::<DnsEvent>(crate::dns::proxy::EVENT_QUEUE);
    let root = mounts::cgroup2_root()?;
    let cgroup = Cgroup::at(&root, cgroup_rel);
    let filter = seccomp::Filter::new(&policy.channels);
    let name = policy.name.clone();
    let unix = allowlist
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .unix_hooks()
        .map_err(str::to_string);
    let allows_abstract = policy
        .channels
        .unix
        .iter()
        .any(|n| matches!(n, crate::policy::unix::UnixName::Abstract(_)));
    // The UNIX hooks judge abstract names where the policy allows some;
    // elsewhere Landlock's scope (ABI 6) refuses those made outside.
    let scope_abstract_unix = !(allows_abstract && unix.is_ok());
    if let Err(why) = &unix {
        eprintln!(
            "egressd: warning: UNIX sockets are not judged: {why}; the command can connect to any UNIX socket path it can open{}",
            if allows_abstract {
                " (and --allow-unix @names stay refused by Landlock's scope)"
            } else {
                ""
            }
        );
    }
    policy.cgroups = vec![cgroup_rel.to_path_buf()];
    let mut governor = Governor::new(
        allowlist.clone(),
        metrics.clone(),
        dns_tx,
        pin_dir.to_path_buf(),
        root,
    );
    governor.apply(vec![policy]).await?;
    let sweeper = tokio::spawn(refresh::sweep(allowlist.clone(), refresh::SWEEP_PERIOD));
    let describer = Describer::of(
        &allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let json_out = match &opts.events_json {
        Some(p) => Some(File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => None,
    };
    let mut events = EventStream::new(ring)?;
    let mut rec = Recorder {
        summary: Summary::default(),
        json_out,
        describer,
    };

    let Signals {
        mut int,
        mut term,
        mut hup,
    } = signals;
    let mut child = spawn_in(&cgroup, &opts.command, user, filter, scope_abstract_unix)?;
    let pid = child.id().context("child has no pid")? as i32;
    let forward = |sig: i32| {
        // SAFETY: kill has no memory preconditions; pid is our child's.
        unsafe { libc::kill(pid, sig) };
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            batch = events.next_batch() => rec.kernel(batch?),
            Some(e) = dns_rx.recv() => rec.dns(&e),
            _ = int.recv() => forward(libc::SIGINT),
            _ = term.recv() => forward(libc::SIGTERM),
            _ = hup.recv() => forward(libc::SIGHUP),
        }
    };
    rec.kernel(events.drain());
    while let Ok(e) = dns_rx.try_recv() {
        rec.dns(&e);
    }
    // The kernel's counters are exact when events were lost.
    if let Some(id) = governor.id(&name) {
        let e = allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(c) = e.counts(id) {
            rec.summary.lost = c.lost;
            rec.summary.counted = c.total(verdict::DENIED) + c.total(verdict::AUDITED);
        }
    }
    governor.abort_tasks();
    sweeper.abort();
    Ok((status, rec.summary))
}

/// Collects what was denied, for the summary and `--events-json`.
struct Recorder {
    summary: Summary,
    json_out: Option<File>,
    describer: Describer,
}

impl Recorder {
    fn kernel(&mut self, batch: Vec<Record>) {
        for e in batch {
            if e.verdict != verdict::ALLOWED {
                self.summary.add(&e, &self.describer);
            }
            if let Some(f) = self.json_out.as_mut() {
                let _ = writeln!(f, "{}", self.describer.json(&e));
            }
        }
    }

    fn dns(&mut self, e: &DnsEvent) {
        self.summary.add_dns(e);
        if let Some(f) = self.json_out.as_mut() {
            let _ = writeln!(f, "{}", self.describer.dns_json(e));
        }
    }
}
