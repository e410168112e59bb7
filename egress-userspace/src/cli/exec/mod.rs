//! `egressd exec`: run one command in a fresh cgroup under a policy, print
//! what was denied when it ends, exit with its status. The command is also
//! confined by Landlock (`landlock`) and seccomp (`seccomp`) where the
//! kernel has them.

pub mod landlock;
pub mod seccomp;
mod spawn;
mod summary;

use std::{
    collections::HashSet,
    ffi::OsString,
    fs::File,
    io::Write,
    net::SocketAddr,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use egress_common::verdict;
use tokio::signal::unix::{signal, SignalKind};

use spawn::{lookup_user, spawn_in};
use summary::Summary;

use crate::{
    cli::learn::Observed,
    cli::usage::UsageError,
    dns::refresh,
    kernel::cgroup::Cgroup,
    kernel::diag,
    kernel::mounts,
    kernel::pins,
    policy::{
        dest::{parse_allow, parse_listen},
        load::load_file,
        DnsSettings, Mode, Policy,
    },
    report::describe::Describer,
    report::describe::DnsEvent,
    report::events::{EventStream, Record},
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
    /// Learn a policy into this file (`--learn`): run in audit mode under
    /// the policy there (or none), then add what the command reached.
    pub learn: Option<PathBuf>,
    pub command: Vec<OsString>,
}

/// The policy `exec` runs under: a file, or the `--allow` options.
fn build_policy(opts: &ExecOptions) -> Result<Policy> {
    let mut policy = match (&opts.learn, &opts.policy) {
        (Some(_), Some(_)) => {
            return Err(UsageError(
                "--learn FILE runs under the policy in FILE (if there is one) and adds to it: give no --policy".into(),
            )
            .into())
        }
        (Some(_), None) if !opts.allow.is_empty() => {
            return Err(UsageError(
                "--learn FILE runs under the policy in FILE (if there is one): give no --allow".into(),
            )
            .into())
        }
        (Some(file), None) if file.exists() => load_file(file)?,
        (Some(_), None) => Policy {
            rules: Vec::new(),
            ..command_line_policy(Vec::new())
        },
        (None, Some(file)) => {
            if !opts.allow.is_empty() {
                return Err(UsageError("give either --policy or --allow, not both".into()).into());
            }
            load_file(file)?
        }
        (None, None) => {
            let rules = opts
                .allow
                .iter()
                .map(|a| parse_allow(a).map_err(|e| UsageError(format!("--allow {e}"))))
                .collect::<Result<Vec<_>, UsageError>>()?;
            command_line_policy(rules)
        }
    };
    crate::compile::load::check(&policy)?;
    if opts.audit || opts.learn.is_some() {
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

/// The policy of `--allow` options.
fn command_line_policy(rules: Vec<crate::policy::Rule>) -> Policy {
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
    // Clean up whatever happened: no process left, no socket, no pin, no
    // cgroup. The programs (the pins) stay while a process or a socket of
    // the command may still send; the other steps are tried even if an
    // earlier one failed.
    let killed = cgroup.kill_all(Duration::from_secs(5));
    let unpinned = if killed.is_ok() && close_sockets(&cgroup, &instance) {
        pins::remove_tree(&pin_dir)
    } else {
        Ok(())
    };
    let removed = cgroup.remove();
    let (status, summary, observed) = result?;
    killed.and(unpinned).and(removed)?;
    summary.print(audit);
    if let (Some(file), Some(observed)) = (&opts.learn, observed) {
        if summary.lost > 0 {
            eprintln!(
                "egressd: warning: {} event(s) were lost, so {} may miss what they saw: learn again (it adds to the file), with a larger --ring-buffer-bytes",
                summary.lost,
                file.display()
            );
        }
        let command: Vec<String> = opts
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut command = command.join(" ");
        if let Some((cut, _)) = command.char_indices().nth(100) {
            command.truncate(cut);
            command.push_str("...");
        }
        crate::cli::learn::learn_into(
            file,
            &observed,
            &format!("`egressd exec --learn` of `{command}`"),
        )?;
    }
    Ok(exit_code(status))
}

/// Once the command's processes are gone, and before its programs are:
/// what its sockets still hold may not leave after the programs (see
/// `kernel::diag`). Waits a moment for them to deliver what an allowed
/// peer is owed, then destroys every one left. False when some could not
/// be destroyed: then the programs stay pinned, and egressd says so.
fn close_sockets(cgroup: &Cgroup, instance: &str) -> bool {
    let ids: HashSet<u64> = cgroup.all_ids().into_iter().collect();
    if ids.is_empty() {
        return true;
    }
    match diag::close_leftovers(&ids, Duration::from_secs(2)) {
        Ok(diag::Closed { failed: None, .. }) => true,
        Ok(diag::Closed {
            failed: Some((n, e)),
            ..
        }) => {
            eprintln!("egressd: {n} socket(s) the command made outlive it and could not be destroyed ({e}; the kernel needs CONFIG_INET_DIAG_DESTROY): its programs stay attached until `egressd detach --instance {instance}`");
            false
        }
        Err(e) => {
            eprintln!("egressd: the command's sockets could not be listed ({e}): its programs stay attached until `egressd detach --instance {instance}`");
            false
        }
    }
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
) -> Result<(std::process::ExitStatus, Summary, Option<Observed>)> {
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
        learning: opts.learn.as_ref().map(|_| Observed::default()),
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
        match e.rule_counts(id) {
            Ok(rules) => rec.summary.rules = rules,
            Err(err) => tracing::warn!("reading the rules' counters: {err:#}"),
        }
    }
    governor.abort_tasks();
    sweeper.abort();
    Ok((status, rec.summary, rec.learning))
}

/// Collects what was denied, for the summary, `--events-json` and
/// `--learn`.
struct Recorder {
    summary: Summary,
    json_out: Option<File>,
    describer: Describer,
    learning: Option<Observed>,
}

impl Recorder {
    fn kernel(&mut self, batch: Vec<Record>) {
        for e in batch {
            if e.verdict != verdict::ALLOWED {
                self.summary.add(&e, &self.describer);
            }
            if self.json_out.is_some() || self.learning.is_some() {
                let v = self.describer.json(&e);
                self.line(&v);
            }
        }
    }

    fn dns(&mut self, e: &DnsEvent) {
        self.summary.add_dns(e);
        if self.json_out.is_some() || self.learning.is_some() {
            let v = self.describer.dns_json(e);
            self.line(&v);
        }
    }

    fn line(&mut self, v: &serde_json::Value) {
        if let Some(f) = self.json_out.as_mut() {
            let _ = writeln!(f, "{v}");
        }
        if let Some(o) = self.learning.as_mut() {
            o.add(v, None);
        }
    }
}
