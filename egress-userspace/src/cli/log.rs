//! egressd's own log on stderr: text (coloured only on a terminal) or JSON
//! lines, as `--log-format` says.

use std::sync::atomic::{AtomicBool, Ordering};

/// `--log-format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Whether the log is JSON (`last_words` writes the same way).
static JSON: AtomicBool = AtomicBool::new(false);

/// Logs on stderr at `level` (or `EGRESSD_LOG`).
pub fn init(level: &str, format: Format) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESSD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        Format::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        Format::Json => {
            JSON.store(true, Ordering::Relaxed);
            log.json().flatten_event(true).init()
        }
    }
}

/// Writes why egressd failed, as its last line on stderr.
pub fn last_words(e: &anyhow::Error) {
    if JSON.load(Ordering::Relaxed) {
        let line = serde_json::json!({
            "timestamp": crate::report::describe::timestamp(std::time::SystemTime::now()),
            "level": "ERROR",
            "message": format!("{e:#}"),
        });
        eprintln!("{line}");
    } else {
        eprintln!("egressd: {e:#}");
    }
}
