//! This node's pods and every namespace's labels, as the API server tells
//! them: kube-rs watchers (a list, then a watch from its resource version;
//! a watch that expires, 410 Gone, is followed by a new list, which
//! replaces what was known), merged into one `Cluster` that the daemon's
//! loop receives whole after each change, once both lists are complete.
//!
//! The API server is found as kubectl finds it: `KUBECONFIG` (or
//! `~/.kube/config`), else the pod's service account (in-cluster).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod as ApiPod};
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{watcher, WatchStreamExt},
    Client,
};
use tokio::sync::watch;

use super::kubernetes::{Cluster, Pod};
use crate::report::endpoint::now_secs;

/// What the watchers have seen of one kind of object: the current set, and
/// the set being listed again (between `Init` and `InitDone`).
struct Known<T> {
    now: BTreeMap<String, T>,
    relisting: Option<BTreeMap<String, T>>,
    listed: bool,
}

impl<T> Known<T> {
    fn new() -> Self {
        Known {
            now: BTreeMap::new(),
            relisting: None,
            listed: false,
        }
    }

    /// Applies one watcher event (`key` and `value` of its object, None
    /// when the object is to be ignored); returns whether `now` changed.
    fn apply<K>(
        &mut self,
        event: watcher::Event<K>,
        read: impl Fn(&K) -> Option<(String, T)>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                if let (Some(buf), Some((k, v))) = (self.relisting.as_mut(), read(&obj)) {
                    buf.insert(k, v);
                }
                false
            }
            watcher::Event::InitDone => {
                self.now = self.relisting.take().unwrap_or_default();
                self.listed = true;
                true
            }
            watcher::Event::Apply(obj) => match read(&obj) {
                Some((k, v)) => {
                    self.now.insert(k, v);
                    true
                }
                None => false,
            },
            watcher::Event::Delete(obj) => match read(&obj) {
                Some((k, _)) => self.now.remove(&k).is_some(),
                None => false,
            },
        }
    }
}

/// Whether the watchers hear from the API server: not after an error,
/// until `QUIET` has passed without one (a watch that resumes says nothing,
/// and the watchers' backoff retries a failing one within 30 s, each retry
/// failing anew).
#[derive(Default)]
pub struct WatchHealth {
    /// When a watcher last failed (seconds since the epoch; 0: never).
    last_error: std::sync::atomic::AtomicU64,
    /// When a watcher last told anything (seconds since the epoch; 0:
    /// never).
    last_event: std::sync::atomic::AtomicU64,
}

const QUIET: u64 = 40;

impl WatchHealth {
    fn failed(&self) {
        self.last_error
            .store(now_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    /// A watcher's event `e` (its `Init` comes before anything is asked:
    /// not the API server's word).
    fn heard<K>(&self, e: &watcher::Event<K>) {
        if !matches!(e, watcher::Event::Init) {
            self.last_event
                .store(now_secs(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// When a watcher last told anything (0: never).
    pub fn last_event(&self) -> u64 {
        self.last_event.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn ok(&self) -> bool {
        let last = self.last_error.load(std::sync::atomic::Ordering::Relaxed);
        last == 0 || now_secs().saturating_sub(last) >= QUIET
    }
}

/// The API client: from `kubeconfig` if given, else as kubectl finds it.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "finding the Kubernetes API server (KUBECONFIG, ~/.kube/config, or the pod's service account)",
        )?,
    };
    Client::try_from(config).context("making the Kubernetes API client")
}

/// Starts watching the pods on `node` and the namespaces once `start`
/// fires; the receiver holds None until both have been listed, then each
/// new state of the cluster. `health` says whether either watcher failed
/// lately (the daemon is then not ready: what it knows may be old).
pub fn spawn(
    client: Client,
    node: &str,
    start: tokio::sync::oneshot::Receiver<()>,
    health: std::sync::Arc<WatchHealth>,
) -> watch::Receiver<Option<Cluster>> {
    let (tx, rx) = watch::channel(None);
    let pods_api: Api<ApiPod> = Api::all(client.clone());
    let ns_api: Api<Namespace> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    tokio::spawn(async move {
        if start.await.is_err() {
            return;
        }
        let mut pods = watcher(pods_api, config).default_backoff().boxed();
        let mut namespaces = watcher(ns_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut known_pods: Known<Pod> = Known::new();
        let mut known_ns: Known<BTreeMap<String, String>> = Known::new();
        loop {
            let changed = tokio::select! {
                Some(e) = pods.next() => match e {
                    Ok(e) => {
                        health.heard(&e);
                        known_pods.apply(e, |p: &ApiPod| Pod::from_api(p).map(|p| (p.uid.clone(), p)))
                    }
                    Err(e) => {
                        health.failed();
                        tracing::warn!("watching pods: {e}; trying again");
                        true
                    }
                },
                Some(e) = namespaces.next() => match e {
                    Ok(e) => {
                        health.heard(&e);
                        known_ns.apply(e, |n: &Namespace| {
                            Some((n.metadata.name.clone()?, n.metadata.labels.clone().unwrap_or_default()))
                        })
                    }
                    Err(e) => {
                        health.failed();
                        tracing::warn!("watching namespaces: {e}; trying again");
                        true
                    }
                },
                else => break,
            };
            if changed && known_pods.listed && known_ns.listed {
                let cluster = Cluster {
                    pods: known_pods.now.clone(),
                    namespaces: known_ns.now.clone(),
                };
                if tx.send(Some(cluster)).is_err() {
                    break; // the daemon is gone
                }
            }
        }
    });
    rx
}

/// Removes the taint with key `key` from node `node` (a node registered
/// with it runs no pod that does not tolerate it until egressd is ready).
/// Returns whether the node had it.
pub async fn remove_taint(client: Client, node: &str, key: &str) -> Result<bool> {
    let nodes: Api<Node> = Api::all(client);
    for _ in 0..5 {
        let n = nodes
            .get(node)
            .await
            .with_context(|| format!("reading node {node}"))?;
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let kept: Vec<_> = taints.iter().filter(|t| t.key != key).cloned().collect();
        if kept.len() == taints.len() {
            return Ok(false);
        }
        // The resource version makes this fail (409) rather than overwrite
        // a change made since the read; then read again.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": n.metadata.resource_version},
            "spec": {"taints": kept},
        });
        match nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("removing taint {key} from node {node}"))
            }
        }
    }
    anyhow::bail!("removing taint {key} from node {node}: the node kept changing")
}
