//! Learning a policy from a run: `egressd exec --learn FILE` (from its own
//! events) and `egressd learn EVENTS.jsonl -o FILE` (from a daemon's audit
//! events). What the events say was reached (`observe`) becomes allow
//! rules (`rules`), added to FILE: a new policy, or new rules appended to
//! the one there, whose text, comments included, is kept as it was
//! (`file`). "Learn" means this and only this; a DNS answer's addresses
//! are admitted (`state::answers`), not learned.

mod file;
pub mod observe;
pub mod rules;

use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

pub use file::Outcome;
pub use observe::Observed;
pub use rules::comment_text;

use crate::policy::error::UsageError;

/// Adds what `o` saw to the policy in `file` (made if missing), `source`
/// saying where it was seen.
pub fn learn_into(file: &Path, o: &Observed, source: &str) -> Result<Outcome> {
    file::write(file, o, source)
}

/// What event lines say was reached (JSON, one per line; anything before a
/// line's first `{`, such as a journal's prefix, is skipped), by `policy`
/// (needed when the events are of several): what was seen, and where, in
/// words for the policy file's comment.
pub fn read_events(events: &[PathBuf], policy: Option<&str>) -> Result<(Observed, String)> {
    let mut all = Vec::new();
    for path in events {
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Box::new(std::io::BufReader::new(f))
        };
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            let Some(start) = line.find('{') else {
                continue;
            };
            match serde_json::from_str::<serde_json::Value>(&line[start..]) {
                Ok(v) => all.push(v),
                Err(_) => {
                    tracing::debug!("{}:{}: not an event line", path.display(), i + 1);
                }
            }
        }
    }
    let mut names: Vec<&str> = all.iter().filter_map(|v| v["policy"].as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let only = match (policy, names.as_slice()) {
        (Some(p), _) if !names.contains(&p) => bail!(UsageError(format!(
            "no event of policy `{p}`: the events are of {}",
            list_or_none(&names)
        ))),
        (Some(p), _) => p,
        (None, [one]) => one,
        (None, []) => bail!(UsageError(format!(
            "no event lines in {}: give the JSON lines that `egressd run`, `egressd events` or `exec --events-json` write",
            events.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))),
        (None, many) => bail!(UsageError(format!(
            "the events are of several policies ({}): choose one with --policy",
            many.join(", ")
        ))),
    };
    let mut o = Observed::default();
    for v in &all {
        o.add(v, Some(only));
    }
    let shown: Vec<String> = events.iter().map(|p| p.display().to_string()).collect();
    Ok((
        o,
        format!("the events of policy `{only}` in {}", shown.join(", ")),
    ))
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "no policy".into()
    } else {
        names.join(", ")
    }
}
