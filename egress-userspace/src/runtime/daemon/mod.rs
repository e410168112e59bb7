//! The daemon (`egressd run`): policies loaded and attached to their
//! cgroups and pods, kept in force as cgroups come and go and the files
//! change (`reload`), events streamed as JSON lines on stdout (`output`),
//! metrics served, systemd told how it goes (`systemd`).
//!
//! `start` wires it (the order matters: see its comments); `serve` is the
//! loop that answers everything until a signal ends it.

mod output;
mod reload;
mod systemd;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use kube::Client;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc::Receiver,
};

pub use reload::load_policies;

use output::{emit, emit_dns};
use reload::release_freed_memory;
use systemd::{notify_systemd, watchdog_interval, watchdog_tick};

use crate::{
    kernel::mounts,
    kernel::pins,
    policy::Policy,
    report::control::{self, EventFeed, ReloadRequest},
    report::describe::Describer,
    report::endpoint::{self, Health},
    report::pod_names::PodNames,
    runtime::engine::Engine,
    runtime::pod_cgroups,
    runtime::pod_watch,
    runtime::pods::{PodSource, Pods, PENDING},
    runtime::watch::{stamp, Stamp, Watcher},
};

/// Default pin directory name of the daemon.
pub const INSTANCE: &str = "run";
/// How often the policy files are checked for changes.
pub const POLL_PERIOD: Duration = Duration::from_secs(1);
/// Default metrics address: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9469";
/// Default `--state-dir`.
pub const STATE_DIR: &str = "/var/lib/egressd";

pub struct Options {
    pub policy: PathBuf,
    /// None: no metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// Name of this daemon's pin directory under `<bpffs>/egressd`
    /// (`kernel::pins::valid_name`).
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> Result<()> {
    // A SIGHUP while starting is a reload once started, not the end.
    let hup = signal(SignalKind::hangup())?;
    let (daemon, inputs) = Daemon::start(opts, hup).await?;
    daemon.serve(inputs).await
}

/// The running daemon's state.
struct Daemon {
    opts: Options,
    engine: Engine,
    root: PathBuf,
    /// The policies in the files (without `kubernetes-pending`).
    base: Vec<Policy>,
    pods: Pods,
    /// The API server's client, when pods are watched.
    client: Option<Client>,
    /// The taint to remove once the pods are governed (None: removed, or
    /// none asked for).
    untaint: Option<String>,
    describer: Describer,
    health: Arc<Health>,
    feed: EventFeed,
    watcher: Watcher,
    /// The policy files as last loaded.
    seen: Stamp,
}

/// What the loop waits on besides the engine's streams.
struct Inputs {
    hup: Signal,
    term: Signal,
    int: Signal,
    reloads: Receiver<ReloadRequest>,
}

impl Daemon {
    async fn start(opts: Options, hup: Signal) -> Result<(Daemon, Inputs)> {
        let base = load_policies(&opts.policy, opts.kubernetes.is_some())?;
        let root = mounts::cgroup2_root()?;
        let seen = stamp(&opts.policy);
        let client = match &opts.kubernetes {
            Some(k) => Some(pod_watch::client(k.kubeconfig.as_deref()).await?),
            None => None,
        };
        // The watchers start once this run's programs hold the pods and
        // the previous run's are gone: these could refuse egressd's own pod.
        let (start_watching, may_start) = tokio::sync::oneshot::channel();
        let pods = match (&client, &opts.kubernetes) {
            (Some(client), Some(k)) => Pods::new(Some(pod_source(client, k, &root, may_start)?)),
            _ => Pods::new(None),
        };
        // Links pinned by an earlier run keep enforcing until the new ones
        // are pinned in a generation of their own; then the old ones are
        // removed.
        let pin_dir = pins::new_generation(&opts.instance)?;
        let mut engine = Engine::start(opts.ring_bytes, pin_dir.clone(), root.clone())?;
        if let Some(k) = &opts.kubernetes {
            std::fs::create_dir_all(&k.state_dir)
                .with_context(|| format!("creating {}", k.state_dir.display()))?;
            let file = k.state_dir.join(format!("{}.pods", opts.instance));
            engine.governor.remember_pods(
                file,
                &control::socket_path(&opts.instance).with_extension("held"),
            );
        }
        govern(&mut engine, &pods, &base, &root).await?;
        engine.metrics.loaded(true);
        // Now that the new links are pinned, remove this instance's old
        // ones (also those left by an earlier run that failed half-way).
        // Pods are held by `kubernetes-pending` until the API server has
        // been heard.
        pins::remove_other_generations(&opts.instance, &pin_dir, &root)?;
        let _ = start_watching.send(());

        let health = Arc::new(Health::default());
        health.beat();
        health.set_ready(pods.ready());
        let mut describer = engine.describer();
        if client.is_some() {
            describer.pods = PodNames::new(root.clone());
        }
        let feed: EventFeed = tokio::sync::broadcast::channel(1024).0;
        let reloads = serve_endpoints(&opts, &engine, &health, &feed).await?;
        release_freed_memory();
        let mut watcher = Watcher::new().context("watching governed cgroups (inotify)")?;
        for dir in engine.governor.watched_dirs() {
            watcher
                .watch(&dir)
                .with_context(|| format!("watching {}", dir.display()))?;
        }
        // Handled before egressd says it is ready: a signal sent right
        // after (systemd's reload, a test's SIGHUP) must not find the
        // default action, which ends the process.
        let inputs = Inputs {
            hup,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            reloads,
        };
        let policies: Vec<String> = describer.policies.values().cloned().collect();
        let control = control::socket_path(&opts.instance);
        tracing::info!(policies = ?policies, control = %control.display(), "enforcing");
        let untaint = opts.kubernetes.as_ref().and_then(|k| k.ready_taint.clone());
        let daemon = Daemon {
            opts,
            engine,
            root,
            base,
            pods,
            client,
            untaint,
            describer,
            health,
            feed,
            watcher,
            seen,
        };
        Ok((daemon, inputs))
    }

