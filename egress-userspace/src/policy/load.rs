//! Reading policy files from disk: one file, or every `*.yaml` of a
//! directory, with the checks that concern several files at once.

use std::path::{Path, PathBuf};

use super::{error::PolicyError, validate::parse, Policy};

/// Reads and validates one policy file. (`compile::check` finds what only
/// compiling it can; commands load files through `compile::load`.)
pub fn load_file(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// The policy files `path` names: itself, or every `*.yaml`/`*.yml` file
/// of a directory, sorted (a directory without any is an error).
pub fn files_of(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let files = yaml_files(path)?;
    if files.is_empty() {
        return Err(PolicyError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: "no *.yaml or *.yml policy files in this directory".into(),
        });
    }
    Ok(files)
}

/// Every `*.yaml`/`*.yml` file of directory `path`, sorted.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| PolicyError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read directory: {e}"),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml") | Some("yml")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a policy file, or every `*.yaml`/`*.yml` file of a directory.
/// Policy names must be unique, no cgroup may be governed twice, and no
/// two policies' pod selectors may overlap.
pub fn load_path(path: &Path) -> Result<Vec<Policy>, PolicyError> {
    let mut policies: Vec<Policy> = Vec::new();
    for file in files_of(path)? {
        let p = load_file(&file)?;
        clashes(&policies, &p)?;
        policies.push(p);
    }
    Ok(policies)
}

/// What policy `p` (from its `source` file) cannot share with `others`,
/// loaded with it: its name, a cgroup, pods its selectors can select.
pub fn clashes(others: &[Policy], p: &Policy) -> Result<(), PolicyError> {
    let clash = |message: String| PolicyError {
        file: PathBuf::from(&p.source),
        line: 0,
        column: 0,
        message,
    };
    if let Some(other) = others.iter().find(|o| o.name == p.name) {
        return Err(clash(format!(
            "policy name `{}` is already used by {}",
            p.name, other.source
        )));
    }
    for c in &p.cgroups {
        if let Some(other) = others.iter().find(|o| o.cgroups.contains(c)) {
            return Err(clash(format!(
                "cgroup `{}` is already governed by policy `{}` ({})",
                c.display(),
                other.name,
                other.source
            )));
        }
    }
    for (i, s) in p.pods.iter().enumerate() {
        for other in others {
            if let Some(j) = other.pods.iter().position(|o| o.overlaps(s)) {
                return Err(clash(format!(
                    "pod selector {} of policy `{}` can select the same pods as selector {} of policy `{}` ({}): a pod is governed by one policy; make them exclusive (a namespace, or a label one requires and the other excludes with `matchExpressions`)",
                    i + 1,
                    p.name,
                    j + 1,
                    other.name,
                    other.source
                )));
            }
        }
    }
    Ok(())
}
