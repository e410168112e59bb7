//! The Prometheus artefacts in deploy/prometheus, checked by promtool (the
//! Debian package prometheus): the alert rules load and their unit tests
//! pass, the scrape configurations load, and the Grafana dashboard and the
//! rules name only metrics egressd exports.

use std::{path::PathBuf, process::Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("promtool (Debian package prometheus)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn alert_rules_load_and_their_unit_tests_pass() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(ok, "{out}");
}

#[test]
fn scrape_configurations_load() {
    for f in ["prometheus-systemd.yml", "prometheus-kubernetes.yml"] {
        let (ok, out) = promtool(&["check", "config", f]);
        assert!(ok, "{f}: {out}");
    }
}

/// Metric names egressd registers (from its source, the one place they are defined).
fn exported() -> Vec<String> {
    let src = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../egress-userspace/src/report/metrics.rs"),
    )
    .unwrap();
    src.split('"')
        .filter(|s| {
            s.starts_with("egressd_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(String::from)
        .collect()
}

fn used(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("egressd_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if name != "egressd_" {
            names.push(name);
        }
        rest = &rest[i + 8..];
    }
    names
}

#[test]
fn dashboard_and_rules_use_exported_metrics() {
    let exported = exported();
    assert!(exported.len() >= 8, "{exported:?}");
    let dash = std::fs::read_to_string(dir().join("grafana-dashboard.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dash).expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let rules = std::fs::read_to_string(dir().join("alerts.yml")).unwrap();
    for name in used(&dash).into_iter().chain(used(&rules)) {
        assert!(
            exported.contains(&name),
            "{name} is not a metric egressd exports ({exported:?})"
        );
    }
}
