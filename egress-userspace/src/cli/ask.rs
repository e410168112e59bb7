//! The commands that ask a running daemon through its control socket:
//! `status`, `reload`, `events`, `explain`.

use anyhow::Result;

use crate::{
    report::{control, describe::compact},
    runtime::daemon::INSTANCE,
};

/// What the running daemon governs and enforces, with its counters.
#[derive(clap::Args)]
pub struct Status {
    /// The daemon's instance name.
    #[arg(long, default_value = INSTANCE)]
    instance: String,
    /// Print the daemon's JSON document.
    #[arg(long)]
    json: bool,
}

impl Status {
    pub async fn call(self) -> Result<()> {
        control::print_status(&self.instance, self.json).await
    }
}

/// Make the running daemon load its policy files again, and wait until it
/// has: exits 1 with the daemon's reason if the running policies stay in
/// force (systemd's ExecReload=).
#[derive(clap::Args)]
pub struct Reload {
    #[arg(long, default_value = INSTANCE)]
    instance: String,
}

impl Reload {
    pub async fn call(self) -> Result<()> {
        control::reload(&self.instance).await
    }
}

/// How `egressd events` prints events.
#[derive(Clone, Copy, clap::ValueEnum)]
enum EventFormat {
    Json,
    Text,
}

/// A live tail of the running daemon's deny and audit events (JSON lines).
#[derive(clap::Args)]
pub struct Events {
    #[arg(long, default_value = INSTANCE)]
    instance: String,
    /// Only this policy's events.
    #[arg(long)]
    policy: Option<String>,
    /// json (one object a line, as `run` prints them) or text (one
    /// compact line for people).
    #[arg(long, value_enum, default_value = "json")]
    format: EventFormat,
}

impl Events {
    pub async fn call(self) -> Result<()> {
        let request = match &self.policy {
            Some(p) => format!("events {p}"),
            None => "events".into(),
        };
        let format = self.format;
        let show = move |line: &str| match format {
            EventFormat::Json => line.to_string(),
            EventFormat::Text => serde_json::from_str(line)
                .map(|v| compact(&v))
                .unwrap_or_else(|_| line.to_string()),
        };
        control::ask_with(&self.instance, &request, show).await
    }
}

/// Why a destination (IP, IP:PORT, [IPv6]:PORT, /udp; or a DNS name) is
/// allowed or refused now, by each policy of a running daemon.
#[derive(clap::Args)]
pub struct Explain {
    destination: String,
    #[arg(long, default_value = INSTANCE)]
    instance: String,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
}

impl Explain {
    pub async fn call(self) -> Result<()> {
        control::print_explain(&self.instance, &self.destination, self.json).await
    }
}
