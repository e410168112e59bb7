//! `egressd check FILE...`: validate policies and warn about broad rules.

use std::{io::Write, path::PathBuf};

use crate::policy::{file::load_file, lint::lint};

/// Checks each file; prints one verdict per file and its warnings.
/// Returns true if every file is usable (and, with `strict`, warning-free).
pub fn check(files: &[PathBuf], strict: bool) -> bool {
    let mut ok = true;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for file in files {
        match load_file(file) {
            Ok(policy) => {
                let warnings = lint(&policy);
                for w in &warnings {
                    let place = if w.line > 0 {
                        format!("{}:{}", file.display(), w.line)
                    } else {
                        file.display().to_string()
                    };
                    let _ = writeln!(err, "{place}: warning: {}", w.message);
                }
                if strict && !warnings.is_empty() {
                    ok = false;
                }
                let _ = writeln!(
                    out,
                    "{}: ok: policy `{}`, {} mode, {} rule(s), {} cgroup(s), {} warning(s)",
                    file.display(),
                    policy.name,
                    policy.mode,
                    policy.rules.len(),
                    policy.cgroups.len(),
                    warnings.len()
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(err, "{e}");
            }
        }
    }
    ok
}
