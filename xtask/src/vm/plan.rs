//! What a VM runs: the lanes, which test modules each runs, and the tests
//! left out of the VM on purpose (each with its reason, printed). The
//! integration tests are one binary; a VM runs it once per module, naming
//! that module's tests exactly (libtest's filters match any of them, so a
//! module filter and a name filter cannot be combined on its command line).

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

/// Test modules the systemd lane runs: those about systemd and the daemon.
const SYSTEMD_LANE_FILES: &[&str] = &["systemd", "systemd_live", "daemon"];

/// Test modules whose tests are ignored on a host and run in the direct
/// lane: podman needs a pure cgroup2 host.
const DIRECT_LANE_IGNORED: &[&str] = &["container"];

/// A test module, or one test in it, that the VM does not run.
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
        file: "kubernetes",
        test: Some("the_monitoring_component_validates_and_carries_the_alert_rules"),
        why: "validates deploy/kubernetes-with-monitoring with kubernetes-validate and the \
              Prometheus Operator's models (PyPI): files only",
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
    /// Only these test modules, if any are named.
    pub files: Vec<String>,
    /// Bound on one test binary's run inside the VM.
    pub test_timeout: Duration,
}

impl Plan {
    /// The tests of module `name` this plan runs: minus exclusions, and
    /// only those whose full name holds the filter.
    fn cases<'a>(&self, name: &str, bins: &'a Binaries) -> Vec<&'a str> {
        let excluded = |test: &str| {
            EXCLUDED
                .iter()
                .any(|e| e.file == name && e.test.is_none_or(|t| t == test))
        };
        bins.cases
            .iter()
            .filter_map(|c| c.strip_prefix(name)?.strip_prefix("::").map(|t| (c, t)))
            .filter(|(_, test)| !excluded(test))
            .filter(|(c, _)| self.filter.as_ref().is_none_or(|f| c.contains(f.as_str())))
            .map(|(c, _)| c.as_str())
            .collect()
    }

    /// The test modules `lane` runs (after exclusions and filters).
    pub fn files<'a>(
        &self,
        lane: Lane,
        bins: &'a Binaries,
    ) -> Vec<&'a (String, std::path::PathBuf)> {
        bins.tests
            .iter()
            .filter(|(name, _)| lane == Lane::Direct || SYSTEMD_LANE_FILES.contains(&name.as_str()))
            .filter(|(name, _)| self.files.is_empty() || self.files.contains(name))
            .filter(|(name, _)| !self.cases(name, bins).is_empty())
            .collect()
    }

    /// tests.sh: one `run_test NAME BINARY ARGS...` line per test module,
    /// naming its tests exactly.
    pub fn script(&self, lane: Lane, bins: &Binaries) -> String {
        let mut s = String::new();
        for (name, path) in self.files(lane, bins) {
            let mut line = format!(
                "run_test {} {}",
                sh_quote(name),
                sh_quote(&path.to_string_lossy())
            );
            // Tests that need systemd as PID 1, or podman, are ignored
            // elsewhere.
            if lane == Lane::Systemd || DIRECT_LANE_IGNORED.contains(&name.as_str()) {
                line.push_str(" --include-ignored");
            }
            line.push_str(" --exact");
            for case in self.cases(name, bins) {
                line.push(' ');
                line.push_str(&sh_quote(case));
            }
            s.push_str(&line);
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn bins() -> Binaries {
        let cases = [
            "daemon::a_reload",
            "daemon::b_events",
            "dns::search_list_expansions_are_quiet_and_musl_resolves",
            "dns::tunnel",
            "prometheus::rules",
            "systemd_live::restart",
        ];
        let bin = PathBuf::from("/t/integration");
        Binaries {
            egressd: PathBuf::from("/t/egressd"),
            helpers: Vec::new(),
            tests: ["daemon", "dns", "prometheus", "systemd_live"]
                .map(|m| (m.to_string(), bin.clone()))
                .to_vec(),
            cases: cases.map(String::from).to_vec(),
        }
    }

    fn plan(filter: Option<&str>, files: &[&str]) -> Plan {
        Plan {
            filter: filter.map(String::from),
            files: files.iter().map(|f| f.to_string()).collect(),
            test_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn each_module_runs_its_own_tests_by_exact_name() {
        let s = plan(None, &[]).script(Lane::Direct, &bins());
        assert_eq!(
            s,
            "run_test 'daemon' '/t/integration' --exact 'daemon::a_reload' 'daemon::b_events'\n\
             run_test 'dns' '/t/integration' --exact 'dns::tunnel'\n\
             run_test 'systemd_live' '/t/integration' --exact 'systemd_live::restart'\n"
        );
    }

    #[test]
    fn filters_and_lanes_narrow_the_modules() {
        let s = plan(Some("events"), &[]).script(Lane::Direct, &bins());
        assert_eq!(
            s,
            "run_test 'daemon' '/t/integration' --exact 'daemon::b_events'\n"
        );
        let s = plan(None, &[]).script(Lane::Systemd, &bins());
        assert!(s.lines().all(|l| l.contains("--include-ignored")), "{s}");
        assert_eq!(s.lines().count(), 2, "{s}");
        assert!(plan(Some("nothing"), &["dns"])
            .files(Lane::Direct, &bins())
            .is_empty());
    }
}
