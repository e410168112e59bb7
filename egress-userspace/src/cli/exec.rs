//! `egressd exec`: run one command in a fresh cgroup under a policy, print
//! what was denied when it ends, exit with its status.

use std::{ffi::OsString, net::SocketAddr, os::unix::process::ExitStatusExt, path::PathBuf};

use anyhow::Result;

use crate::{
    confine::spawn::lookup_user,
    learn::learn_into,
    policy::{
        dest::{parse_allow, parse_listen},
        error::UsageError,
        load::load_file,
        unix_writers::{warning, writable_dirs},
        DnsSettings, Mode, Policy,
    },
    runtime::session::{self, Session},
};

/// Run one command in a fresh cgroup under a policy; summarise denials.
#[derive(clap::Args)]
pub struct Exec {
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
    /// netlink: every netlink protocol, not only NETLINK_ROUTE, ...); IP
    /// and UNIX sockets are always allowed. Repeatable.
    #[arg(long, value_name = "FAMILY")]
    allow_family: Vec<String>,
    /// Let the command use io_uring (which can make sockets out of the
    /// family filter's sight).
    #[arg(long)]
    allow_io_uring: bool,
    /// Let the command make user and network namespaces (in a user
    /// namespace of its own it could, for one, mount another socket over
    /// a UNIX name its policy allows).
    #[arg(long)]
    allow_namespaces: bool,
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
    pub verbose: bool,
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
}

impl Exec {
    /// Runs the command; its exit code (or 128 + the signal that ended it).
    pub async fn call(self) -> Result<i32> {
        if self.command.is_empty() {
            return Err(UsageError(
                "no command given: egressd exec [OPTIONS] -- COMMAND [ARGS...]".into(),
            )
            .into());
        }
        super::usage::check_ring_bytes(self.ring_buffer_bytes)?;
        let policy = build_policy(&self)?;
        let user = self.user.as_deref().map(lookup_user).transpose()?;
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, gid) = user.unwrap_or_else(|| unsafe { (libc::geteuid(), libc::getegid()) });
        if uid == 0 {
            eprintln!("egressd: warning: the command runs as root, and root can leave its cgroup or detach egressd: use --user");
        }
        check_unix_writers(&policy, uid, gid)?;
        let audit = policy.mode == Mode::Audit;
        let session = Session {
            command: self.command.clone(),
            user,
            events_json: self.events_json.clone(),
            learning: self.learn.is_some(),
            ring_bytes: self.ring_buffer_bytes,
        };
        let ended = session::run(policy, &session).await?;
        ended.summary.print(audit);
        if let (Some(file), Some(observed)) = (&self.learn, ended.observed) {
            if ended.summary.lost > 0 {
                eprintln!(
                    "egressd: warning: {} event(s) were lost, so {} may miss what they saw: learn again (it adds to the file), with a larger --ring-buffer-bytes",
                    ended.summary.lost,
                    file.display()
                );
            }
            let outcome = learn_into(
                file,
                &observed,
                &format!("`egressd exec --learn` of `{}`", shown(&self.command)),
            )?;
            super::learn::print(&outcome, file, observed.events);
        }
        Ok(exit_code(ended.status))
    }
}

/// Refuses a UNIX name the command itself could redirect (it can write a
/// directory on the name's way); warns of names others could.
fn check_unix_writers(policy: &Policy, uid: u32, gid: u32) -> Result<(), UsageError> {
    for name in &policy.channels.unix {
        for w in writable_dirs(name) {
            if uid != 0 && w.writers.iter().any(|who| who.includes(uid, gid)) {
                return Err(UsageError(format!(
                    "UNIX name `{name}`: the command (uid {uid}) can write {}, so it could make the name a symbolic link to any socket (names are matched as written): name a socket in a directory the command cannot write",
                    w.dir.display()
                )));
            }
            eprintln!("egressd: warning: {}", warning(name, &w));
        }
    }
    Ok(())
}

/// A command line as a policy file's comment shows it (up to 100
/// characters).
fn shown(command: &[OsString]) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut line = words.join(" ");
    if let Some((cut, _)) = line.char_indices().nth(100) {
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

/// The policy `exec` runs under: a file, or the `--allow` options.
fn build_policy(opts: &Exec) -> Result<Policy> {
    let mut policy = match (&opts.learn, &opts.policy) {
        (Some(_), Some(_)) => {
            return Err(UsageError(
                "--learn FILE runs under the policy in FILE (if there is one) and adds to it: give no --policy".into(),
            )
            .into())
        }
        (Some(_), None) if !opts.allow.is_empty() => {
            return Err(UsageError(
                "--learn FILE runs under the policy in FILE (if there is one): give no --allow".into(),
            )
            .into())
        }
        (Some(file), None) if file.exists() => load_file(file)?,
        (Some(_), None) => Policy {
            rules: Vec::new(),
            ..command_line_policy(Vec::new())
        },
        (None, Some(file)) => {
            if !opts.allow.is_empty() {
                return Err(UsageError("give either --policy or --allow, not both".into()).into());
            }
            load_file(file)?
        }
        (None, None) => {
            let rules = opts
                .allow
                .iter()
                .map(|a| parse_allow(a).map_err(|e| UsageError(format!("--allow {e}"))))
                .collect::<Result<Vec<_>, UsageError>>()?;
            command_line_policy(rules)
        }
    };
    crate::compile::load::check(&policy)?;
    if opts.audit || opts.learn.is_some() {
        policy.mode = Mode::Audit;
    }
    if let Some(r) = opts.resolver {
        policy.dns.upstream = vec![r];
    }
    for f in &opts.allow_family {
        let family = f
            .parse()
            .map_err(|e| UsageError(format!("--allow-family {e}")))?;
        policy.channels.families.push(family);
    }
    policy.channels.io_uring |= opts.allow_io_uring;
    policy.channels.namespaces |= opts.allow_namespaces;
    for u in &opts.allow_unix {
        let name = u
            .parse()
            .map_err(|e| UsageError(format!("--allow-unix {e}")))?;
        policy.channels.unix.push(name);
    }
    for l in &opts.listen {
        let listen = parse_listen(l).map_err(|e| UsageError(format!("--listen {e}")))?;
        policy.listen.push(listen);
    }
    Ok(policy)
}

/// The policy of `--allow` options.
fn command_line_policy(rules: Vec<crate::policy::Rule>) -> Policy {
    Policy {
        name: "exec".into(),
        mode: Mode::Enforce,
        cgroups: Vec::new(),
        pods: Vec::new(),
        rules,
        dns: DnsSettings::default(),
        listen: Vec::new(),
        channels: Default::default(),
        source: "command line".into(),
    }
}

/// Exit code for a child's status: its code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
