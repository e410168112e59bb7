//! egressd as the agent's resolver. The kernel programs redirect DNS from a
//! governed cgroup (port 53, UDP and TCP, to any address) to the policy's
//! proxy on 127.0.0.1 and ::1. The proxy answers only names an allow rule
//! matches: others get NXDOMAIN (or REFUSED, `dns.refuse_with`) and a deny
//! event, and nothing is sent
//! upstream for them (this shuts the `<secret>.attacker.example` tunnel).
//! For allowed names it asks the upstream resolver, writes the A/AAAA
//! answers into the policy's allowlist, and only then replies.

pub mod answers;
pub mod message;
pub mod refresh;
pub mod upstream;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use hickory_resolver::proto::op::ResponseCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc::Sender, Semaphore},
};

use crate::{
    policy::{Mode, Policy, RefuseWith},
    report::metrics::Metrics,
    state::allowlist::Allowlist,
};
use message::{addresses, format_error, question, raw_id, reply_code, upstream_query, Question};
use upstream::Exchanger;

/// Queries one proxy answers at once; more wait (UDP) or are not accepted
/// yet (TCP), so that a flood cannot use up memory or file descriptors.
const MAX_IN_FLIGHT: usize = 256;
/// TCP clients one proxy serves at once.
const MAX_TCP_CLIENTS: usize = 64;
/// DNS deny events waiting to be written; more are counted as lost.
pub const EVENT_QUEUE: usize = 4096;

/// How long one upstream may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may take to send a query.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A DNS query refused (or, in audit mode, let through and reported).
#[derive(Debug, Clone)]
pub struct DnsEvent {
    pub policy: String,
    pub verdict: &'static str,
    /// `dns_name_not_allowed`, `dns_type_not_allowed` or
    /// `dns_answer_not_allowed`.
    pub reason: &'static str,
    pub name: String,
    pub qtype: String,
    pub transport: &'static str,
    /// For `dns_answer_not_allowed`: the addresses not learned, and why.
    pub refused: Vec<(std::net::IpAddr, &'static str)>,
    /// The process that asked, when the kernel noted it.
    pub asker: Option<egress_common::DnsAsker>,
}

/// Where a query came from: its transport and the client's address.
#[derive(Clone, Copy)]
pub struct Client {
    pub transport: &'static str,
    pub protocol: u8,
    pub peer: SocketAddr,
}

impl Client {
    fn udp(peer: SocketAddr) -> Client {
        Client {
            transport: "udp",
            protocol: egress_common::IPPROTO_UDP,
            peer,
        }
    }

    fn tcp(peer: SocketAddr) -> Client {
        Client {
            transport: "tcp",
            protocol: egress_common::IPPROTO_TCP,
            peer,
        }
    }
}

/// The proxy's sockets, all on one port, before it knows its policy id.
pub struct Sockets {
    pub port: u16,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

/// Binds UDP and TCP on 127.0.0.1 and ::1, on one free port.
pub async fn bind() -> Result<Sockets> {
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    for _ in 0..32 {
        let first = UdpSocket::bind((v4, 0))
            .await
            .context("binding the DNS proxy on 127.0.0.1")?;
        let port = first.local_addr()?.port();
        let Ok(tcp4) = TcpListener::bind((v4, port)).await else {
            continue;
        };
        let mut s = Sockets {
            port,
            udp: vec![first],
            tcp: vec![tcp4],
        };
        // IPv6 may be disabled: then IPv6 sockets cannot reach the proxy,
        // and their DNS fails (closed), which is the safe way round.
        match (
            UdpSocket::bind((v6, port)).await,
            TcpListener::bind((v6, port)).await,
        ) {
            (Ok(u), Ok(t)) => {
                s.udp.push(u);
                s.tcp.push(t);
            }
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(
                    "DNS proxy not on [::1]:{port} ({e}): DNS from IPv6 sockets will fail"
                );
            }
        }
        return Ok(s);
    }
    bail!("no free port on loopback for the DNS proxy")
}

/// Where the proxy forwards allowed queries: the policy's upstream, else
/// the nameservers of /etc/resolv.conf.
pub fn upstreams(policy: &Policy) -> Result<Vec<SocketAddr>> {
    if !policy.dns.upstream.is_empty() {
        return Ok(policy.dns.upstream.clone());
    }
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .context("reading /etc/resolv.conf for the DNS upstream")?;
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        bail!("/etc/resolv.conf names no nameserver: set `dns.upstream` in the policy (or --resolver)");
    }
    Ok(servers)
}

/// The search domains of a policy's resolver: `dns.search`, else the
/// `search` (or `domain`) line of /etc/resolv.conf (none if unreadable).
pub fn search_domains(policy: &Policy) -> Vec<String> {
    if let Some(list) = &policy.dns.search {
        return list.clone();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // The last search or domain line counts, as in glibc.
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            matches!(words.next(), Some("search" | "domain")).then(|| {
                words
                    .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<String>>()
            })
        })
        .next_back()
        .unwrap_or_default()
}

