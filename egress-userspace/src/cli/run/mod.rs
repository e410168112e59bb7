//! `egressd run`: load policies, govern their cgroups, keep hostnames fresh,
//! stream events as JSON lines on stdout, serve metrics.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

mod systemd;

use systemd::{notify_systemd, watchdog_interval, watchdog_tick};

use crate::{
    dns::refresh,
    kernel::mounts,
    kernel::pins,
    policy::{error::PolicyError, Policy},
    report::control::{self, EventFeed, ReloadRequest},
    report::describe::Describer,
    report::describe::DnsEvent,
    report::endpoint,
    report::events::EventStream,
    report::metrics::Metrics,
    report::pod_names::PodNames,
    runtime::pod_cgroups,
    runtime::pod_watch,
    runtime::pods::{PodSource, Pods, PENDING},
    runtime::supervisor::Governor,
    runtime::watch::stamp,
    runtime::watch::Watcher,
    state::allowlist::Allowlist,
};

/// Default pin directory name of the daemon.
pub const INSTANCE: &str = "run";
/// How often the policy files are checked for changes.
pub const POLL_PERIOD: Duration = Duration::from_secs(1);
/// Default metrics address: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9469";

pub struct RunOptions {
    pub policy: PathBuf,
    /// None: no metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// Name of this daemon's pin directory under `<bpffs>/egressd`.
    pub instance: String,
    /// Size of the events ring buffer in bytes (None: the built-in 4 MiB).
    pub ring_bytes: Option<u32>,
    /// Kubernetes pods, for policies that select pods.
    pub kubernetes: Option<KubeOptions>,
}

pub struct KubeOptions {
    pub node: String,
    pub kubeconfig: Option<PathBuf>,
    /// The directory holding the kubepods cgroup, relative to the cgroup2
    /// root (None: searched for).
    pub kubepods_root: Option<PathBuf>,
    /// egressd's own pod.
    pub own_uid: Option<String>,
    /// The taint to remove from the node once its pods are governed.
    pub ready_taint: Option<String>,
    /// Where what was decided for each pod is kept across restarts and
    /// reboots (`<instance>.pods`).
    pub state_dir: PathBuf,
}

/// Default `--state-dir`.
pub const STATE_DIR: &str = "/var/lib/egressd";

/// Loads and checks every policy before anything is attached. With
/// `empty_ok` (pods are watched), a directory without policy files is no
/// policy: every pod is released.
pub fn load_policies(path: &Path, empty_ok: bool) -> Result<Vec<Policy>> {
    if empty_ok && path.is_dir() && crate::policy::load::yaml_files(path)?.is_empty() {
        tracing::warn!(dir = %path.display(), "no policy files: every pod is released");
        return Ok(Vec::new());
    }
    let policies = crate::compile::load::path(path)?;
    for p in &policies {
        if p.cgroups.is_empty() && p.pods.is_empty() {
            return Err(PolicyError {
                file: p.source.clone().into(),
                line: 0,
                column: 0,
                message: format!("policy `{}` governs nothing: add `cgroups: [PATH]` (relative to the cgroup2 root) or `pods:` selectors, or run it with `egressd exec --policy`", p.name),
            }
            .into());
        }
    }
    Ok(policies)
}