    /// Answers events, signals, reloads, cgroup and pod changes until
    /// SIGTERM or SIGINT.
    async fn serve(mut self, mut inputs: Inputs) -> Result<()> {
        notify_systemd("READY=1");
        let mut poll = tokio::time::interval(POLL_PERIOD);
        // Pinged from this loop, so that a loop stuck anywhere is noticed.
        let mut watchdog = watchdog_interval();
        loop {
            tokio::select! {
                batch = self.engine.events.next_batch() => {
                    let batch = batch.context("reading events")?;
                    emit(batch, &self.describer, &self.engine.metrics, &self.feed);
                }
                Some(e) = self.engine.dns_events.recv() => emit_dns(&e, &self.describer, &self.feed),
                changes = self.watcher.next() => {
                    let changes = changes.context("reading cgroup changes")?;
                    if let Err(e) = self.engine.governor.on_changes(&changes) {
                        tracing::error!("{e:#}");
                    }
                    // A pod's cgroup appeared or went: classify it.
                    let parents = self.pods.parents(&self.root);
                    if changes.iter().any(|c| parents.contains(&c.dir)) {
                        self.sync_pods();
                    }
                }
                () = self.pods.next() => self.on_pods(),
                _ = inputs.term.recv() => break,
                _ = inputs.int.recv() => break,
                _ = inputs.hup.recv() => {
                    let _ = self.reload().await;
                }
                // `egressd reload` (systemd's ExecReload=): answered once done.
                Some(reply) = inputs.reloads.recv() => {
                    let outcome = self.reload().await;
                    let _ = reply.send(outcome);
                }
                _ = watchdog_tick(&mut watchdog) => notify_systemd("WATCHDOG=1"),
                _ = poll.tick() => self.on_poll().await,
            }
        }
        emit(
            self.engine.events.drain(),
            &self.describer,
            &self.engine.metrics,
            &self.feed,
        );
        let _ = std::fs::remove_file(control::socket_path(&self.opts.instance));
        tracing::info!("stopping; the pinned programs keep enforcing the last allowlist (`egressd detach` removes them)");
        Ok(())
    }

    /// Governs each pod cgroup as its pod's policy says (or holds it).
    fn sync_pods(&mut self) {
        if let Err(e) = self
            .pods
            .sync(&mut self.engine.governor, &self.base, &self.root)
        {
            tracing::error!("governing pods: {e:#}");
        }
    }

