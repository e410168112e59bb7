//! The `egressd` command line. Exit codes: 0 success; 1 a runtime failure;
//! 2 bad usage or an unusable policy; `exec` exits with its command's status.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use egressd::{
    cli::{check, exec, run as daemon},
    kernel::pins,
    policy::error::PolicyError,
};

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
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Whether the log is JSON (`failed` writes its last line the same way).
static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How `egressd events` prints events.
#[derive(Clone, Copy, clap::ValueEnum)]
enum EventFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce policies on their cgroups; deny events as JSON lines on stdout.
    Run {
        /// A policy file, or a directory of *.yaml policy files.
        #[arg(long, short)]
        policy: PathBuf,
        /// Where to serve Prometheus metrics.
        #[arg(long, default_value = daemon::DEFAULT_METRICS_ADDR)]
        metrics_addr: SocketAddr,
        /// Serve no metrics.
        #[arg(long)]
        no_metrics: bool,
        /// Name of this daemon's pin directory under <bpffs>/egressd (to run
        /// several daemons side by side).
        #[arg(long, default_value = daemon::INSTANCE)]
        instance: String,
        /// Size of the deny-event ring buffer in bytes (power of two; default
        /// 4 MiB). Counters stay exact when it overflows.
        #[arg(long, value_name = "BYTES")]
        ring_buffer_bytes: Option<u32>,
        /// Kubernetes: govern this node's pods, watched through the API
        /// server (KUBECONFIG, ~/.kube/config, or the pod's service
        /// account), for policies with `pods:` selectors. Pods are refused
        /// everything until classified.
        #[arg(long, requires = "node")]
        kubernetes: bool,
        /// Kubernetes: the API server's kubeconfig (default: KUBECONFIG,
        /// ~/.kube/config, or the pod's service account).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Kubernetes: the name of this node.
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
        /// Kubernetes: egressd's own pod's uid (never held as pending).
        #[arg(long, env = "POD_UID", value_name = "UID")]
        pod_uid: Option<String>,
        /// Kubernetes: once the node's pods are governed, remove the
        /// NoSchedule taint with this key from the node.
        #[arg(long, value_name = "KEY")]
        ready_taint: Option<String>,
        /// Kubernetes: the directory that holds kubelet's kubepods cgroup
        /// (kubepods.slice, <cgroupRoot>-kubepods.slice or kubepods),
        /// relative to the cgroup2 root (default: searched for, 4 levels
        /// deep).
        #[arg(long, value_name = "PATH")]
        kubepods_root: Option<PathBuf>,
        /// Kubernetes: where egressd keeps what it decided for each pod, to
        /// apply after a restart or a reboot before the API server answers
        /// (it must outlive a reboot).
        #[arg(long, value_name = "DIR", default_value = daemon::STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Run one command in a fresh cgroup under a policy; summarise denials.
    Exec {
        /// Policy file (its `cgroups` are ignored).
        #[arg(long, short)]
        policy: Option<PathBuf>,
        /// An allowed destination: HOST:PORT, IP:PORT, CIDR:PORT, [IPv6]:PORT;
        /// PORT may be LOW-HIGH or *; add /udp or /any for UDP. Repeatable.
        #[arg(long, short, value_name = "DEST")]
        allow: Vec<String>,
        /// Allow everything, but report what would have been denied.
        #[arg(long)]
        audit: bool,
        /// Resolver for hostnames (default: the system's, /etc/resolv.conf).
        #[arg(long, value_name = "IP:PORT")]
        resolver: Option<SocketAddr>,
        /// Also write every deny event as a JSON line to this file.
        #[arg(long, value_name = "FILE")]
        events_json: Option<PathBuf>,
        /// Run the command as this user (name or uid) and its primary group,
        /// without the privileges to leave its cgroup.
        #[arg(long, short, value_name = "USER")]
        user: Option<String>,
        /// Let the command make sockets of this family too (vsock, packet,
        /// ...); IP, UNIX and netlink sockets are always allowed. Repeatable.
        #[arg(long, value_name = "FAMILY")]
        allow_family: Vec<String>,
        /// Let the command use io_uring (which can make sockets out of the
        /// family filter's sight).
        #[arg(long)]
        allow_io_uring: bool,
        /// Let the command connect or send to this UNIX socket: a path, a
        /// directory ending in / (every socket beneath it), or @name (an
        /// abstract name). Repeatable.
        #[arg(long, value_name = "NAME")]
        allow_unix: Vec<String>,
        /// Let the command listen on PORT (LOW-HIGH; add /udp or /any)
        /// on addresses other than loopback. Repeatable.
        #[arg(long, value_name = "PORT")]
        listen: Vec<String>,
        /// Log what egressd does (it shares stderr with the command, so by
        /// default only warnings and the summary).
        #[arg(long, short)]
        verbose: bool,
        /// Size of the deny-event ring buffer in bytes (power of two; default
        /// 4 MiB). The summary says how many events it lost, if any.
        #[arg(long, value_name = "BYTES")]
        ring_buffer_bytes: Option<u32>,
        /// Learn a policy into FILE: run the command with everything
        /// allowed (audit mode, under FILE's rules if it exists), then add
        /// a rule for each name and address it reached.
        #[arg(long, value_name = "FILE")]
        learn: Option<PathBuf>,
        /// The command and its arguments (after --).
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Learn a policy from event lines (a daemon's audit events, or
    /// `exec --events-json`): add a rule for each name and address reached.
    Learn {
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
    },
    /// Validate policy files (a directory: its *.yaml files), alone and
    /// together (names, cgroups, overlapping pod selectors), and warn about
    /// broad rules.
    Check {
        #[arg(required = true, value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Fail on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// What the running daemon governs and enforces, with its counters.
    Status {
        /// The daemon's instance name.
        #[arg(long, default_value = daemon::INSTANCE)]
        instance: String,
        /// Print the daemon's JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon load its policy files again, and wait until it
    /// has: exits 1 with the daemon's reason if the running policies stay in
    /// force (systemd's ExecReload=).
    Reload {
        #[arg(long, default_value = daemon::INSTANCE)]
        instance: String,
    },
    /// A live tail of the running daemon's deny and audit events (JSON lines).
    Events {
        #[arg(long, default_value = daemon::INSTANCE)]
        instance: String,
        /// Only this policy's events.
        #[arg(long)]
        policy: Option<String>,
        /// json (one object a line, as `run` prints them) or text (one
        /// compact line for people).
        #[arg(long, value_enum, default_value = "json")]
        format: EventFormat,
    },
    /// Why a destination (IP, IP:PORT, [IPv6]:PORT, /udp; or a DNS name) is
    /// allowed or refused now, by each policy of a running daemon.
    Explain {
        destination: String,
        #[arg(long, default_value = daemon::INSTANCE)]
        instance: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if a cgroup is governed by a policy now, 1 if not: for a unit
    /// to run before its agent starts (ExecStartPre=).
    Governed {
        /// The policy that must govern it.
        #[arg(long)]
        policy: String,
        /// The cgroup, relative to the cgroup2 root.
        #[arg(long, conflicts_with = "self_", required_unless_present = "self_")]
        cgroup: Option<PathBuf>,
        /// The cgroup of this command itself (as ExecStartPre= runs in the
        /// unit's cgroup).
        #[arg(long = "self", id = "self_")]
        self_: bool,
        /// Keep checking for up to this many seconds.
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
    },
    /// Print a shell completion script (bash: put it in
    /// /usr/share/bash-completion/completions/egressd).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, egressd(8), in roff (for packaging).
    #[command(hide = true)]
    Manpage,
    /// Remove pinned programs: everything egressd attached (stops enforcement).
    Detach {
        /// Only this instance (`run`, or `exec-PID`).
        #[arg(long)]
        instance: Option<String>,
        /// Only this policy's programs (in every instance, or in --instance).
        #[arg(long)]
        policy: Option<String>,
    },
}

/// Logs on stderr at `level` (or `EGRESSD_LOG`): text, coloured only on a
/// terminal, or JSON lines.
fn init_logging(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESSD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => {
            LOG_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
            log.json().flatten_event(true).init()
        }
    }
}

fn failed(e: anyhow::Error) -> ExitCode {
    if LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        let line = serde_json::json!({
            "timestamp": egressd::report::describe::timestamp(std::time::SystemTime::now()),
            "level": "ERROR",
            "message": format!("{e:#}"),
        });
        eprintln!("{line}");
    } else {
        eprintln!("egressd: {e:#}");
    }
    if e.downcast_ref::<PolicyError>().is_some()
        || e.downcast_ref::<egressd::cli::usage::UsageError>()
            .is_some()
    {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // exec shares its stderr with the command: only warnings, unless -v.
    init_logging(
        match &cli.command {
            Command::Exec { verbose: false, .. } => "warn",
            _ => "info",
        },
        cli.log_format,
    );
    match cli.command {
        Command::Run {
            policy,
            metrics_addr,
            no_metrics,
            instance,
            ring_buffer_bytes,
            kubernetes,
            kubeconfig,
            node,
            pod_uid,
            ready_taint,
            kubepods_root,
            state_dir,
        } => {
            let opts = daemon::RunOptions {
                policy,
                metrics_addr: (!no_metrics).then_some(metrics_addr),
                instance,
                ring_bytes: ring_buffer_bytes,
                kubernetes: node.filter(|_| kubernetes).map(|node| daemon::KubeOptions {
                    node,
                    kubeconfig,
                    kubepods_root,
                    own_uid: pod_uid,
                    ready_taint,
                    state_dir,
                }),
            };
            match runtime().block_on(daemon::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e),
            }
        }
        Command::Exec {
            policy,
            allow,
            audit,
            resolver,
            events_json,
            user,
            allow_family,
            allow_io_uring,
            allow_unix,
            listen,
            command,
            ring_buffer_bytes,
            learn,
            ..
        } => {
            let opts = exec::ExecOptions {
                policy,
                allow,
                audit,
                resolver,
                events_json,
                user,
                families: allow_family,
                io_uring: allow_io_uring,
                unix: allow_unix,
                listen,
                ring_bytes: ring_buffer_bytes,
                learn,
                command,
            };
            match runtime().block_on(exec::exec(opts)) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => failed(e),
            }
        }
        Command::Learn {
            events,
            output,
            policy,
        } => match egressd::cli::learn::learn(&events, &output, policy.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failed(e),
        },
        Command::Check { files, strict } => {
            if check::check(&files, strict) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Command::Status { instance, json } => {
            match runtime().block_on(egressd::report::control::print_status(&instance, json)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e),
            }
        }
        Command::Reload { instance } => {
            match runtime().block_on(egressd::report::control::reload(&instance)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e),
            }
        }
        Command::Events {
            instance,
            policy,
            format,
        } => {
            let request = match policy {
                Some(p) => format!("events {p}"),
                None => "events".into(),
            };
            let show = |line: &str| match format {
                EventFormat::Json => line.to_string(),
                EventFormat::Text => serde_json::from_str(line)
                    .map(|v| egressd::report::describe::compact(&v))
                    .unwrap_or_else(|_| line.to_string()),
            };
            match runtime().block_on(egressd::report::control::ask_with(
                &instance, &request, show,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e),
            }
        }
        Command::Explain {
            destination,
            instance,
            json,
        } => match runtime().block_on(egressd::report::control::print_explain(
            &instance,
            &destination,
            json,
        )) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failed(e),
        },
        Command::Governed {
            policy,
            cgroup,
            self_,
            wait,
        } => {
            let rel = match (cgroup, self_) {
                (Some(c), _) => Ok(PathBuf::from(c.to_string_lossy().trim_start_matches('/'))),
                (None, _) => egressd::cli::governed::own_cgroup(),
            };
            let wait = std::time::Duration::from_secs_f64(wait.max(0.0));
            match rel.and_then(|r| egressd::cli::governed::check_waiting(&r, &policy, wait)) {
                Ok(by) => {
                    println!("governed by `{policy}` (at {})", by.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("egressd: NOT GOVERNED: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "egressd", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpage => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cmd)
                .section("8")
                .render(&mut std::io::stdout())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e.into()),
            }
        }
        Command::Detach { instance, policy } => {
            let names = instance.iter().chain(policy.iter());
            if let Some(bad) = names.clone().find(|n| !daemon::valid_instance(n)) {
                eprintln!("egressd: `{bad}`: an instance or policy name is letters, digits, `.`, `_` and `-`");
                return ExitCode::from(2);
            }
            let removed = match (instance, policy) {
                (i, Some(p)) => pins::remove_policy(i.as_deref(), &p).and_then(|n| {
                    if n == 0 {
                        anyhow::bail!("no pinned programs of policy `{p}`")
                    }
                    Ok(())
                }),
                (Some(i), None) => pins::instance_dir(&i).and_then(|d| pins::remove_tree(&d)),
                (None, None) => pins::root().and_then(|d| pins::remove_tree(&d)),
            };
            match removed {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e),
            }
        }
    }
}
