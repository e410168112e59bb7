//! `egressd check PATH...`: validate policies (each file, then the files
//! together, as `run` would load them) and warn about broad rules.

use std::{io::Write, path::PathBuf};

use crate::{compile::load, policy::lint::lint};

/// Validate policy files (a directory: its *.yaml files), alone and
/// together (names, cgroups, overlapping pod selectors), and warn about
/// broad rules.
#[derive(clap::Args)]
pub struct Check {
    #[arg(required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Fail on warnings too.
    #[arg(long)]
    strict: bool,
}

impl Check {
    /// True if every file is usable (and, with `--strict`, warning-free).
    pub fn call(self) -> bool {
        check(&self.files, self.strict)
    }
}

/// Checks each file (a directory: each of its policy files), and each
/// against those before it (a policy name or cgroup used twice, pod
/// selectors that overlap); prints one verdict per file and its warnings.
/// Returns true if every file is usable (and, with `strict`, warning-free).
fn check(paths: &[PathBuf], strict: bool) -> bool {
    let mut ok = true;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        match crate::policy::load::files_of(path) {
            // A file named twice (or by its directory too) is checked once.
            Ok(f) => files.extend(
                f.into_iter()
                    .filter(|f| seen.insert(std::fs::canonicalize(f).unwrap_or(f.clone()))),
            ),
            Err(e) => {
                ok = false;
                let _ = writeln!(err, "{e}");
            }
        }
    }
    let mut loaded = Vec::new();
    for file in &files {
        let result = load::file(file).and_then(|policy| {
            crate::policy::load::clashes(&loaded, &policy)?;
            Ok(policy)
        });
        match result {
            Ok(policy) => {
                let mut warnings = lint(&policy);
                if !policy.channels.unix.is_empty() {
                    if let Some(w) = unix_hooks_warning() {
                        warnings.push(crate::policy::lint::Warning {
                            line: 0,
                            message: w,
                        });
                    }
                }
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
                loaded.push(policy);
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(err, "{e}");
            }
        }
    }
    ok
}

/// Whether this kernel judges `channels.unix` (Linux 6.7's hooks), when it
/// does not or cannot be told: probing loads a program, which needs root.
fn unix_hooks_warning() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("channels.unix is judged only on kernels with cgroup UNIX socket hooks (Linux 6.7+): run check as root to learn whether this one has them".into());
    }
    (!crate::kernel::unix::supported()).then(|| {
        format!(
            "channels.unix: {}, so UNIX sockets are not judged here",
            crate::kernel::unix::UNSUPPORTED
        )
    })
}
