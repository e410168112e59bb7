//! Checks of option values that no lower layer makes.

use crate::policy::error::UsageError;

/// Checks a `--ring-buffer-bytes` value: a power of two, at least 4096.
pub fn check_ring_bytes(bytes: Option<u32>) -> Result<(), UsageError> {
    match bytes {
        Some(b) if !b.is_power_of_two() || b < 4096 => Err(UsageError(format!(
            "--ring-buffer-bytes {b}: use a power of two, at least 4096"
        ))),
        _ => Ok(()),
    }
}
