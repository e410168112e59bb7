//! `egressd learn`: a policy from event lines (a daemon's audit events, or
//! `exec --events-json`).

use std::{io::Write, path::Path, path::PathBuf};

use anyhow::Result;

use crate::learn::{comment_text, learn_into, read_events, Outcome};

/// Learn a policy from event lines (a daemon's audit events, or
/// `exec --events-json`): add a rule for each name and address reached.
#[derive(clap::Args)]
pub struct Learn {
    /// Files of JSON event lines (`-` for standard input).
    #[arg(required = true)]
    events: Vec<PathBuf>,
    /// The policy file to write, or to add the rules to if it exists.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// Learn from this policy's events only (needed when the events
    /// are of several).
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
}

impl Learn {
    pub fn call(self) -> Result<()> {
        let (observed, source) = read_events(&self.events, self.policy.as_deref())?;
        let outcome = learn_into(&self.output, &observed, &source)?;
        print(&outcome, &self.output, observed.events);
        Ok(())
    }
}

/// Says on stderr what a learning run added to `file`, from `events`
/// events.
pub fn print(outcome: &Outcome, file: &Path, events: u64) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "egressd: learned {} rule(s) into {} from {events} event(s)",
        outcome.added,
        file.display(),
    );
    for n in &outcome.notes {
        let _ = writeln!(err, "egressd: note: {}", comment_text(n));
    }
    for w in &outcome.warnings {
        let _ = writeln!(err, "egressd: {w}");
    }
}
