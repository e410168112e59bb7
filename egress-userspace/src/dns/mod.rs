//! egressd as the agent's resolver. The kernel programs redirect DNS from a
//! governed cgroup (port 53, UDP and TCP, to any address) to the policy's
//! proxy on 127.0.0.1 and ::1. The proxy answers only names an allow rule
//! matches: others get REFUSED and a deny event, and nothing is sent
//! upstream for them (this shuts the `<secret>.attacker.example` tunnel).
//! For allowed names it asks the upstream resolver, writes the A/AAAA
//! answers into the policy's allowlist, and only then replies.

pub mod message;

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
    enforcer::Enforcer,
    metrics::Metrics,
    policy::{Mode, Policy},
};
use message::{addresses, format_error, question, raw_id, reply_code, upstream_query, Question};

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
    pub name: String,
    pub qtype: String,
    pub transport: &'static str,
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

/// One policy's proxy. It reads the policy's rules, mode and upstream from
/// the enforcer on each query, so that a reload applies at once.
pub struct Proxy {
    pub enforcer: Arc<Mutex<Enforcer>>,
    pub metrics: Arc<Metrics>,
    pub events: Sender<DnsEvent>,
    pub id: u32,
    /// The policy's name, for metrics and events.
    pub name: String,
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
                if let Some(reply) = me.handle(&query, "udp").await {
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
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.serve_tcp_client(conn).await;
                drop(slot);
            });
        }
    }

    /// Length-prefixed queries on one TCP connection, until it closes.
    async fn serve_tcp_client(&self, mut conn: TcpStream) {
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
            let Some(reply) = self.handle(&query, "tcp").await else {
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

    /// Answers one query: the reply to send, if any.
    pub async fn handle(&self, bytes: &[u8], transport: &'static str) -> Option<Vec<u8>> {
        let (query, q) = match question(bytes) {
            Ok(x) => x,
            Err(_) => {
                self.count("malformed");
                return raw_id(bytes).map(format_error);
            }
        };
        let (rules, audit, upstream) = {
            let e = self
                .enforcer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let p = e.get(self.id)?;
            (
                p.policy.host_rules_for(&q.name),
                p.policy.mode == Mode::Audit,
                p.upstream.clone(),
            )
        };
        if rules.is_empty() {
            let sent = self.events.try_send(DnsEvent {
                policy: self.name.clone(),
                verdict: if audit { "audited" } else { "denied" },
                name: q.name.clone(),
                qtype: q.qtype.to_string(),
                transport,
            });
            if sent.is_err() {
                // The writer is behind: the query is still refused and
                // counted; only its event is lost, and that is counted too.
                self.count("event_lost");
            }
            if !audit {
                self.count("denied");
                return Some(reply_code(&query, ResponseCode::Refused));
            }
            self.count("audited");
        }
        let fresh = upstream_query(&q);
        let answer = match &fresh {
            Some(fresh) => forward(&upstream, fresh, &q).await,
            None => None,
        };
        let Some(answer) = answer else {
            self.count("error");
            return Some(reply_code(&query, ResponseCode::ServFail));
        };
        let (_, ips, ttl) = addresses(&q, &answer).ok()?;
        if !ips.is_empty() {
            let now = Instant::now();
            let ttl = Duration::from_secs(u64::from(ttl));
            let mut e = self
                .enforcer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for rule in &rules {
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
        if !rules.is_empty() {
            self.count("allowed");
        }
        Some(answer)
    }
}

/// Asks each upstream in turn, over UDP (whatever the client used); a
/// truncated answer is asked again over TCP.
async fn forward(upstream: &[SocketAddr], query: &[u8], q: &Question) -> Option<Vec<u8>> {
    for server in upstream {
        let answer = match ask_udp(*server, query).await {
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

fn is_truncated(answer: &[u8]) -> bool {
    answer.get(2).is_some_and(|b| b & 0x02 != 0)
}

async fn ask_udp(server: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .ok()?;
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect(server).await.ok()?;
    sock.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

async fn ask_tcp(server: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        let mut conn = TcpStream::connect(server).await?;
        conn.write_u16(query.len() as u16).await?;
        conn.write_all(query).await?;
        let len = conn.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()?
        .ok()
}
