//! The benchmark, run at tiny sizes so that it does not rot. Nothing is
//! timed or compared here: only that every section is measured and written,
//! and that the deny storm's counters are exact.

use egress_tests::{egressd::TempDir, require_root};

/// The benchmark's binary (a package of its own, built by `cargo xtask
/// test`): beside this test binary's directory, as cargo lays them out.
fn bench_bin() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap();
    let bin = me
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("egress-bench");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask test` (it builds egress-bench)",
        bin.display()
    );
    bin
}

#[test]
fn bench_runs_at_smoke_size() {
    require_root();
    let out = TempDir::new("bench").unwrap();
    let status = std::process::Command::new(bench_bin())
        .args(["run", "--smoke", "--out"])
        .arg(&out.0)
        .status()
        .unwrap();
    assert!(status.success());
    let report = std::fs::read_to_string(out.0.join("BENCHMARKS.md")).unwrap();
    for section in [
        "## connect() and bulk transfer",
        "## Loading policies",
        "## Where the time goes",
        "## Deny storm",
        "## DNS",
    ] {
        assert!(report.contains(section), "{section} missing:\n{report}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.0.join("bench-results.json")).unwrap())
            .unwrap();
    assert_eq!(results["deny_storm"]["counters_exact"], true, "{results}");
    assert!(results["sizes"].as_array().is_some_and(|s| s.len() == 2));
    assert!(results["dns"]["proxied"]["p50_us"]
        .as_f64()
        .is_some_and(|v| v > 0.0));
    assert!(results["dns"]["proxied_qps"]["median"]
        .as_f64()
        .is_some_and(|v| v > 0.0));
    // Every refused connect was refused by egressd (EPERM), and every
    // event egressd counted as written is a line in its output.
    let storm = &results["deny_storm"];
    assert_eq!(storm["refused"], storm["attempts"], "{storm}");
    assert_eq!(
        storm["event_lines_written"].as_f64(),
        storm["events_delivered"].as_f64(),
        "{storm}"
    );
    let programs = &results["sizes"][1]["egressd"]["programs"]["tcp"]["programs"];
    assert!(
        programs["egress_connect4"]["runs_per_unit"].as_f64() == Some(1.0),
        "{programs}"
    );
}
