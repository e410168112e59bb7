//! One command run under a policy (`egressd exec`): a cgroup of its own,
//! the policy attached to it, the command started there and confined
//! (`confine`), what it was refused collected while it runs, and everything
//! taken down when it ends, nothing left to send once the programs go.

use std::{
    collections::HashSet,
    ffi::OsString,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use egress_common::verdict;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    confine::{
        listen, seccomp,
        spawn::{spawn_in, Spawned},
    },
    kernel::cgroup::Cgroup,
    kernel::diag,
    kernel::mounts,
    kernel::pins,
    learn::Observed,
    policy::{Mode, Policy},
    report::describe::{Describer, DnsEvent},
    report::events::Record,
    report::summary::Summary,
    runtime::engine::Engine,
};

/// How the command runs, beyond its policy.
pub struct Session {
    pub command: Vec<OsString>,
    /// Its uid and gid (None: egressd's).
    pub user: Option<(u32, u32)>,
    /// Where every event is also written as a JSON line.
    pub events_json: Option<PathBuf>,
    /// Collect what was reached, to learn a policy from.
    pub learning: bool,
    /// Size of the events ring buffer (None: the built-in 4 MiB).
    pub ring_bytes: Option<u32>,
}

/// How the command ended, and what it was refused.
pub struct Ended {
    pub status: std::process::ExitStatus,
    pub summary: Summary,
    /// What it reached, when learning.
    pub observed: Option<Observed>,
}

/// Runs `session.command` under `policy` (its `cgroups` are replaced by
/// the session's own) until it ends.
pub async fn run(policy: Policy, session: &Session) -> Result<Ended> {
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
    let result = run_governed(policy, &root, &cgroup_rel, &pin_dir, session, signals).await;
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
    let ended = result?;
    killed.and(unpinned).and(removed)?;
    Ok(ended)
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
    root: &Path,
    cgroup_rel: &Path,
    pin_dir: &Path,
    session: &Session,
    signals: Signals,
) -> Result<Ended> {
    let mut engine = Engine::start(
        session.ring_bytes,
        pin_dir.to_path_buf(),
        root.to_path_buf(),
    )?;
    let cgroup = Cgroup::at(root, cgroup_rel);
    let filter = seccomp::Filter::new(&policy.channels);
    let name = policy.name.clone();
    let unix = engine.allowlist().unix_hooks().map_err(str::to_string);
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
    let (listen, audit) = (policy.listen.clone(), policy.mode == Mode::Audit);
    engine.governor.apply(vec![policy]).await?;
    let judge = listen::Judge::new(&listen, audit, engine.governor.id(&name).unwrap_or(0));
    let json_out = match &session.events_json {
        Some(p) => Some(File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => None,
    };
    let mut rec = Recorder {
        summary: Summary::default(),
        json_out,
        describer: engine.describer(),
        learning: session.learning.then(Observed::default),
    };

    let Signals {
        mut int,
        mut term,
        mut hup,
    } = signals;
    let Spawned {
        mut child,
        listener,
    } = spawn_in(
        &cgroup,
        &session.command,
        session.user,
        filter,
        scope_abstract_unix,
    )?;
    let (listen_tx, mut listens) = tokio::sync::mpsc::channel(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let supervisor = match listener {
        Ok(fd) => Some(listen::supervise(
            fd,
            judge,
            cgroup.id()?,
            stop.clone(),
            listen_tx,
        )),
        Err(why) => {
            eprintln!("egressd: warning: {why}");
            None
        }
    };
    let pid = child.id().context("child has no pid")? as i32;
    let forward = |sig: i32| {
        // SAFETY: kill has no memory preconditions; pid is our child's.
        unsafe { libc::kill(pid, sig) };
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            batch = engine.events.next_batch() => rec.kernel(batch?),
            Some(e) = engine.dns_events.recv() => rec.dns(&e),
            Some(r) = listens.recv() => rec.kernel(vec![r]),
            _ = int.recv() => forward(libc::SIGINT),
            _ = term.recv() => forward(libc::SIGTERM),
            _ = hup.recv() => forward(libc::SIGHUP),
        }
    };
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = supervisor {
        let _ = s.join();
    }
    while let Ok(r) = listens.try_recv() {
        rec.kernel(vec![r]);
    }
    rec.kernel(engine.events.drain());
    while let Ok(e) = engine.dns_events.try_recv() {
        rec.dns(&e);
    }
    // The kernel's counters are exact when events were lost.
    if let Some(id) = engine.governor.id(&name) {
        let e = engine.allowlist();
        if let Ok(c) = e.counts(id) {
            rec.summary.lost = c.lost;
            rec.summary.counted = c.total(verdict::DENIED) + c.total(verdict::AUDITED);
        }
        match e.rule_counts(id) {
            Ok(rules) => rec.summary.rules = rules,
            Err(err) => tracing::warn!("reading the rules' counters: {err:#}"),
        }
    }
    Ok(Ended {
        status,
        summary: rec.summary,
        observed: rec.learning,
    })
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