/// Whether `qname` is an allowed name with a search domain appended (what
/// a resolver tries first for a name with fewer dots than `ndots`): an
/// allowed name, then any labels, then a search domain, so that
/// `cluster.local` covers every namespace's `<ns>.svc.cluster.local`.
/// Such a query is answered here and never forwarded, so nothing in its
/// labels leaves.
pub fn search_expansion(qname: &str, search: &[String], allowed: impl Fn(&str) -> bool) -> bool {
    search.iter().any(|domain| {
        let Some(rest) = qname
            .strip_suffix(domain.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
        else {
            return false;
        };
        // `rest`, then `rest` less its last label, and so on.
        let mut name = rest;
        loop {
            if !name.is_empty() && allowed(name) {
                return true;
            }
            match name.rfind('.') {
                Some(i) => name = &name[..i],
                None => return false,
            }
        }
    })
}

/// Binds the proxy's port on loopback inside the network namespace of
/// process `pid` (a pod's): DNS redirected there by the kernel programs
/// reaches egressd. `None` when that namespace is egressd's own (served by
/// the main proxy already).
pub async fn bind_in_netns(pid: i32, port: u16) -> Result<Option<Sockets>> {
    let ns = format!("/proc/{pid}/ns/net");
    let theirs = std::fs::metadata(&ns).with_context(|| format!("reading {ns}"))?;
    let ours = std::fs::metadata("/proc/self/ns/net")?;
    use std::os::unix::fs::MetadataExt;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(None);
    }
    // setns affects only the calling thread: bind on a thread of our own.
    let bound = std::thread::spawn(
        move || -> Result<(Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>)> {
            let f = std::fs::File::open(&ns).with_context(|| format!("opening {ns}"))?;
            // SAFETY: setns on this thread only, with a namespace fd we hold.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0
            {
                bail!("entering {ns}: {}", std::io::Error::last_os_error());
            }
            let (mut udp, mut tcp) = (Vec::new(), Vec::new());
            for ip in [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ] {
                let u = std::net::UdpSocket::bind((ip, port));
                let t = std::net::TcpListener::bind((ip, port));
                match (u, t) {
                    (Ok(u), Ok(t)) => {
                        u.set_nonblocking(true)?;
                        t.set_nonblocking(true)?;
                        udp.push(u);
                        tcp.push(t);
                    }
                    // IPv6 may be off in the pod: its IPv6 DNS then fails (closed).
                    (Err(e), _) | (_, Err(e)) if ip.is_ipv6() => {
                        tracing::debug!("no DNS proxy on [::1]:{port} in {ns}: {e}");
                    }
                    (Err(e), _) | (_, Err(e)) => bail!("binding 127.0.0.1:{port} in {ns}: {e}"),
                }
            }
            Ok((udp, tcp))
        },
    )
    .join()
    .map_err(|_| anyhow::anyhow!("the binding thread panicked"))??;
    let mut s = Sockets {
        port,
        udp: Vec::new(),
        tcp: Vec::new(),
    };
    for u in bound.0 {
        s.udp.push(UdpSocket::from_std(u)?);
    }
    for t in bound.1 {
        s.tcp.push(TcpListener::from_std(t)?);
    }
    Ok(Some(s))
}

