//! Starting one policy, the same for `run` and `exec`: its DNS proxy, its
//! tables (live before any cgroup is governed), its hostnames resolved
//! ahead, and the tasks that keep them fresh.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle};

use crate::{
    dns::{self, DnsEvent, Proxy},
    enforcer::Enforcer,
    metrics::Metrics,
    policy::Policy,
    resolve,
};

/// A started policy: its id, and the tasks serving it (abort them to stop).
pub struct Started {
    pub id: u32,
    pub tasks: Vec<JoinHandle<()>>,
}

pub async fn start_policy(
    policy: Policy,
    enforcer: &Arc<Mutex<Enforcer>>,
    metrics: &Arc<Metrics>,
    events: &UnboundedSender<DnsEvent>,
) -> Result<Started> {
    let name = policy.name.clone();
    let upstream = dns::upstreams(&policy)?;
    let resolver = Arc::new(resolve::resolver(&policy.dns)?);
    let sockets = dns::bind().await?;
    let id = enforcer
        .lock()
        .expect("enforcer lock")
        .install(policy.clone(), sockets.port)
        .with_context(|| format!("installing policy `{name}`"))?;
    tracing::info!(
        policy = name,
        port = sockets.port,
        "DNS proxy on 127.0.0.1 and ::1"
    );
    let mut tasks = Proxy {
        enforcer: enforcer.clone(),
        metrics: metrics.clone(),
        events: events.clone(),
        id,
        policy: policy.clone(),
        upstream,
    }
    .spawn(sockets);
    let hosts = resolve::prewarm(enforcer, &resolver, id, &policy, metrics).await;
    tasks.extend(resolve::spawn_refreshers(
        enforcer, &resolver, metrics, id, &policy, hosts,
    ));
    Ok(Started { id, tasks })
}
