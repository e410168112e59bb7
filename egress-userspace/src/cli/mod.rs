//! The command line: one module per command, each with its options and a
//! `call` that parses what is left, calls the layers below, prints and
//! returns. Exit codes: 0 success; 1 a runtime failure; 2 bad usage or an
//! unusable policy; `exec` exits with its command's status.

mod ask;
mod check;
mod detach;
mod exec;
mod governed;
mod learn;
mod log;
mod run;
mod usage;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::policy::error::{PolicyError, UsageError};

/// `egressd --version`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EGRESSD_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "egressd",
    version = VERSION,
    about = "Default-deny egress for agents, enforced in the kernel"
)]
struct Cli {
    /// How egressd writes its own log on stderr: text, or one JSON object
    /// a line (for log collectors). Events on stdout are JSON either way.
    #[arg(long, global = true, value_enum, default_value_t = log::Format::Text)]
    log_format: log::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::Run),
    Exec(exec::Exec),
    Learn(learn::Learn),
    Check(check::Check),
    Status(ask::Status),
    Reload(ask::Reload),
    Events(ask::Events),
    Explain(ask::Explain),
    Governed(governed::Governed),
    /// Print a shell completion script (bash: put it in
    /// /usr/share/bash-completion/completions/egressd).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, egressd(8), in roff (for packaging).
    #[command(hide = true)]
    Manpage,
    Detach(detach::Detach),
}

/// Parses the command line, runs the command, and says how it ended.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // exec shares its stderr with the command: only warnings, unless -v.
    let level = match &cli.command {
        Command::Exec(e) if !e.verbose => "warn",
        _ => "info",
    };
    log::init(level, cli.log_format);
    let done = |r: anyhow::Result<()>| r.map_or_else(failed, |()| ExitCode::SUCCESS);
    match cli.command {
        Command::Run(c) => done(runtime().block_on(c.call())),
        Command::Exec(c) => match runtime().block_on(c.call()) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => failed(e),
        },
        Command::Learn(c) => done(c.call()),
        Command::Check(c) => match c.call() {
            true => ExitCode::SUCCESS,
            false => ExitCode::from(2),
        },
        Command::Status(c) => done(runtime().block_on(c.call())),
        Command::Reload(c) => done(runtime().block_on(c.call())),
        Command::Events(c) => done(runtime().block_on(c.call())),
        Command::Explain(c) => done(runtime().block_on(c.call())),
        Command::Governed(c) => c.call(),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "egressd",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Manpage => done(
            clap_mangen::Man::new(Cli::command())
                .section("8")
                .render(&mut std::io::stdout())
                .map_err(Into::into),
        ),
        Command::Detach(c) => done(c.call()),
    }
}

/// Says why a command failed (as the log does), and its exit code: 2 for
/// a policy or a command line that cannot work, else 1.
fn failed(e: anyhow::Error) -> ExitCode {
    log::last_words(&e);
    if e.downcast_ref::<PolicyError>().is_some() || e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("starting the async runtime")
}