/// Aborts tasks when dropped (a task that owns others ends them with it).
pub struct AbortOnDrop(pub Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Serves DNS inside the network namespace of the pod whose cgroup is
/// `cgroup`: waits for its first process (the pod's sandbox), binds there,
/// and serves until aborted.
pub async fn serve_pod(proxy: Proxy, cgroup: crate::kernel::cgroup::Cgroup, port: u16) {
    let pid = loop {
        if let Some(pid) = cgroup.all_pids().into_iter().next() {
            break pid;
        }
        if !cgroup.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match bind_in_netns(pid, port).await {
        Ok(Some(sockets)) => {
            tracing::info!(cgroup = %cgroup.path.display(), port, "DNS proxy in the pod's network namespace");
            let _serving = AbortOnDrop(proxy.spawn(sockets));
            std::future::pending::<()>().await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(cgroup = %cgroup.path.display(), "no DNS proxy in the pod's network namespace (its DNS fails closed): {e:#}");
        }
    }
}

/// One policy's proxy. It reads the policy's rules, mode and upstream from
/// the allowlist on each query, so that a reload applies at once.
#[derive(Clone)]
pub struct Proxy {
    pub allowlist: Arc<Mutex<Allowlist>>,
    pub metrics: Arc<Metrics>,
    pub events: Sender<DnsEvent>,
    pub id: u32,
    /// The policy's name, for metrics and events.
    pub name: String,
    /// Where queries to the upstream go out.
    pub exchanger: Arc<Exchanger>,
}

impl Proxy {
    /// Serves queries on `sockets` until the tasks are dropped.
    pub fn spawn(self, sockets: Sockets) -> Vec<tokio::task::JoinHandle<()>> {
        let me = Arc::new(self);
        let mut tasks = Vec::new();
        for udp in sockets.udp {
            tasks.push(tokio::spawn(me.clone().serve_udp(Arc::new(udp))));
        }
        for tcp in sockets.tcp {
            tasks.push(tokio::spawn(me.clone().serve_tcp(tcp)));
        }
        tasks
    }

    async fn serve_udp(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let query = buf[..n].to_vec();
            let (me, sock) = (self.clone(), sock.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = me.handle(&query, Client::udp(peer)).await;
                me.metrics
                    .dns_latency(&me.name, started.elapsed().as_secs_f64());
                if let Some(reply) = reply {
                    let _ = sock.send_to(&reply, peer).await;
                }
                drop(slot);
            });
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((conn, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.serve_tcp_client(conn, Client::tcp(peer)).await;
                drop(slot);
            });
        }
    }

    /// Length-prefixed queries on one TCP connection, until it closes.
    async fn serve_tcp_client(&self, mut conn: TcpStream, client: Client) {
        loop {
            let read = async {
                let len = conn.read_u16().await? as usize;
                let mut q = vec![0u8; len];
                conn.read_exact(&mut q).await?;
                Ok::<_, std::io::Error>(q)
            };
            let Ok(Ok(query)) = tokio::time::timeout(CLIENT_TIMEOUT, read).await else {
                return;
            };
            let started = Instant::now();
            let reply = self.handle(&query, client).await;
            self.metrics
                .dns_latency(&self.name, started.elapsed().as_secs_f64());
            let Some(reply) = reply else {
                return;
            };
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            if conn.write_u16(len).await.is_err() || conn.write_all(&reply).await.is_err() {
                return;
            }
        }
    }

    fn count(&self, verdict: &str) {
        self.metrics.dns_query(&self.name, verdict);
    }

    /// Sends a deny (or audit) event for query `q`, naming the process
    /// that asked when the kernel noted it.
    fn report(
        &self,
        q: &Question,
        client: Client,
        audit: bool,
        reason: &'static str,
        refused: Vec<(std::net::IpAddr, &'static str)>,
    ) {
        let asker = self
            .allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .dns_asker(client.peer, client.protocol);
        let sent = self.events.try_send(DnsEvent {
            policy: self.name.clone(),
            verdict: if audit { "audited" } else { "denied" },
            reason,
            name: q.name.clone(),
            qtype: q.qtype.to_string(),
            transport: client.transport,
            refused,
            asker,
        });
        if sent.is_err() {
            // The writer is behind: the query is still judged and counted;
            // only its event is lost, and that is counted too.
            self.metrics.dns_event_lost(&self.name);
        }
    }

    /// Answers one query: the reply to send, if any.
    pub async fn handle(&self, bytes: &[u8], client: Client) -> Option<Vec<u8>> {
        let (query, q) = match question(bytes) {
            Ok(x) => x,
            Err(_) => {
                self.count("malformed");
                return raw_id(bytes).map(format_error);
            }
        };
        let (rules, audit, upstream, expansion, refuse_with) = {
            let e = self
                .allowlist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let p = e.get(self.id)?;
            let rules = p.policy.host_rules_for(&q.name);
            let expansion = rules.is_empty()
                && search_expansion(&q.name, &p.search, |n| {
                    !p.policy.host_rules_for(n).is_empty()
                });
            (
                rules,
                p.policy.mode == Mode::Audit,
                p.upstream.clone(),
                expansion,
                p.policy.dns.refuse_with,
            )
        };
        if expansion {
            // Not the name the agent asked for: the resolver tries the
            // name as given next. Answered here, never sent upstream.
            self.count("search_expansion");
            return Some(reply_code(&query, ResponseCode::NXDomain));
        }
        let reason = if rules.is_empty() {
            Some("dns_name_not_allowed")
        } else if !answers::type_allowed(q.qtype) {
            // TXT, NULL and the like carry data, not addresses.
            Some("dns_type_not_allowed")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.report(&q, client, audit, reason, Vec::new());
            if !audit {
                self.count("denied");
                let code = match (reason, refuse_with) {
                    ("dns_name_not_allowed", RefuseWith::Nxdomain) => ResponseCode::NXDomain,
                    _ => ResponseCode::Refused,
                };
                return Some(reply_code(&query, code));
            }
            self.count("audited");
        }
        // On the wire to the upstream the query carries a random id of
        // egressd's own (the agent chooses its ids, and a spoofed answer
        // must not need to guess only a port); the answer comes back with
        // the client's id (see `upstream` and `ask_tcp`).
        let fresh = upstream_query(&q);
        let answer = match &fresh {
            Some(fresh) => forward(&self.exchanger, &upstream, fresh, &q).await,
            None => None,
        };
        let Some(answer) = answer else {
            self.count("error");
            return Some(reply_code(&query, ResponseCode::ServFail));
        };
        let (_, ips, ttl) = addresses(&q, &answer).ok()?;
        let mut refused = Vec::new();
        if !ips.is_empty() {
            let now = Instant::now();
            let ttl = Duration::from_secs(u64::from(ttl));
            let mut e = self
                .allowlist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Special addresses are not learned: the kernel refuses a
            // connect to them, and the event says why (audit learns them,
            // and reports).
            // The mode as screened: a reload during the upstream's answer
            // must not learn special addresses into an enforcing table.
            let policy = &e.get(self.id)?.policy;
            let audit = policy.mode == Mode::Audit;
            let (mut ips, special) = answers::screen(policy, &rules, ips);
            if audit {
                ips.extend(special.iter().map(|(ip, _)| *ip));
            }
            refused = special;
            for rule in rules.iter().filter(|_| !ips.is_empty()) {
                match e.record(self.id, rule, &q.name, &ips, ttl, now) {
                    Ok(evicted) => self.metrics.dns_evicted(&self.name, evicted),
                    Err(err) => {
                        // Not allowed, so not answered: the client would be refused anyway.
                        tracing::error!(
                            policy = self.name,
                            name = q.name,
                            "allowing answered addresses: {err:#}"
                        );
                        self.count("error");
                        return Some(reply_code(&query, ResponseCode::ServFail));
                    }
                }
            }
        }
        if !refused.is_empty() {
            self.report(&q, client, audit, "dns_answer_not_allowed", refused);
        }
        if !rules.is_empty() {
            self.count("allowed");
        }
        Some(answer)
    }
}

/// Asks each upstream in turn, over UDP (whatever the client used); a
/// truncated answer is asked again over TCP.
async fn forward(
    exchanger: &Exchanger,
    upstream: &[SocketAddr],
    query: &[u8],
    q: &Question,
) -> Option<Vec<u8>> {
    for server in upstream {
        let answer = match exchanger.ask(*server, query, UPSTREAM_TIMEOUT).await {
            Some(a) if is_truncated(&a) => ask_tcp(*server, query).await,
            other => other,
        };
        match answer {
            Some(a) if addresses(q, &a).is_ok() => return Some(a),
            Some(_) => {
                tracing::warn!(%server, name = q.name, "upstream answered another question")
            }
            None => tracing::warn!(%server, name = q.name, "upstream did not answer"),
        }
    }
    None
}

/// A query id from the kernel's random source.
fn random_id() -> Option<u16> {
    let mut id = [0u8; 2];
    // SAFETY: writes at most two bytes into `id`.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    (n == 2).then(|| u16::from_ne_bytes(id))
}

fn is_truncated(answer: &[u8]) -> bool {
    answer.get(2).is_some_and(|b| b & 0x02 != 0)
}

/// Asks over TCP with a random id of egressd's own; the answer is returned
/// with the query's id.
async fn ask_tcp(server: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let own_id = [*query.first()?, *query.get(1)?];
    let id = random_id()?.to_be_bytes();
    let mut wire = query.to_vec();
    wire[..2].copy_from_slice(&id);
    let exchange = async {
        let mut conn = TcpStream::connect(server).await?;
        conn.write_u16(wire.len() as u16).await?;
        conn.write_all(&wire).await?;
        let len = conn.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let mut answer = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()?
        .ok()?;
    if answer.get(..2)? != id {
        return None;
    }
    answer[..2].copy_from_slice(&own_id);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_expansions_of_allowed_names_are_recognised() {
        let search = vec![
            "default.svc.cluster.local".to_string(),
            "cluster.local".to_string(),
        ];
        let allowed = |n: &str| n == "api.model.test";
        for q in [
            "api.model.test.default.svc.cluster.local",
            "api.model.test.svc.cluster.local",
            "api.model.test.cluster.local",
            "api.model.test.other-ns.svc.cluster.local",
        ] {
            assert!(search_expansion(q, &search, allowed), "{q}");
        }
        for q in [
            "api.model.test",
            "secret.attacker.test.cluster.local",
            "xapi.model.test.cluster.local",
            "api.model.test.cluster.localx",
            "cluster.local",
        ] {
            assert!(!search_expansion(q, &search, allowed), "{q}");
        }
        assert!(!search_expansion(
            "api.model.test.cluster.local",
            &[],
            allowed
        ));
    }
}
