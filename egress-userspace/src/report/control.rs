//! The running daemon's control socket, for `egressd status` and `egressd
//! events`: a Unix socket only root can use (mode 0600 in a 0700 directory,
//! and the peer's uid checked).
//!
//! Protocol: the client sends one line: `status`, `events [POLICY]`,
//! `explain DEST` or `reload`. For `status`, `explain` and `reload` the
//! daemon answers with one JSON document (`reload` once the reload is done:
//! `{"reloaded":true}` or `{"error":"..."}`); for `events` it streams one
//! JSON line per deny or audit event until the client leaves.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
};

use crate::{
    kernel::counters::{proto_name, reason_name, verdict_name},
    state::allowlist::Allowlist,
};

/// Where the control socket of daemon instance `instance` lives.
pub fn socket_path(instance: &str) -> PathBuf {
    PathBuf::from("/run/egressd").join(format!("{instance}.sock"))
}

/// Events as JSON lines, for `events` clients.
pub type EventFeed = broadcast::Sender<Value>;

/// A `reload` request for the daemon's loop, with where to send its
/// outcome (the error, if the running policies stay in force).
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// What the control socket's clients reach in the daemon.
#[derive(Clone)]
pub struct Handles {
    pub allowlist: Arc<Mutex<Allowlist>>,
    pub feed: EventFeed,
    pub reload: mpsc::Sender<ReloadRequest>,
}

