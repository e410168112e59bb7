//! `egressd detach`: remove pinned programs.

use anyhow::{bail, Result};

use crate::{kernel::pins, policy::error::UsageError};

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
        match (self.instance, self.policy) {
            (i, Some(p)) => {
                if pins::remove_policy(i.as_deref(), &p)? == 0 {
                    bail!("no pinned programs of policy `{p}`")
                }
                Ok(())
            }
            (Some(i), None) => pins::remove_tree(&pins::instance_dir(&i)?),
            (None, None) => pins::remove_tree(&pins::root()?),
        }
    }
}