/// A pin directory name: letters, digits, `.`, `_`, `-`.
pub fn valid_instance(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Hands back to the system the memory that compiling a large allowlist
/// used and freed (glibc keeps it otherwise, and the daemon's resident
/// size would stay at its high-water mark).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads the policy files again and applies them (with
/// `kubernetes-pending` where pods are watched); returns the new policies, or what went wrong (logged
/// and counted). A file that fails to load changes nothing: the running
/// policies stay in force.
async fn reload(
    governor: &mut Governor,
    path: &Path,
    describer: &mut Describer,
    pods: &Pods,
    root: &Path,
) -> Result<Vec<Policy>, String> {
    let loaded = load_policies(path, pods.watched()).and_then(|policies| {
        let expanded = pods.expand(&policies, root)?;
        Ok((policies, expanded))
    });
    let (policies, expanded) = match loaded {
        Ok(p) => p,
        Err(e) => {
            let why = format!("reload refused, the running policies stay in force: {e:#}");
            tracing::error!("{why}");
            governor.metrics.reload(false);
            return Err(why);
        }
    };
    match governor.apply(expanded).await {
        Ok(()) => {
            governor.metrics.reload(true);
            let names = governor
                .allowlist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .policy_names();
            describer.policies.extend(names);
            tracing::info!("reloaded");
            release_freed_memory();
            if let Err(e) = pods.sync(governor, &policies, root) {
                tracing::error!("governing pods: {e:#}");
            }
            // Only now, its pods released or handed over: a policy removed
            // from the files.
            if let Err(e) = governor.retire_removed() {
                tracing::error!("retiring removed policies: {e:#}");
            }
            Ok(policies)
        }
        Err(e) => {
            // Logged before counted: whoever sees the count finds the log.
            let why = format!("reload failed part-way, some policies may be the old ones: {e:#}");
            tracing::error!("{why}");
            governor.metrics.reload(false);
            Err(why)
        }
    }
}

/// Watches the directories of every governed cgroup, and those where pod
/// cgroups appear (after a reload too).
fn watch_all(governor: &Governor, watcher: &mut Watcher, pod_parents: &[PathBuf]) {
    for dir in governor.watched_dirs().iter().chain(pod_parents) {
        if let Err(e) = watcher.watch(dir) {
            tracing::error!(dir = %dir.display(), "cannot watch for recreated cgroups: {e}");
        }
    }
}

/// Events written to stdout in one write.
const EVENTS_PER_WRITE: usize = 4096;

/// Writes events as JSON lines on stdout (up to `EVENTS_PER_WRITE` in one
/// write), and to `events` clients if any are connected; counts them.
/// Events read together share their time (when egressd read them).
fn emit(
    batch: Vec<crate::report::events::Record>,
    describer: &Describer,
    metrics: &Metrics,
    feed: &EventFeed,
) {
    if batch.is_empty() {
        return;
    }
    let time = crate::report::describe::timestamp(std::time::SystemTime::now());
    let watched = feed.receiver_count() > 0;
    let mut out = Vec::with_capacity(batch.len().min(EVENTS_PER_WRITE) * 320);
    let mut stdout = std::io::stdout().lock();
    for chunk in batch.chunks(EVENTS_PER_WRITE) {
        // Counted per (policy, verdict), once per chunk.
        let mut counts: Vec<((u32, u8), u64)> = Vec::new();
        out.clear();
        for e in chunk {
            let key = (e.policy_id, e.verdict);
            match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => counts.push((key, 1)),
            }
            describer.write_line(e, &time, &mut out);
            if watched {
                let _ = feed.send(describer.json(e));
            }
        }
        // A failed write (stdout closed) loses the lines, not the count:
        // the kernel counters and this count say what was taken off the
        // ring buffer.
        let _ = stdout.write_all(&out);
        for ((policy, verdict), n) in counts {
            metrics.events(describer.policy(policy), verdict, n);
        }
    }
    let _ = stdout.flush();
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // A SIGHUP while starting is a reload once started, not the end.
    let mut hup = signal(SignalKind::hangup())?;
    if !valid_instance(&opts.instance) {
        return Err(crate::cli::usage::UsageError(format!(
            "--instance `{}`: use letters, digits, `.`, `_` and `-`",
            opts.instance
        ))
        .into());
    }
    crate::cli::usage::check_ring_bytes(opts.ring_bytes)?;
    let mut base = load_policies(&opts.policy, opts.kubernetes.is_some())?;
    let root = mounts::cgroup2_root()?;
    let mut seen = stamp(&opts.policy);
    let kube = match &opts.kubernetes {
        Some(k) => Some((pod_watch::client(k.kubeconfig.as_deref()).await?, k)),
        None => None,
    };
    // The watchers start once this run's programs hold the pods and the
    // previous run's are gone: these could refuse egressd's own pod.
    let (start_watching, may_start) = tokio::sync::oneshot::channel();
    let health_of_watch = Arc::new(pod_watch::WatchHealth::default());
    let layouts = match &kube {
        Some((_, k)) => pod_cgroups::discover(&root, k.kubepods_root.as_deref())?,
        None => Vec::new(),
    };
    let mut pods = Pods::new(kube.as_ref().map(|(client, k)| {
        PodSource {
            cluster: pod_watch::spawn(client.clone(), &k.node, may_start, health_of_watch.clone()),
            health: health_of_watch.clone(),
            layouts: layouts.clone(),
            // Known from the downward API, else found by egressd's own pid.
            own_uid: k
                .own_uid
                .clone()
                .or_else(|| pod_cgroups::own_pod_uid(&root, &layouts)),
        }
    }));
    // Links pinned by an earlier run keep enforcing until the new ones are
    // pinned in a generation of their own; then the old ones are removed.
    let pin_dir = pins::new_generation(&opts.instance)?;
    let (allowlist, ring) = Allowlist::load(opts.ring_bytes)?;
    let allowlist = Arc::new(Mutex::new(allowlist));
    let metrics = Arc::new(Metrics::new());
    let (dns_tx, mut dns_rx) =
        tokio::sync::mpsc::channel::<DnsEvent>(crate::dns::proxy::EVENT_QUEUE);
    let mut governor = Governor::new(
        allowlist.clone(),
        metrics.clone(),
        dns_tx,
        pin_dir.clone(),
        root.clone(),
    );
    if let Some((_, k)) = &kube {
        std::fs::create_dir_all(&k.state_dir)
            .with_context(|| format!("creating {}", k.state_dir.display()))?;
        let file = k.state_dir.join(format!("{}.pods", opts.instance));
        governor.remember_pods(
            file,
            &control::socket_path(&opts.instance).with_extension("held"),
        );
    }
    // Pods are mapped (as the previous run decided, and egressd's own
    // pod) before this run's `kubernetes-pending` holds the kubepods
    // cgroup: a released pod never meets the new programs unmapped.
    let mut expanded = pods.expand(&base, &root)?;
    let pending = expanded
        .iter()
        .position(|p| p.name == PENDING)
        .map(|i| expanded.remove(i));
    governor.apply(expanded).await?;
    pods.sync(&mut governor, &base, &root)?;
    if let Some(pending) = pending {
        governor.start_policy(pending).await?;
    }
    metrics.loaded(true);
    pods.sync(&mut governor, &base, &root)?;
    tokio::spawn(refresh::sweep(allowlist.clone(), refresh::SWEEP_PERIOD));
    // Now that the new links are pinned, remove this instance's old ones
    // (also those left by an earlier run that failed half-way). Pods are
    // held by `kubernetes-pending` until the API server has been heard.
    pins::remove_other_generations(&opts.instance, &pin_dir)?;
    let _ = start_watching.send(());

    let health = Arc::new(endpoint::Health::default());
    health.beat();
    health.set_ready(pods.ready());
    let mut untaint = kube.as_ref().and_then(|(_, k)| k.ready_taint.clone());
    let mut events = EventStream::new(ring).context("watching the event ring buffer")?;
    let mut describer = Describer::of(
        &allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if kube.is_some() {
        describer.pods = PodNames::new(root.clone());
    }
    if let Some(addr) = opts.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening for metrics on {addr}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        tokio::spawn(endpoint::serve(
            listener,
            metrics.clone(),
            allowlist.clone(),
            health.clone(),
        ));
    }
    let feed: EventFeed = tokio::sync::broadcast::channel(1024).0;
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let control_path = control::socket_path(&opts.instance);
    let listener = control::bind(&control_path)?;
    let handles = control::Handles {
        allowlist: allowlist.clone(),
        feed: feed.clone(),
        reload: reload_tx,
    };
    tokio::spawn(control::serve(listener, handles));
    release_freed_memory();
    // Handled before egressd says it is ready: a signal sent right after
    // (systemd's reload, a test's SIGHUP) must not find the default action,
    // which ends the process.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let policies: Vec<String> = describer.policies.values().cloned().collect();
    tracing::info!(policies = ?policies, control = %control_path.display(), "enforcing");
    notify_systemd("READY=1");

    let mut poll = tokio::time::interval(POLL_PERIOD);
    // Pinged from this loop, so that a loop stuck anywhere is noticed.
    let mut watchdog = watchdog_interval();
    let mut watcher = Watcher::new().context("watching governed cgroups (inotify)")?;
    for dir in governor.watched_dirs() {
        watcher
            .watch(&dir)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    loop {
        tokio::select! {
            batch = events.next_batch() => emit(batch.context("reading events")?, &describer, &metrics, &feed),
            Some(e) = dns_rx.recv() => {
                let json = describer.dns_json(&e);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{json}");
                let _ = out.flush();
                let _ = feed.send(json);
            }
            changes = watcher.next() => {
                let changes = changes.context("reading cgroup changes")?;
                if let Err(e) = governor.on_changes(&changes) {
                    tracing::error!("{e:#}");
                }
                // A pod's cgroup appeared or went: classify it.
                let parents = pods.parents(&root);
                if changes.iter().any(|c| parents.contains(&c.dir)) {
                    if let Err(e) = pods.sync(&mut governor, &base, &root) {
                        tracing::error!("governing pods: {e:#}");
                    }
                }
            }
            () = pods.next() => {
                describer.pods.set(pods.names());
                if let Err(e) = pods.sync(&mut governor, &base, &root) {
                    tracing::error!("governing pods: {e:#}");
                }
                health.set_ready(pods.ready());
                if let (Some(taint), Some((client, k))) = (untaint.take(), &kube) {
                    if pods.ready() {
                        let (client, node) = (client.clone(), k.node.clone());
                        tokio::spawn(async move {
                            match pod_watch::remove_taint(client, &node, &taint).await {
                                Ok(true) => tracing::info!(node, taint, "pods governed: taint removed"),
                                Ok(false) => {}
                                Err(e) => tracing::error!("{e:#}"),
                            }
                        });
                    } else {
                        untaint = Some(taint);
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                seen = stamp(&opts.policy);
                if let Ok(new) = reload(&mut governor, &opts.policy, &mut describer, &pods, &root).await {
                    base = new;
                }
                watch_all(&governor, &mut watcher, &pods.parents(&root));
            }
            // `egressd reload` (systemd's ExecReload=): answered once done.
            Some(reply) = reload_rx.recv() => {
                seen = stamp(&opts.policy);
                let outcome = reload(&mut governor, &opts.policy, &mut describer, &pods, &root).await;
                watch_all(&governor, &mut watcher, &pods.parents(&root));
                let _ = reply.send(outcome.map(|new| base = new));
            }
            _ = watchdog_tick(&mut watchdog) => notify_systemd("WATCHDOG=1"),
            _ = poll.tick() => {
                health.beat();
                health.set_ready(pods.ready());
                if let Err(e) = governor.verify_all() {
                    tracing::error!("checking governed cgroups: {e:#}");
                }
                if let Err(e) = pods.sync(&mut governor, &base, &root) {
                    tracing::error!("governing pods: {e:#}");
                }
                watch_all(&governor, &mut watcher, &pods.parents(&root));
                let now = stamp(&opts.policy);
                if now != seen {
                    seen = now;
                    tracing::info!("policy files changed");
                    if let Ok(new) = reload(&mut governor, &opts.policy, &mut describer, &pods, &root).await {
                        base = new;
                    }
                    watch_all(&governor, &mut watcher, &pods.parents(&root));
                }
            }
        }
    }
    emit(events.drain(), &describer, &metrics, &feed);
    let _ = std::fs::remove_file(control::socket_path(&opts.instance));
    governor.abort_tasks();
    tracing::info!("stopping; the pinned programs keep enforcing the last allowlist (`egressd detach` removes them)");
    Ok(())
}