    /// The API server told of the node's pods: classify them, and once all
    /// are governed, remove the node's taint.
    fn on_pods(&mut self) {
        self.describer.pods.set(self.pods.names());
        self.sync_pods();
        self.health.set_ready(self.pods.ready());
        let (Some(taint), Some(client), Some(k)) =
            (self.untaint.take(), &self.client, &self.opts.kubernetes)
        else {
            return;
        };
        if !self.pods.ready() {
            self.untaint = Some(taint);
            return;
        }
        let (client, node) = (client.clone(), k.node.clone());
        tokio::spawn(async move {
            match pod_watch::remove_taint(client, &node, &taint).await {
                Ok(true) => tracing::info!(node, taint, "pods governed: taint removed"),
                Ok(false) => {}
                Err(e) => tracing::error!("{e:#}"),
            }
        });
    }

    /// Once a period: a heartbeat, every governed cgroup checked, pods
    /// classified, new directories watched, and a reload if the policy
    /// files changed.
    async fn on_poll(&mut self) {
        self.health.beat();
        self.health.set_ready(self.pods.ready());
        if let Err(e) = self.engine.governor.verify_all() {
            tracing::error!("checking governed cgroups: {e:#}");
        }
        self.sync_pods();
        self.watch_all();
        if stamp(&self.opts.policy) != self.seen {
            tracing::info!("policy files changed");
            let _ = self.reload().await;
        }
    }

    /// Watches the directories of every governed cgroup, and those where
    /// pod cgroups appear (after a reload too).
    fn watch_all(&mut self) {
        let parents = self.pods.parents(&self.root);
        for dir in self.engine.governor.watched_dirs().iter().chain(&parents) {
            if let Err(e) = self.watcher.watch(dir) {
                tracing::error!(dir = %dir.display(), "cannot watch for recreated cgroups: {e}");
            }
        }
    }
}

/// Governs the policies' cgroups and the node's pods at start. Pods are
/// mapped (as the previous run decided, and egressd's own pod) before this
/// run's `kubernetes-pending` holds the kubepods cgroup: a released pod
/// never meets the new programs unmapped.
async fn govern(engine: &mut Engine, pods: &Pods, base: &[Policy], root: &Path) -> Result<()> {
    let mut expanded = pods.expand(base, root)?;
    let pending = expanded
        .iter()
        .position(|p| p.name == PENDING)
        .map(|i| expanded.remove(i));
    engine.governor.apply(expanded).await?;
    pods.sync(&mut engine.governor, base, root)?;
    if let Some(pending) = pending {
        engine.governor.start_policy(pending).await?;
    }
    pods.sync(&mut engine.governor, base, root)
}

/// Serves metrics (if asked to) and the control socket; the control
/// socket's reload requests.
async fn serve_endpoints(
    opts: &Options,
    engine: &Engine,
    health: &Arc<Health>,
    feed: &EventFeed,
) -> Result<Receiver<ReloadRequest>> {
    if let Some(addr) = opts.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening for metrics on {addr}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        tokio::spawn(endpoint::serve(
            listener,
            engine.metrics.clone(),
            engine.allowlist.clone(),
            health.clone(),
        ));
    }
    let (reload_tx, reloads) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let listener = control::bind(&control::socket_path(&opts.instance))?;
    tokio::spawn(control::serve(
        listener,
        control::Handles {
            allowlist: engine.allowlist.clone(),
            feed: feed.clone(),
            reload: reload_tx,
        },
    ));
    Ok(reloads)
}

/// Where the node's pods are heard of, and where their cgroups are.
fn pod_source(
    client: &Client,
    k: &KubeOptions,
    root: &Path,
    may_start: tokio::sync::oneshot::Receiver<()>,
) -> Result<PodSource> {
    let layouts = pod_cgroups::discover(root, k.kubepods_root.as_deref())?;
    let health = Arc::new(pod_watch::WatchHealth::default());
    Ok(PodSource {
        cluster: pod_watch::spawn(client.clone(), &k.node, may_start, health.clone()),
        health,
        // Known from the downward API, else found by egressd's own pid.
        own_uid: k
            .own_uid
            .clone()
            .or_else(|| pod_cgroups::own_pod_uid(root, &layouts)),
        layouts,
    })
}
