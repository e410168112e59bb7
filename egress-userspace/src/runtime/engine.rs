//! What `run` and `exec` both start: the allowlist (the programs and their
//! maps), the governor that attaches policies to cgroups, the stream of
//! kernel events and of the DNS proxies' events, and the sweep of expired
//! addresses. Each then drives it its own way (`daemon`, `session`).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::{Context, Result};
use tokio::{sync::mpsc::Receiver, task::JoinHandle};

use crate::{
    dns::{proxy::EVENT_QUEUE, refresh},
    report::{
        describe::{Describer, DnsEvent},
        events::EventStream,
        metrics::Metrics,
    },
    runtime::supervisor::Governor,
    state::allowlist::Allowlist,
};

pub struct Engine {
    pub allowlist: Arc<Mutex<Allowlist>>,
    pub metrics: Arc<Metrics>,
    /// The only owner of which cgroup is governed by which policy.
    pub governor: Governor,
    /// Deny and audit events from the kernel.
    pub events: EventStream,
    /// What the DNS proxies refused or could not answer.
    pub dns_events: Receiver<DnsEvent>,
    sweeper: JoinHandle<()>,
}

impl Engine {
    /// Loads the programs and their maps (an events ring buffer of
    /// `ring_bytes`, or the built-in size), for links pinned under
    /// `pin_dir`; nothing is attached yet.
    pub fn start(
        ring_bytes: Option<u32>,
        pin_dir: PathBuf,
        cgroup_root: PathBuf,
    ) -> Result<Engine> {
        let (allowlist, ring) = Allowlist::load(ring_bytes)?;
        let allowlist = Arc::new(Mutex::new(allowlist));
        let metrics = Arc::new(Metrics::new());
        let (dns_tx, dns_events) = tokio::sync::mpsc::channel::<DnsEvent>(EVENT_QUEUE);
        let governor = Governor::new(
            allowlist.clone(),
            metrics.clone(),
            dns_tx,
            pin_dir,
            cgroup_root,
        );
        let events = EventStream::new(ring).context("watching the event ring buffer")?;
        let sweeper = tokio::spawn(refresh::sweep(allowlist.clone(), refresh::SWEEP_PERIOD));
        Ok(Engine {
            allowlist,
            metrics,
            governor,
            events,
            dns_events,
            sweeper,
        })
    }

    /// The allowlist, for a moment (a poisoned lock is taken as it is: the
    /// allowlist's state is whole after each call).
    pub fn allowlist(&self) -> MutexGuard<'_, Allowlist> {
        self.allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Turns events into words, with the installed policies' names.
    pub fn describer(&self) -> Describer {
        Describer::of(&self.allowlist())
    }
}

impl Drop for Engine {
    /// Stops the proxies, the lookups and the sweep; the pinned links stay.
    fn drop(&mut self) {
        self.governor.abort_tasks();
        self.sweeper.abort();
    }
}
