//! The systemd units in deploy/systemd: valid for systemd itself, and the
//! agent unit's ExecStartPre refuses to start an agent whose cgroup egressd
//! does not govern. No systemd runs here: the test does what systemd would
//! (create the unit's cgroup, run ExecStartPre's command inside it).
//! systemd_live.rs runs the units under a real systemd.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use egress_tests::{
    egressd::{bin, Daemon, TempDir, TestCgroup},
    netns::Netns,
    require_root, systemd_units,
};

/// Copies the units with egressd's path pointing at the binary under test.
fn installed(tmp: &TempDir) -> Vec<PathBuf> {
    systemd_units()
        .iter()
        .map(|u| {
            let text = std::fs::read_to_string(u).unwrap();
            let text = text.replace("/usr/local/bin/egressd", bin().to_str().unwrap());
            tmp.write(u.file_name().unwrap().to_str().unwrap(), &text)
                .unwrap()
        })
        .collect()
}

fn verify(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(files)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.trim().is_empty(), text)
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let tmp = TempDir::new("units").unwrap();
    let files = installed(&tmp);
    assert!(files.len() >= 3);
    let (ok, text) = verify(&files);
    assert!(ok, "systemd-analyze verify: {text}");
    // The check can fail: a misspelt key is reported.
    let bad = tmp
        .write(
            "bad.service",
            &std::fs::read_to_string(&files[0])
                .unwrap()
                .replace("[Unit]", "[Unit]\nDescriptio=x"),
        )
        .unwrap();
    assert!(!verify(&[bad]).0, "systemd-analyze verify accepts anything");
}

#[test]
fn agent_unit_refuses_to_start_unless_governed() {
    require_root();
    let tmp = TempDir::new("agentunit").unwrap();
    let unit = std::fs::read_to_string(
        systemd_units()
            .iter()
            .find(|u| u.ends_with("doc-summarizer.service"))
            .unwrap(),
    )
    .unwrap();
    let pre = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=+"))
        .expect("the agent unit checks before it starts")
        .replace("/usr/local/bin/egressd", bin().to_str().unwrap());
    let argv: Vec<&str> = pre.split_whitespace().collect();
    let ns = Netns::new("unit").unwrap();
    let slice = TestCgroup::new("agents.slice").unwrap();
    let service = slice.child("doc-summarizer.service").unwrap();
    let start = |cg: &TestCgroup| cg.run(&ns, argv[0], &argv[1..]).unwrap();

    // No egressd: the agent must not start.
    let out = start(&service);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT GOVERNED"));

    // Governed by another policy: still refused.
    let other = tmp
        .write(
            "other.yaml",
            &format!("name: other\ncgroups: [{}]\nallow: []\n", slice.rel_str()),
        )
        .unwrap();
    let d = Daemon::start(&ns, &other).unwrap();
    assert_eq!(start(&service).status.code(), Some(1));
    drop(d);

    // Governed by doc-summarizer (here at the slice, the way the README
    // recommends): the agent may start.
    let good = tmp
        .write(
            "doc.yaml",
            &format!(
                "name: doc-summarizer\ncgroups: [{}]\nallow: []\n",
                slice.rel_str()
            ),
        )
        .unwrap();
    let _d = Daemon::start(&ns, &good).unwrap();
    let out = start(&service);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// `systemd-analyze security` of a unit file against `threshold` (its
/// exposure times ten): true if the exposure is at most that.
fn exposure_at_most(unit: &Path, threshold: u32) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={threshold}"))
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default().to_string();
    (out.status.success(), last)
}

/// The units' `systemd-analyze security` exposure is what the docs
/// records (3.8 for egressd, 1.3 for the agent; 7.1 and 4.8 before they
/// were hardened), and a unit that loses its hardening fails the check.
#[test]
fn units_exposure_is_what_the_readme_says() {
    let tmp = TempDir::new("exposure").unwrap();
    let files = installed(&tmp);
    let unit = |name: &str| files.iter().find(|f| f.ends_with(name)).unwrap().clone();
    for (name, threshold) in [("egressd.service", 38), ("doc-summarizer.service", 13)] {
        let (ok, last) = exposure_at_most(&unit(name), threshold);
        assert!(
            ok,
            "{name}: {last} (docs/operations.md says {}.{})",
            threshold / 10,
            threshold % 10
        );
    }
    // The check can fail: without its sandbox the agent unit is exposed.
    let text = std::fs::read_to_string(unit("doc-summarizer.service")).unwrap();
    let bare: String = text
        .lines()
        .filter(|l| !l.starts_with("Protect") && !l.starts_with("Private"))
        .map(|l| format!("{l}\n"))
        .collect();
    let bare = tmp.write("bare.service", &bare).unwrap();
    assert!(
        !exposure_at_most(&bare, 13).0,
        "systemd-analyze security passes anything"
    );
}
