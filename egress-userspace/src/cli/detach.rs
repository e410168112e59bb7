//! `egressd detach`: remove pinned programs.

use std::{collections::HashSet, path::PathBuf};

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
        let dirs = match (&self.instance, &self.policy) {
            (i, Some(p)) => {
                let dirs = pins::policy_dirs(i.as_deref(), p)?;
                if dirs.is_empty() {
                    bail!("no pinned programs of policy `{p}`")
                }
                dirs
            }
            (Some(i), None) => vec![pins::instance_dir(i)?],
            (None, None) => vec![pins::root()?],
        };
        cut_stalled(&dirs)?;
        for dir in &dirs {
            pins::remove_tree(dir)?;
        }
        Ok(())
    }
}

/// What the cgroups about to be let go of still hold, refused by their
/// programs, is destroyed first (see `diag::cut_stalled`): it would leave
/// once the programs are gone. If that fails, nothing is detached.
fn cut_stalled(dirs: &[PathBuf]) -> Result<()> {
    let root = mounts::cgroup2_root()?;
    let (mut ids, mut pids) = (HashSet::new(), Vec::new());
    for id in dirs.iter().flat_map(|d| pins::cgroup_ids_below(d)) {
        ids.insert(id);
        if let Some(path) = cgroup::path_of_id(&root, id) {
            let cgroup = Cgroup { path };
            ids.extend(cgroup.all_ids());
            pids.extend(cgroup.all_pids());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    diag::cut_stalled(&ids, &pids, diag::LET_GO_WAIT).context(
        "nothing detached: the data sockets of the governed cgroups hold, refused by egressd, could not be destroyed (the kernel needs CONFIG_INET_DIAG_DESTROY), and would leave once the programs are gone",
    )?;
    Ok(())
}
