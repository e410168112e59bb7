//! The two mistakes egressd exits 2 for (1 is for everything else): a
//! policy that cannot be used, reported with the file, the line and column
//! where they are known, and what to fix; and a command line that cannot
//! work (`UsageError`).

use std::{fmt, path::PathBuf};

/// A policy that could not be read, with where and why.
#[derive(Debug, thiserror::Error)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is not about one place in the file.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}

/// A command line that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
