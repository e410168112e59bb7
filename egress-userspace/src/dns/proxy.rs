//! One policy's DNS proxy: it answers only names an allow rule matches,
//! forwards those upstream, and has their answers admitted before it replies.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::proto::{op::ResponseCode, rr::RecordType};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc::Sender, Semaphore},
};

use super::{
    forward::forward,
    message::{addresses, format_error, question, raw_id, reply_code, upstream_query, Question},
    name_budget::NameBudgets,
    sockets::{bind_in_netns, Sockets},
    tcp_clients::{Slot, TcpClients},
    upstream::Exchanger,
    AbortOnDrop,
};
use crate::{
    kernel::cgroup::Cgroup,
    policy::{resolver::search_expansion, Mode, RefuseWith},
    report::{describe::DnsEvent, metrics::Metrics},
    state::{
        answers::{Admission, Admitter},
        view::ViewCell,
    },
};

/// UDP queries one proxy answers at once; more wait, so that a flood
/// cannot use up memory (TCP connections are bounded by `tcp_clients`).
const MAX_IN_FLIGHT: usize = 256;
/// DNS deny events waiting to be written; more are counted as lost.
pub const EVENT_QUEUE: usize = 4096;

/// How long a TCP connection may wait to send a query (while no other
/// connection needs its place; see `tcp_clients`).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Why a query is reported, and what goes with it (see `DnsEvent`).
struct Why {
    reason: &'static str,
    refused: Vec<(std::net::IpAddr, &'static str)>,
    answers: Vec<std::net::IpAddr>,
    rule: Option<String>,
}

impl Why {
    fn new(reason: &'static str) -> Why {
        Why {
            reason,
            refused: Vec::new(),
            answers: Vec::new(),
            rule: None,
        }
    }
}

/// One policy's proxy. It reads the policy's rules, mode and upstream from
/// its view on each query, so that a reload applies at once, and takes the
/// allowlist's lock only to admit an answer or to name who asked.
#[derive(Clone)]
pub struct Proxy {
    pub view: ViewCell,
    pub admitter: Admitter,
    pub metrics: Arc<Metrics>,
    pub events: Sender<DnsEvent>,
    /// The policy's name, for metrics and events.
    pub name: String,
    /// The port it serves on loopback (in egressd's namespace and pods').
    pub port: u16,
    /// Where queries to the upstream go out.
    pub exchanger: Arc<Exchanger>,
    /// The names each wildcard rule's lookups used.
    pub names: Arc<NameBudgets>,
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
        let clients = Arc::new(TcpClients::default());
        loop {
            let Ok((conn, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let client = Client::tcp(peer);
            // Fair shares by cgroup, as the kernel noted who connected.
            let key = match self.admitter.asker(peer, client.protocol) {
                Some(asker) => asker.cgroup_id,
                None => peer_key(peer),
            };
            // No room: dropped, so closed at once.
            let Some(slot) = clients.admit(key, Instant::now()) else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move { me.serve_tcp_client(conn, client, slot).await });
        }
    }