/// What `egressd status` shows.
pub fn status(allowlist: &Allowlist) -> Value {
    let governed = &allowlist.governance;
    let policies: Vec<Value> = allowlist
        .installed
        .iter()
        .map(|p| {
            let (v4, v6) = allowlist.tables.table_len(p.table);
            let counts = allowlist.counts(p.id).ok();
            let counters: Vec<Value> = counts
                .as_ref()
                .map(|c| {
                    c.counts
                        .iter()
                        .map(|c| {
                            json!({
                                "verdict": verdict_name(c.verdict),
                                "protocol": proto_name(c.proto),
                                "reason": reason_name(c.reason),
                                "count": c.value,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let view = p.view();
            let rules: Vec<Value> = allowlist
                .rule_counts(p.id)
                .unwrap_or_default()
                .into_iter()
                .map(|(label, s)| {
                    let labels = crate::state::rule_slots::labels(&view.policy);
                    let budget = labels
                        .iter()
                        .position(|l| *l == label)
                        .and_then(|i| view.policy.rules[i].budget)
                        .map(|b| json!({"bytes": b.bytes, "window_seconds": b.window.as_secs()}));
                    json!({
                        "rule": label,
                        "connections": s.connections,
                        "datagrams": s.datagrams,
                        "bytes_out": s.bytes_out,
                        "bytes_in": s.bytes_in,
                        "over_budget": s.over_budget,
                        "names_refused": s.names_refused,
                        "budget": budget,
                    })
                })
                .collect();
            json!({
                "name": view.policy.name,
                "mode": view.policy.mode.to_string(),
                "source": view.policy.source,
                "cgroups": paths_and_ids(governed.cgroups.get(&view.policy.name)),
                "pods": paths_and_ids(governed.pods.get(&view.policy.name)),
                "entries": {"ipv4": v4, "ipv6": v6},
                "dns_proxy_port": p.dns_port,
                "admitted_names": p.admitted.len(),
                "allowed": counts.as_ref().map_or(0, |c| c.total(egress_common::verdict::ALLOWED)),
                "denied": counts.as_ref().map_or(0, |c| c.total(egress_common::verdict::DENIED)),
                "audited": counts.as_ref().map_or(0, |c| c.total(egress_common::verdict::AUDITED)),
                "events_lost": counts.as_ref().map_or(0, |c| c.lost),
                "counters": counters,
                "rules": rules,
            })
        })
        .collect();
    let unix = allowlist.unix_hooks();
    let families = allowlist.family_hook();
    let open: Vec<Value> = open_channels(unix.err(), families.err())
        .into_iter()
        .map(|(channel, what)| json!({"channel": channel, "what_to_do": what}))
        .collect();
    let unix = match unix {
        Ok(()) => "judged: connect and addressed sends to UNIX sockets reach only the names in channels.unix (cgroup connect_unix and sendmsg_unix)".to_string(),
        Err(why) => format!("not judged: {why}"),
    };
    let families = match families {
        Ok(()) => "judged: socket() of a family other than UNIX and IP, or of a netlink protocol other than NETLINK_ROUTE, is refused unless channels.families names it (BPF LSM socket_create)".to_string(),
        Err(why) => format!("not judged: {why}"),
    };
    json!({
        "policies": policies,
        "pods_released": governed.released,
        "pods_held": governed.held,
        "unix_sockets": unix,
        "socket_families": families,
        "channels_not_closed": open,
    })
}

/// `[{"path", "id"}]` of governed cgroups (none: empty).
fn paths_and_ids(cgroups: Option<&Vec<(std::path::PathBuf, u64)>>) -> Vec<Value> {
    cgroups
        .into_iter()
        .flatten()
        .map(|(path, id)| json!({"path": path, "id": id}))
        .collect()
}

/// Channels `egressd run` does not close for the cgroups it governs, and
/// what closes them instead (see the Channels table in docs/security-model.md); `unix`,
/// `families`: why those are not judged, if they are not.
fn open_channels(unix: Option<&str>, families: Option<&str>) -> Vec<(&'static str, String)> {
    let mut open = Vec::new();
    if let Some(why) = families {
        open.push((
            "socket families other than IP and UNIX (AF_VSOCK, AF_PACKET, ...), and netlink protocols other than NETLINK_ROUTE",
            format!("{why}: restrict them where the agent starts (RestrictAddressFamilies= in its unit, deploy/kubernetes/seccomp/egressd-agent.json for pods); egressd exec does"),
        ));
    }
    open.push((
        "io_uring",
        "no cgroup program sees the sockets it makes; its connects and sends still meet the hooks: restrict it where the agent starts (SystemCallFilter=, the pods' seccomp profile); egressd exec does".to_string(),
    ));
    if let Some(why) = unix {
        open.push((
            "UNIX sockets to processes outside the cgroup",
            format!("{why}: run a kernel with them, or keep local daemons' sockets out of the agent's reach (a mount namespace, file permissions)"),
        ));
    }
    open.push((
        "processes of the agent's uid outside the cgroup (ptrace, pidfd_getfd)",
        "give each agent a uid no other process runs under (DynamicUser=yes); egressd exec closes this with Landlock".to_string(),
    ));
    open
}

/// Binds the control socket (replacing a stale one), root-only.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let dir = path.parent().context("socket path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves clients until the task is dropped.
pub async fn serve(listener: UnixListener, handles: Handles) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let root = conn.peer_cred().is_ok_and(|c| c.uid() == 0);
        if !root {
            continue; // dropped: only root may ask
        }
        let handles = handles.clone();
        tokio::spawn(async move {
            let _ = client(conn, handles).await;
        });
    }
}

async fn client(conn: UnixStream, handles: Handles) -> Result<()> {
    let Handles {
        allowlist,
        feed,
        reload,
    } = handles;
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let mut words = line.split_whitespace();
    match words.next() {
        Some("status") => {
            let doc = status(
                &allowlist
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            write.write_all(format!("{doc}\n").as_bytes()).await?;
        }
        Some("events") => {
            let only = words.next().map(str::to_string);
            let mut rx = feed.subscribe();
            loop {
                let e = match rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => json!({"lagged": n}),
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                if only
                    .as_deref()
                    .is_some_and(|p| e["policy"] != p && e.get("lagged").is_none())
                {
                    continue;
                }
                write.write_all(format!("{e}\n").as_bytes()).await?;
            }
        }
        Some("explain") => {
            let dest = words.next().unwrap_or("");
            let doc = crate::report::explain::explain(
                &allowlist
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                dest,
            );
            write.write_all(format!("{doc}\n").as_bytes()).await?;
        }
        Some("reload") => {
            let (tx, rx) = oneshot::channel();
            let doc = if reload.send(tx).await.is_err() {
                json!({"error": "the daemon is stopping"})
            } else {
                match rx.await {
                    Ok(Ok(())) => json!({"reloaded": true}),
                    Ok(Err(e)) => json!({"error": e}),
                    Err(_) => json!({"error": "the daemon stopped before the reload was done"}),
                }
            };
            write.write_all(format!("{doc}\n").as_bytes()).await?;
        }
        _ => write
            .write_all(
                b"{\"error\":\"ask `status`, `events [POLICY]`, `explain DEST` or `reload`\"}\n",
            )
            .await?,
    }
    Ok(())
}

/// `egressd explain DEST`: the daemon's answer, as JSON or as text.
pub async fn print_explain(instance: &str, dest: &str, as_json: bool) -> Result<()> {
    let text = request(instance, &format!("explain {dest}")).await?;
    let doc: Value = serde_json::from_str(&text).context("the daemon's answer is not JSON")?;
    if let Some(e) = doc["error"].as_str() {
        bail!("{e}");
    }
    if as_json {
        println!("{doc}");
    } else {
        print!("{}", crate::report::explain::text(&doc));
    }
    Ok(())
}

/// `egressd reload`: the daemon loads its policy files again; returns once
/// it has, with the daemon's error if the running policies stay in force.
pub async fn reload(instance: &str) -> Result<()> {
    let text = request(instance, "reload").await?;
    let doc: Value = serde_json::from_str(&text).context("the daemon's answer is not JSON")?;
    match doc["error"].as_str() {
        Some(e) => bail!("reload failed: {e}"),
        None => Ok(()),
    }
}

/// `egressd status`: the daemon's status, as JSON or as a short table.
pub async fn print_status(instance: &str, as_json: bool) -> Result<()> {
    let text = request(instance, "status").await?;
    if as_json {
        print!("{text}");
        return Ok(());
    }
    let doc: Value = serde_json::from_str(&text).context("the daemon's answer is not JSON")?;
    for p in doc["policies"].as_array().into_iter().flatten() {
        println!(
            "policy {} ({}, from {}): {} IPv4 and {} IPv6 entries, DNS proxy port {}",
            p["name"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("?"),
            p["source"].as_str().unwrap_or("?"),
            p["entries"]["ipv4"],
            p["entries"]["ipv6"],
            p["dns_proxy_port"],
        );
        for c in p["cgroups"].as_array().into_iter().flatten() {
            println!(
                "  governs {} (id {})",
                c["path"].as_str().unwrap_or("?"),
                c["id"]
            );
        }
        for c in p["pods"].as_array().into_iter().flatten() {
            println!(
                "  governs pod {} (id {})",
                c["path"].as_str().unwrap_or("?"),
                c["id"]
            );
        }
        println!(
            "  allowed {}, denied {}, audited {}, events lost {}",
            p["allowed"], p["denied"], p["audited"], p["events_lost"]
        );
        for r in p["rules"].as_array().into_iter().flatten() {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            let stats = egress_common::RuleStats {
                connections: n("connections"),
                datagrams: n("datagrams"),
                bytes_out: n("bytes_out"),
                bytes_in: n("bytes_in"),
                over_budget: n("over_budget"),
                names_refused: n("names_refused"),
            };
            let line = super::describe::rule_line(&stats).unwrap_or_else(|| "nothing yet".into());
            let budget = match r["budget"].as_object() {
                Some(b) => format!(
                    " (budget {} per {}s)",
                    crate::policy::budget::human(b["bytes"].as_u64().unwrap_or(0)),
                    b["window_seconds"]
                ),
                None => String::new(),
            };
            println!(
                "  rule {}{budget}: {line}",
                r["rule"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(released) = doc["pods_released"].as_array().filter(|r| !r.is_empty()) {
        println!("pods released (no policy selects them): {}", released.len());
    }
    for held in doc["pods_held"].as_array().into_iter().flatten() {
        println!(
            "pod held, refused everything until it is restarted (its policy no longer selects it): {}",
            held.as_str().unwrap_or("?")
        );
    }
    println!(
        "UNIX sockets: {}",
        doc["unix_sockets"].as_str().unwrap_or("?")
    );
    println!(
        "socket families: {}",
        doc["socket_families"].as_str().unwrap_or("?")
    );
    for c in doc["channels_not_closed"].as_array().into_iter().flatten() {
        println!(
            "not closed by egressd run: {}: {}",
            c["channel"].as_str().unwrap_or("?"),
            c["what_to_do"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Connects to the daemon's control socket and sends `request`.
async fn send(instance: &str, request: &str) -> Result<UnixStream> {
    let path = socket_path(instance);
    let mut conn = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "connecting to {} (is `egressd run --instance {instance}` running, and are you root?)",
            path.display()
        )
    })?;
    conn.write_all(format!("{request}\n").as_bytes()).await?;
    Ok(conn)
}

async fn request(instance: &str, request: &str) -> Result<String> {
    let mut conn = send(instance, request).await?;
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut text).await?;
    if text.is_empty() {
        bail!("the daemon closed the connection (only root may ask)");
    }
    Ok(text)
}

/// The client side of `events`: copies the stream to stdout.
pub async fn ask(instance: &str, request: &str) -> Result<()> {
    ask_with(instance, request, |line| line.to_string()).await
}

/// As `ask`, printing each line of the answer as `show` makes it.
pub async fn ask_with(instance: &str, request: &str, show: impl Fn(&str) -> String) -> Result<()> {
    let conn = send(instance, request).await?;
    let mut lines = BufReader::new(conn).lines();
    let mut any = false;
    while let Some(line) = lines.next_line().await? {
        any = true;
        println!("{}", show(&line));
    }
    if !any {
        bail!("the daemon closed the connection (only root may ask)");
    }
    Ok(())
}
