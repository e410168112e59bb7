//! The documentation cannot drift from what it documents: every link in
//! the README and docs/ leads to a file and a heading that exist, every
//! policy snippet passes `egressd check`, every command egressd has is in
//! the reference, and the README stays short.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use egress_tests::egressd::{bin, TempDir};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Markdown files a reader meets.
fn documents() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [
        "README.md",
        "SECURITY.md",
        "CHANGELOG.md",
        "ARCHITECTURE.md",
    ]
    .iter()
    .map(|f| root().join(f))
    .collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 5, "{docs:?}");
    v.extend(docs);
    v
}

/// The text outside fenced code blocks, and the code blocks with their
/// info strings.
fn split(text: &str) -> (String, Vec<(String, String)>) {
    let (mut prose, mut blocks) = (String::new(), Vec::new());
    let mut code: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(info) = line.trim_start().strip_prefix("```") {
            match code.take() {
                Some(block) => blocks.push(block),
                None => code = Some((info.to_string(), String::new())),
            }
            continue;
        }
        match code.as_mut() {
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
        }
    }
    (prose, blocks)
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
/// as dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(path: &Path) -> Vec<String> {
    let (prose, _) = split(&std::fs::read_to_string(path).unwrap());
    prose
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// `[text](target)` links in `prose` (text may span lines).
fn links(prose: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = prose;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = &after[..end];
        if !target.contains(char::is_whitespace) && !target.is_empty() {
            out.push(target.to_string());
        }
        rest = &after[end.min(after.len())..];
    }
    out
}

#[test]
fn every_link_leads_somewhere() {
    let mut checked = 0;
    for doc in documents() {
        let (prose, _) = split(&std::fs::read_to_string(&doc).unwrap());
        for target in links(&prose) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(path)
            };
            assert!(file.exists(), "{}: {target}: no such file", doc.display());
            if !fragment.is_empty() {
                assert!(
                    anchors(&file).iter().any(|a| a == fragment),
                    "{}: {target}: no such heading",
                    doc.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked} links");
}

/// A newcomer reads the README in five minutes; the depth is in docs/.
#[test]
fn the_readme_is_short() {
    let lines = std::fs::read_to_string(root().join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(lines <= 300, "README.md has {lines} lines");
}

/// Every ```yaml snippet that is a policy, or part of one (its rules),
/// is one `egressd check` accepts: made whole where it is a part.
#[test]
fn policy_snippets_pass_check() {
    let tmp = TempDir::new("snippets").unwrap();
    let mut files = Vec::new();
    for doc in documents() {
        let (_, blocks) = split(&std::fs::read_to_string(&doc).unwrap());
        for (info, body) in blocks {
            if info != "yaml" {
                continue;
            }
            // As written, indented as a part of something larger or not.
            let indent = body
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            let body: String = body
                .lines()
                .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
                .collect();
            let first = body
                .lines()
                .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .unwrap_or("");
            let policy = if first.starts_with("name:") {
                body
            } else if first.starts_with("allow:") {
                format!("name: snippet\ncgroups: [snippet.slice]\n{body}")
            } else if first.starts_with("- host:")
                || first.starts_with("- ip:")
                || first.starts_with("- cidr:")
            {
                let rules: String = body.lines().map(|l| format!("  {l}\n")).collect();
                format!("name: snippet\ncgroups: [snippet.slice]\nallow:\n{rules}")
            } else {
                continue; // not a policy (a kustomization, a unit)
            };
            // A `cidr_file` it names, beside it.
            for l in policy.lines() {
                if let Some(f) = l.trim_start().strip_prefix("- cidr_file:") {
                    let f = f.split('#').next().unwrap().trim();
                    tmp.write(f, "203.0.113.0/24\n").unwrap();
                }
            }
            let name = format!("snippet-{}.yaml", files.len());
            files.push((doc.clone(), tmp.write(&name, &policy).unwrap()));
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for (doc, file) in files {
        let out = Command::new(bin())
            .arg("check")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: a snippet fails check:\n{}\n{}",
            doc.display(),
            std::fs::read_to_string(&file).unwrap(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every command `egressd --help` lists is in the reference's table.
#[test]
fn the_reference_names_every_command() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "{help}");
    let reference = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    for c in commands {
        assert!(
            reference.contains(&format!("| `egressd {c}` |")),
            "docs/reference.md does not name `egressd {c}`"
        );
    }
}

/// Every reason an event or a metric can give is explained in the
/// reference, spelled as egressd spells it.
#[test]
fn the_reference_explains_every_reason() {
    let reference = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    let mut reasons = 0;
    for r in 1u8.. {
        let name = egressd::kernel::counters::reason_name(r);
        if name == "unknown" {
            break;
        }
        reasons += 1;
        assert!(
            reference.contains(&format!("`{name}`")),
            "docs/reference.md does not explain reason `{name}`"
        );
    }
    assert!(reasons >= 14, "{reasons} reasons");
}
