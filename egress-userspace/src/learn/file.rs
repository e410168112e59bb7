//! Writing learned rules: a new policy file, or new items appended to the
//! `allow:` list of the one there, every other line of it kept as written.
//! The result must validate, with the old rules and the new ones all in
//! it, before it replaces the file (written beside it, then renamed).

use std::{fmt::Write as _, path::Path};

use anyhow::{bail, Context, Result};

use super::{
    observe::Observed,
    rules::{comment_text, learned, render},
};
use crate::{
    policy::{lint::lint, validate::parse, Policy},
    report::describe::timestamp,
};

/// What one learning run added, for the person who ran it.
pub struct Outcome {
    pub added: usize,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn write(file: &Path, o: &Observed, source: &str) -> Result<Outcome> {
    let old = match std::fs::read_to_string(file) {
        Ok(text) => {
            let policy = crate::compile::load::file(file).with_context(|| {
                format!("{} is there but is not a policy egressd can add to: fix it, or learn into a new file", file.display())
            })?;
            Some((text, policy))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let mut notes = notes(o);
    // Each rule must stand on its own (an address no rule may name, say):
    // one that does not is left out and said, not the whole file lost.
    let rules: Vec<_> = learned(o, old.as_ref().map(|(_, p)| p))
        .into_iter()
        .filter(|r| {
            let one = format!("name: one\nallow:\n{}", render(std::slice::from_ref(r), 2));
            match parse(&one, file) {
                Ok(_) => true,
                Err(e) => {
                    notes.push(format!(
                        "no rule written for what was reached: {}",
                        e.message
                    ));
                    false
                }
            }
        })
        .collect();
    let mut outcome = Outcome {
        added: rules.len(),
        notes: notes.clone(),
        warnings: Vec::new(),
    };
    if rules.is_empty() && old.is_some() {
        outcome.warnings = warnings(file)?;
        return Ok(outcome);
    }
    let mut block = format!(
        "# Learned by egressd at {} from {}.\n",
        timestamp(std::time::SystemTime::now()),
        comment_text(source)
    );
    for n in &notes {
        let _ = writeln!(block, "# Note: {}", comment_text(n));
    }
    let text = match &old {
        Some((text, _)) => {
            let (at, indent) = insertion(text)?;
            let mut items = indent_comments(&block, indent);
            items.push_str(&render(&rules, indent));
            splice(text, at, &items)
        }
        None => {
            let mut t = format!(
                "# A policy learned from what a run reached. Read it before you\n# enforce it: every destination below was reached by the command,\n# whatever steered it.\nname: {}\nmode: enforce\n",
                policy_name(file)
            );
            if rules.is_empty() {
                t.push_str(&block);
                t.push_str("allow: []\n");
            } else {
                t.push_str("allow:\n");
                t.push_str(&indent_comments(&block, 2));
                t.push_str(&render(&rules, 2));
            }
            t
        }
    };
    let new = parse(&text, file).map_err(|e| {
        anyhow::anyhow!(
            "the learned policy does not validate, so {} is left as it was: {e}",
            file.display()
        )
    })?;
    let before = match &old {
        Some((_, p)) => p.clone(),
        None => parse(
            &format!("name: {}\nmode: enforce\n", policy_name(file)),
            file,
        )?,
    };
    if !only_rules_added(&before, &new, rules.len()) {
        bail!(
            "adding to {} would change more than its allow list (keeping its {} rule(s) and adding {}; is its allow list a plain block list?): it is left as it was; learn into a new file and merge by hand",
            file.display(),
            before.rules.len(),
            rules.len()
        );
    }
    crate::compile::load::check(&new)
        .with_context(|| format!("{} is left as it was", file.display()))?;
    replace(file, &text)?;
    outcome.warnings = warnings(file)?;
    Ok(outcome)
}

/// Whether `new` is `old` with `added` rules at the end of its allow list
/// and nothing else changed: what the run saw (names, paths, process
/// names the agent chose) must not change any other field.
fn only_rules_added(old: &Policy, new: &Policy, added: usize) -> bool {
    new.rules.len() == old.rules.len() + added
        && new.rules[..old.rules.len()] == old.rules[..]
        && Policy {
            rules: Vec::new(),
            ..new.clone()
        } == Policy {
            rules: Vec::new(),
            ..old.clone()
        }
}

/// What the rules cannot say, for the file's comments and the terminal.
fn notes(o: &Observed) -> Vec<String> {
    let mut notes = Vec::new();
    let unreached = o.unreached();
    if !unreached.is_empty() {
        notes.push(format!(
            "looked up but never reached, so not allowed (their lookups will be refused): {}",
            unreached.join(", ")
        ));
    }
    for (name, ip, why) in o.screened_answers() {
        notes.push(format!(
            "{name} was answered {ip}, {why}: egressd refuses such answers unless the policy says `dns: private_answers: allow` (and never for loopback or metadata addresses)"
        ));
    }
    for (what, seen) in &o.unlearnable {
        notes.push(format!("{what} (seen {} time(s))", seen.count));
    }
    notes
}

/// `block` (comment lines) indented by `indent` spaces.
fn indent_comments(block: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    block.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A policy name from the file's name (`coding-agent.yaml`: `coding-agent`).
fn policy_name(file: &Path) -> String {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.parse::<crate::policy::fields::Name>().is_ok() {
        name
    } else {
        "learned".into()
    }
}

/// Where new items go in `text`, and their indentation: after the last
/// item of a block `allow:` list; in place of an empty `allow: []`; or at
/// the end, under a new `allow:`.
fn insertion(text: &str) -> Result<(Insert, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(key) = lines.iter().position(|l| l.starts_with("allow:")) else {
        return Ok((Insert::NewKey, 2));
    };
    let value = lines[key]["allow:".len()..]
        .split('#')
        .next()
        .unwrap_or("")
        .trim();
    match value {
        "" => {}
        "[]" => return Ok((Insert::ReplaceEmpty(key), 2)),
        _ => bail!(
            "the allow list of this file is written in flow style (`allow: [...]`): write it as a block list (one `- ` item a line) and learn again"
        ),
    }
    let mut last = key;
    let mut indent = None;
    for (i, l) in lines.iter().enumerate().skip(key + 1) {
        let t = l.trim_start();
        if t.is_empty() || (t.starts_with('#') && l.len() == t.len()) {
            continue;
        }
        if l.len() == t.len() && !t.starts_with('-') {
            break;
        }
        if indent.is_none() && t.starts_with('-') {
            indent = Some(l.len() - t.len());
        }
        last = i;
    }
    Ok((Insert::After(last), indent.unwrap_or(2)))
}

enum Insert {
    After(usize),
    ReplaceEmpty(usize),
    NewKey,
}

fn splice(text: &str, at: Insert, items: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let end = |out: &mut String| {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    };
    match at {
        Insert::NewKey => {
            out.push_str(text);
            end(&mut out);
            out.push_str("allow:\n");
            out.push_str(items);
        }
        Insert::After(n) | Insert::ReplaceEmpty(n) => {
            for (i, l) in lines.iter().enumerate() {
                if matches!(at, Insert::ReplaceEmpty(k) if k == i) {
                    out.push_str("allow:\n");
                } else {
                    out.push_str(l);
                    out.push('\n');
                }
                if i == n {
                    out.push_str(items);
                }
            }
        }
    }
    out
}

/// Writes `text` beside `file` (a new file of a random name: never through
/// a link someone planted there, as egressd writes as root in a directory
/// the agent may write to), then renames it over `file`.
fn replace(file: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut random = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .context("reading /dev/urandom")?;
    let tmp = dir.join(format!(
        ".{}.learned-{:016x}",
        file.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy"),
        u64::from_ne_bytes(random)
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("replacing {}", file.display())
    })
}

/// The lint warnings of the policy in `file`, as `check` prints them.
fn warnings(file: &Path) -> Result<Vec<String>> {
    let policy = crate::compile::load::file(file)?;
    Ok(lint(&policy)
        .into_iter()
        .map(|w| {
            let place = if w.line > 0 {
                format!("{}:{}", file.display(), w.line)
            } else {
                file.display().to_string()
            };
            format!("{place}: warning: {}", w.message)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(text: &str) -> String {
        let (at, indent) = insertion(text).unwrap();
        splice(
            text,
            at,
            &format!("{}- ip: 203.0.113.7\n", " ".repeat(indent)),
        )
    }

    #[test]
    fn appends_to_the_allow_list_keeping_every_other_line() {
        let text = "# mine\nname: p\nallow:\n  # the model\n  - host: a.test\n    ports: [443]\n\n# after\ndns:\n  min_ttl: 30\n";
        assert_eq!(
            insert(text),
            "# mine\nname: p\nallow:\n  # the model\n  - host: a.test\n    ports: [443]\n  - ip: 203.0.113.7\n\n# after\ndns:\n  min_ttl: 30\n"
        );
        let flush = "name: p\nallow:\n- host: a.test\n";
        assert_eq!(
            insert(flush),
            "name: p\nallow:\n- host: a.test\n- ip: 203.0.113.7\n"
        );
        assert_eq!(
            insert("name: p\nallow: []  # nothing\nmode: audit\n"),
            "name: p\nallow:\n  - ip: 203.0.113.7\nmode: audit\n"
        );
        assert_eq!(insert("name: p"), "name: p\nallow:\n  - ip: 203.0.113.7\n");
        assert!(insertion("name: p\nallow: [{ip: 203.0.113.1}]\n").is_err());
    }

    #[test]
    fn names_the_policy_after_its_file() {
        assert_eq!(
            policy_name(Path::new("/x/Coding Agent.yaml")),
            "coding-agent"
        );
        assert_eq!(policy_name(Path::new("/x/_.yaml")), "learned");
    }
}
