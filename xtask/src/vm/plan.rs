//! What a VM runs: the lanes, which test files each runs, and the tests
//! left out of the VM on purpose (each with its reason, printed).

use std::{fmt, time::Duration};

use super::{binaries::Binaries, image::sh_quote};

/// How the VM starts the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A shell script is PID 1 and runs them.
    Direct,
    /// systemd is PID 1; a oneshot unit runs them after multi-user.target.
    Systemd,
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lane::Direct => "direct",
            Lane::Systemd => "systemd",
        })
    }
}

/// Test files the systemd lane runs: those about systemd and the daemon.
const SYSTEMD_LANE_FILES: &[&str] = &["systemd", "systemd_live", "daemon"];

/// A test file, or one test in it, that the VM does not run.
pub struct Exclusion {
    pub file: &'static str,
    /// None: the whole file.
    pub test: Option<&'static str>,
    pub why: &'static str,
}

pub const EXCLUDED: &[Exclusion] = &[
    Exclusion {
        file: "prometheus",
        test: None,
        why: "checks deploy/prometheus with promtool: files only, no kernel involved \
              (the image has no prometheus package)",
    },
    Exclusion {
        file: "kubernetes",
        test: Some("manifests_validate_against_the_kubernetes_schemas"),
        why: "validates deploy/kubernetes with kubernetes-validate (PyPI): files only",
    },
    Exclusion {
        file: "alerts_live",
        test: None,
        why: "the alert rules in a real Prometheus: rules and metrics, which no kernel changes \
              (the image has no prometheus package)",
    },
    Exclusion {
        file: "dns",
        test: Some("search_list_expansions_are_quiet_and_musl_resolves"),
        why: "compiles a musl client with musl-gcc, which the image lacks; the proxy's \
              answers it checks do not depend on the kernel",
    },
];

pub struct Plan {
    /// Passed to every test binary (a test name substring).
    pub filter: Option<String>,
    /// Only these test files, if any are named.
    pub files: Vec<String>,
    /// Bound on one test binary's run inside the VM.
    pub test_timeout: Duration,
}

impl Plan {
    /// The test files `lane` runs (after exclusions).
    pub fn files<'a>(
        &self,
        lane: Lane,
        bins: &'a Binaries,
    ) -> Vec<&'a (String, std::path::PathBuf)> {
        bins.tests
            .iter()
            .filter(|(name, _)| !EXCLUDED.iter().any(|e| e.file == name && e.test.is_none()))
            .filter(|(name, _)| lane == Lane::Direct || SYSTEMD_LANE_FILES.contains(&name.as_str()))
            .filter(|(name, _)| self.files.is_empty() || self.files.contains(name))
            .collect()
    }

    /// tests.sh: one `run_test NAME BINARY ARGS...` line per test file.
    pub fn script(&self, lane: Lane, bins: &Binaries) -> String {
        let mut s = String::new();
        for (name, path) in self.files(lane, bins) {
            let mut line = format!(
                "run_test {} {}",
                sh_quote(name),
                sh_quote(&path.to_string_lossy())
            );
            if let Some(f) = &self.filter {
                line.push(' ');
                line.push_str(&sh_quote(f));
            }
            // Tests that need systemd as PID 1 are ignored elsewhere.
            if lane == Lane::Systemd {
                line.push_str(" --include-ignored");
            }
            for e in EXCLUDED.iter().filter(|e| e.file == name) {
                if let Some(t) = e.test {
                    line.push_str(&format!(" --skip {}", sh_quote(t)));
                }
            }
            s.push_str(&line);
            s.push('\n');
        }
        s
    }
}