    /// Length-prefixed queries on one TCP connection, until it closes or
    /// another connection takes its place while it waits for a query.
    async fn serve_tcp_client(&self, mut conn: TcpStream, client: Client, slot: Slot) {
        loop {
            slot.idle();
            let read = async {
                let len = conn.read_u16().await? as usize;
                let mut q = vec![0u8; len];
                conn.read_exact(&mut q).await?;
                Ok::<_, std::io::Error>(q)
            };
            let query = tokio::select! {
                read = tokio::time::timeout(CLIENT_TIMEOUT, read) => match read {
                    Ok(Ok(query)) => query,
                    _ => return,
                },
                () = slot.closed() => return,
            };
            slot.busy();
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
    fn report(&self, q: &Question, client: Client, audit: bool, why: Why) {
        let asker = self.admitter.asker(client.peer, client.protocol);
        let sent = self.events.try_send(DnsEvent {
            policy: self.name.clone(),
            verdict: if audit { "audited" } else { "denied" },
            reason: why.reason,
            name: q.name.clone(),
            qtype: q.qtype.to_string(),
            transport: client.transport,
            refused: why.refused,
            answers: why.answers,
            rule: why.rule,
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
        let view = self.view.get();
        let policy = &view.policy;
        let rules = policy.host_rules_for(&q.name);
        let audit = policy.mode == Mode::Audit;
        let expansion = rules.is_empty()
            && search_expansion(&q.name, &view.search, |n| {
                !policy.host_rules_for(n).is_empty()
            });
        if expansion {
            // Not the name the agent asked for: the resolver tries the
            // name as given next. Answered here, never sent upstream.
            self.count("search_expansion");
            return Some(reply_code(&query, ResponseCode::NXDomain));
        }
        let reason = if rules.is_empty() {
            Some("dns_name_not_allowed")
        } else if !type_allowed(q.qtype) {
            // TXT, NULL and the like carry data, not addresses.
            Some("dns_type_not_allowed")
        } else {
            None
        };
        // A name below a wildcard reaches that domain's name servers
        // whether or not it exists: only so many new ones per window.
        let mut spent = None;
        let reason = reason.or_else(|| {
            let limits = policy.lookup_limits_for(&q.name);
            spent = self.names.charge(&limits, &q.name, Instant::now()).err();
            spent.as_ref().map(|_| "dns_name_budget_spent")
        });
        if let Some(reason) = reason {
            if !audit {
                let why = Why {
                    rule: spent.clone(),
                    ..Why::new(reason)
                };
                self.report(&q, client, audit, why);
                self.count(if reason == "dns_name_budget_spent" {
                    "name_budget_spent"
                } else {
                    "denied"
                });
                let code = match (reason, policy.dns.refuse_with) {
                    ("dns_name_not_allowed", RefuseWith::Nxdomain) => ResponseCode::NXDomain,
                    // As if the name did not exist: the client gives up
                    // rather than retrying another server.
                    ("dns_name_budget_spent", _) => ResponseCode::NXDomain,
                    _ => ResponseCode::Refused,
                };
                return Some(reply_code(&query, code));
            }
            self.count("audited");
        }
        // HTTPS and SVCB answers would tell clients of Encrypted Client
        // Hello (which hides the name a connection presents, refused under
        // a rule that checks names) and of HTTP/3 (QUIC, whose datagrams
        // such a rule refuses): answered with no record, never forwarded,
        // clients use A and AAAA, TLS over TCP, and the name in the clear.
        if reason.is_none()
            && matches!(q.qtype, RecordType::HTTPS | RecordType::SVCB)
            && policy.names_checked_for(&q.name)
        {
            self.count("allowed");
            return Some(reply_code(&query, ResponseCode::NoError));
        }
        // Audit mode reports a query it let through once it is answered,
        // with the answer's addresses (`egressd learn` names what the
        // agent then reached by them).
        let audited = reason.filter(|_| audit);
        // On the wire to the upstream the query carries a random id of
        // egressd's own (the agent chooses its ids, and a spoofed answer
        // must not need to guess only a port); the answer comes back with
        // the client's id (see `upstream` and `ask_tcp`).
        let fresh = upstream_query(&q);
        let answer = match &fresh {
            Some(fresh) => forward(&self.exchanger, &view.upstream, fresh, &q).await,
            None => None,
        };
        let Some(answer) = answer else {
            if let Some(reason) = audited {
                let why = Why {
                    rule: spent.clone(),
                    ..Why::new(reason)
                };
                self.report(&q, client, true, why);
            }
            self.count("error");
            return Some(reply_code(&query, ResponseCode::ServFail));
        };
        let (_, ips, ttl) = addresses(&q, &answer).ok()?;
        if let Some(reason) = audited {
            let why = Why {
                answers: ips.clone(),
                rule: spent,
                ..Why::new(reason)
            };
            self.report(&q, client, true, why);
        }
        let ttl = Duration::from_secs(u64::from(ttl));
        let admitted = if ips.is_empty() {
            Admission::default()
        } else {
            match self.admitter.admit(&rules, &q.name, ips, ttl) {
                Ok(Some(admitted)) => admitted,
                // The policy is gone: this proxy is being stopped.
                Ok(None) => return None,
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
        };
        self.metrics.dns_evicted(&self.name, admitted.evicted);
        if !admitted.refused.is_empty() {
            let reason = "dns_answer_not_allowed";
            let refused = admitted.refused;
            self.report(
                &q,
                client,
                admitted.audit,
                Why {
                    refused,
                    ..Why::new(reason)
                },
            );
        }
        if !rules.is_empty() {
            self.count("allowed");
        }
        Some(answer)
    }
}

/// A client key for a connection the kernel noted no process for: its
/// address (not its port: one client's connections share it).
fn peer_key(peer: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    peer.ip().hash(&mut h);
    // Cgroup ids are inode numbers, far below this bit.
    h.finish() | 1 << 63
}

/// Query types forwarded for an allowed name: those that answer with
/// addresses or lead to them (TXT or NULL queries for an allowed name must
/// not carry data out).
pub fn type_allowed(t: RecordType) -> bool {
    matches!(
        t,
        RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::HTTPS | RecordType::SVCB
    )
}

/// Serves DNS inside the network namespace of the pod whose cgroup is
/// `cgroup`: waits for its first process (the pod's sandbox), binds there,
/// and serves until aborted.
pub async fn serve_pod(proxy: Proxy, cgroup: Cgroup) {
    let port = proxy.port;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        assert!(type_allowed(RecordType::A) && type_allowed(RecordType::HTTPS));
        assert!(!type_allowed(RecordType::TXT) && !type_allowed(RecordType::NULL));
        assert!(!type_allowed(RecordType::MX) && !type_allowed(RecordType::ANY));
    }
}
