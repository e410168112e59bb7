//! Kubernetes: the manifests in deploy/kubernetes validate against the
//! Kubernetes schemas (kubernetes-validate, from PyPI), and the policies in
//! the ConfigMap pass `egressd check`.

use std::{path::PathBuf, process::Command};

use egress_tests::egressd::{bin, TempDir};

fn manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.31.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
    for kind in [
        "daemonset/egressd",
        "configmap/egressd-policies",
        "clusterrole/egressd-pod-reader",
        "service/egressd-metrics",
    ] {
        assert!(text.contains(kind), "{kind} was not validated: {text}");
    }
    // The validator can fail: an unknown field is refused.
    let tmp = TempDir::new("k8s").unwrap();
    let bad = tmp
        .write(
            "bad.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  clusterIp: None\n",
        )
        .unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.31.0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "kubernetes-validate accepts anything"
    );
}

#[test]
fn configmap_policies_pass_check() {
    let text = std::fs::read_to_string(
        manifests()
            .into_iter()
            .find(|p| p.ends_with("configmap.yaml"))
            .unwrap(),
    )
    .unwrap();
    let tmp = TempDir::new("cm").unwrap();
    // Each data key holds a block scalar indented by four spaces.
    let mut files = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(key) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(": |")) {
            if let Some((k, body)) = current.take() {
                files.push(tmp.write(&k, &body).unwrap());
            }
            current = Some((key.to_string(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line.strip_prefix("    ").unwrap_or(""));
            body.push('\n');
        }
    }
    if let Some((k, body)) = current.take() {
        files.push(tmp.write(&k, &body).unwrap());
    }
    assert!(!files.is_empty(), "no policies found in the ConfigMap");
    let out = Command::new(bin())
        .arg("check")
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
