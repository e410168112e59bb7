//! `egressd run`: the daemon.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;

use crate::{
    kernel::pins,
    policy::error::UsageError,
    runtime::daemon::{self, KubeOptions, Options, DEFAULT_METRICS_ADDR, INSTANCE, STATE_DIR},
};

/// Enforce policies on their cgroups; deny events as JSON lines on stdout.
#[derive(clap::Args)]
pub struct Run {
    /// A policy file, or a directory of *.yaml policy files.
    #[arg(long, short)]
    policy: PathBuf,
    /// Where to serve Prometheus metrics.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
    /// Serve no metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Name of this daemon's pin directory under <bpffs>/egressd (to run
    /// several daemons side by side).
    #[arg(long, default_value = INSTANCE)]
    instance: String,
    /// Size of the deny-event ring buffer in bytes (power of two; default
    /// 4 MiB). Counters stay exact when it overflows.
    #[arg(long, value_name = "BYTES")]
    ring_buffer_bytes: Option<u32>,
    /// Kubernetes: govern this node's pods, watched through the API
    /// server (KUBECONFIG, ~/.kube/config, or the pod's service
    /// account), for policies with `pods:` selectors. Pods are refused
    /// everything until classified.
    #[arg(long, requires = "node")]
    kubernetes: bool,
    /// Kubernetes: the API server's kubeconfig (default: KUBECONFIG,
    /// ~/.kube/config, or the pod's service account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes: the name of this node.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Kubernetes: egressd's own pod's uid (never held as pending).
    #[arg(long, env = "POD_UID", value_name = "UID")]
    pod_uid: Option<String>,
    /// Kubernetes: once the node's pods are governed, remove the
    /// NoSchedule taint with this key from the node.
    #[arg(long, value_name = "KEY")]
    ready_taint: Option<String>,
    /// Kubernetes: the directory that holds kubelet's kubepods cgroup
    /// (kubepods.slice, <cgroupRoot>-kubepods.slice or kubepods),
    /// relative to the cgroup2 root (default: searched for, 4 levels
    /// deep).
    #[arg(long, value_name = "PATH")]
    kubepods_root: Option<PathBuf>,
    /// Kubernetes: where egressd keeps what it decided for each pod, to
    /// apply after a restart or a reboot before the API server answers
    /// (it must outlive a reboot).
    #[arg(long, value_name = "DIR", default_value = STATE_DIR)]
    state_dir: PathBuf,
}

impl Run {
    pub async fn call(self) -> Result<()> {
        if !pins::valid_name(&self.instance) {
            return Err(UsageError(format!(
                "--instance `{}`: use letters, digits, `.`, `_` and `-`",
                self.instance
            ))
            .into());
        }
        super::usage::check_ring_bytes(self.ring_buffer_bytes)?;
        let kubernetes = self
            .node
            .filter(|_| self.kubernetes)
            .map(|node| KubeOptions {
                node,
                kubeconfig: self.kubeconfig,
                kubepods_root: self.kubepods_root,
                own_uid: self.pod_uid,
                ready_taint: self.ready_taint,
                state_dir: self.state_dir,
            });
        daemon::run(Options {
            policy: self.policy,
            metrics_addr: (!self.no_metrics).then_some(self.metrics_addr),
            instance: self.instance,
            ring_bytes: self.ring_buffer_bytes,
            kubernetes,
        })
        .await
    }
}
