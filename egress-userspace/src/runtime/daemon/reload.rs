//! Loading the policy files: at start, and again on SIGHUP, `egressd
//! reload` or a change to the files.

use std::path::Path;

use anyhow::Result;

use super::Daemon;
use crate::{
    policy::{
        error::PolicyError,
        unix_writers::{warning, writable_dirs},
        Policy,
    },
    runtime::watch::stamp,
};

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
        for name in &p.channels.unix {
            for w in writable_dirs(name) {
                tracing::warn!(policy = p.name, "{}", warning(name, &w));
            }
        }
    }
    Ok(policies)
}

/// Hands back to the system the memory that compiling a large allowlist
/// used and freed (glibc keeps it otherwise, and the daemon's resident
/// size would stay at its high-water mark).
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Daemon {
    /// Loads the policy files again and applies them (with
    /// `kubernetes-pending` where pods are watched), then watches what the
    /// new policies govern; or says what went wrong (logged and counted).
    /// A file that fails to load changes nothing: the running policies
    /// stay in force.
    pub(super) async fn reload(&mut self) -> Result<(), String> {
        self.seen = stamp(&self.opts.policy);
        let outcome = self.load_and_apply().await;
        self.watch_all();
        outcome
    }

    async fn load_and_apply(&mut self) -> Result<(), String> {
        let loaded = load_policies(&self.opts.policy, self.pods.watched()).and_then(|policies| {
            let expanded = self.pods.expand(&policies, &self.root)?;
            Ok((policies, expanded))
        });
        let metrics = self.engine.metrics.clone();
        let (policies, expanded) = match loaded {
            Ok(p) => p,
            Err(e) => {
                let why = format!("reload refused, the running policies stay in force: {e:#}");
                tracing::error!("{why}");
                metrics.reload(false);
                return Err(why);
            }
        };
        if let Err(e) = self.engine.governor.apply(expanded).await {
            // Logged before counted: whoever sees the count finds the log.
            let why = format!("reload failed part-way, some policies may be the old ones: {e:#}");
            tracing::error!("{why}");
            metrics.reload(false);
            return Err(why);
        }
        metrics.reload(true);
        let names = self.engine.allowlist().policy_names();
        self.describer.policies.extend(names);
        tracing::info!("reloaded");
        release_freed_memory();
        self.base = policies;
        self.sync_pods();
        // Only now, its pods released or handed over: a policy removed from
        // the files.
        if let Err(e) = self.engine.governor.retire_removed() {
            tracing::error!("retiring removed policies: {e:#}");
        }
        Ok(())
    }
}
