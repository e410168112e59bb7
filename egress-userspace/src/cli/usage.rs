//! Mistakes in how a command was called: egressd exits 2 for them (as for
//! a broken policy), 1 for everything else.

/// A command line that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Checks a `--ring-buffer-bytes` value: a power of two, at least 4096.
pub fn check_ring_bytes(bytes: Option<u32>) -> Result<(), UsageError> {
    match bytes {
        Some(b) if !b.is_power_of_two() || b < 4096 => Err(UsageError(format!(
            "--ring-buffer-bytes {b}: use a power of two, at least 4096"
        ))),
        _ => Ok(()),
    }
}
