//! `egressd governed`: exit 0 if a cgroup is governed by a policy now, 1
//! if not.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use crate::kernel::governed::{check_waiting, own_cgroup};

/// Exit 0 if a cgroup is governed by a policy now, 1 if not: for a unit
/// to run before its agent starts (ExecStartPre=).
#[derive(clap::Args)]
pub struct Governed {
    /// The policy that must govern it.
    #[arg(long)]
    policy: String,
    /// The cgroup, relative to the cgroup2 root.
    #[arg(long, conflicts_with = "self_", required_unless_present = "self_")]
    cgroup: Option<PathBuf>,
    /// The cgroup of this command itself (as ExecStartPre= runs in the
    /// unit's cgroup).
    #[arg(long = "self", id = "self_")]
    self_: bool,
    /// Keep checking for up to this many seconds.
    #[arg(long, default_value_t = 0.0)]
    wait: f64,
}

impl Governed {
    pub fn call(self) -> ExitCode {
        let rel = match &self.cgroup {
            Some(c) => Ok(PathBuf::from(c.to_string_lossy().trim_start_matches('/'))),
            None => own_cgroup(),
        };
        let wait = Duration::from_secs_f64(self.wait.max(0.0));
        match rel.and_then(|r| check_waiting(&r, &self.policy, wait)) {
            Ok(by) => {
                println!("governed by `{}` (at {})", self.policy, by.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("egressd: NOT GOVERNED: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
