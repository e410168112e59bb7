//! How every command reads policy files: validated (`policy::load`), then
//! compiled once with no address known (`check`), so that what `check`
//! accepts will load in the kernel. The error names the file.

use std::path::Path;

use super::plan::Plan;
use crate::policy::{error::PolicyError, load, Policy};

/// Compiles `policy` with no hostname resolved, to find what only
/// compilation can (too many port ranges on one prefix), so that what
/// `check` accepts will load. The error names the policy's file.
pub fn check(policy: &Policy) -> Result<(), PolicyError> {
    Plan::new(policy).map(drop).map_err(|e| PolicyError {
        file: policy.source.clone().into(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })
}

/// One policy file, validated and compiled once.
pub fn file(path: &Path) -> Result<Policy, PolicyError> {
    let policy = load::load_file(path)?;
    check(&policy)?;
    Ok(policy)
}

/// A policy file or a directory of them, each validated and compiled once.
pub fn path(path: &Path) -> Result<Vec<Policy>, PolicyError> {
    let policies = load::load_path(path)?;
    for p in &policies {
        check(p)?;
    }
    Ok(policies)
}
