//! `egressd detach`: remove pinned programs.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    kernel::{
        cgroup::{self, Cgroup},
        diag, mounts, pins,
    },
    policy::error::UsageError,
};

/// Remove pinned programs: everything egressd attached (stops enforcement).
#[derive(clap::Args)]
pub struct Detach {
    /// Only this instance (`run`, or `exec-PID`).
    #[arg(long)]
    instance: Option<String>,
    /// Only this policy's programs (in every instance, or in --instance).
    #[arg(long)]
    policy: Option<String>,
}

impl Detach {
    pub fn call(self) -> Result<()> {
        if let Some(bad) = self
            .instance
            .iter()
            .chain(self.policy.iter())
            .find(|n| !pins::valid_name(n))
        {
            bail!(UsageError(format!(
                "`{bad}`: an instance or policy name is letters, digits, `.`, `_` and `-`"
            )));
        }
        let (dirs, ids): (Vec<PathBuf>, Vec<u64>) = match (&self.instance, &self.policy) {
            (i, Some(p)) => {
                let dirs = pins::policy_dirs(i.as_deref(), p)?;
                if dirs.is_empty() {
                    bail!("no pinned programs of policy `{p}`")
                }
                let ids = dirs
                    .iter()
                    .flat_map(|d| pins::ids_in_policy_dir(d))
                    .collect();
                (dirs, ids)
            }
            (Some(i), None) => {
                let dir = pins::instance_dir(i)?;
                let ids = pins::ids_in_instance(&dir);
                (vec![dir], ids)
            }
            (None, None) => {
                let dir = pins::root()?;
                let ids = pins::ids_in_root(&dir);
                (vec![dir], ids)
            }
        };
        let root = mounts::cgroup2_root()?;
        let live = cgroup::ids_in_tree(&root);
        cut_stalled(&root, &ids, &live)?;
        // A removed cgroup's links stay while sockets made in it live on:
        // nothing finds those sockets (no process of the cgroup is left to
        // say which network namespace they are in), and what the links
        // refused them would leave once the links are gone.
        // The kernel frees a removed cgroup a moment after its last socket
        // goes (one just removed with none is not freed yet): wait for it
        // as long as `cut_stalled` waits for a socket.
        let deadline = Instant::now() + diag::LET_GO_WAIT;
        let kept: HashSet<PathBuf> = loop {
            let kept: HashSet<PathBuf> = dirs
                .iter()
                .flat_map(|d| pins::removed_not_freed(d, &live))
                .collect();
            if kept.is_empty() || Instant::now() >= deadline {
                break kept;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for dir in &dirs {
            pins::remove_tree_except(dir, &kept)?;
        }
        if !kept.is_empty() {
            eprintln!(
                "egressd: kept the links of {} removed cgroup(s) whose sockets outlive them (what those sockets hold stays refused); they can go once the kernel frees those cgroups: run `egressd detach` again later",
                kept.len()
            );
        }
        Ok(())
    }
}

/// What the live cgroups `ids` (and those below them) still hold,
/// refused by their programs, is destroyed first (see
/// `diag::cut_stalled`): it would leave once the programs are gone. If
/// that fails, nothing is detached.
fn cut_stalled(root: &Path, ids: &[u64], live: &HashSet<u64>) -> Result<()> {
    let (mut all, mut pids) = (HashSet::new(), Vec::new());
    for &id in ids.iter().filter(|id| live.contains(id)) {
        all.insert(id);
        if let Some(path) = cgroup::path_of_id(root, id) {
            let cgroup = Cgroup { path };
            all.extend(cgroup.all_ids());
            pids.extend(cgroup.all_pids());
        }
    }
    if all.is_empty() {
        return Ok(());
    }
    diag::cut_stalled(&all, &pids, diag::LET_GO_WAIT).context(
        "nothing detached: the data sockets of the governed cgroups hold, refused by egressd, could not be destroyed, and would leave once the programs are gone",
    )?;
    Ok(())
}
