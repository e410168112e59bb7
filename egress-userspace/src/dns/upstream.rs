//! Asking the upstream resolver over UDP. Queries share sockets: a socket
//! takes at most `QUERIES_PER_SOCKET` queries within `SOCKET_LIFE`, then a
//! fresh one (on a new random source port) takes the next; opening and
//! closing a socket per query was most of the proxy's cost. On the wire
//! each query carries a random id of egressd's own, unique among those
//! waiting on its socket; a reader per socket hands each answer to the
//! query with its id, and the caller gets the answer with its own id back.
//! Sockets are connected: only the upstream's address can answer.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, sync::oneshot};

use super::AbortOnDrop;

/// Queries one socket takes before a fresh one takes over.
const QUERIES_PER_SOCKET: u32 = 100;
/// How long one socket takes new queries.
const SOCKET_LIFE: Duration = Duration::from_secs(1);

/// The sockets in use, one per upstream server.
#[derive(Default)]
pub struct Exchanger {
    current: Mutex<HashMap<SocketAddr, Arc<Shared>>>,
}

/// One socket, and the queries waiting on it.
struct Shared {
    sock: Arc<UdpSocket>,
    state: Mutex<State>,
    born: Instant,
    _reader: AbortOnDrop,
}

#[derive(Default)]
struct State {
    /// Wire id -> the query waiting for that answer (its turn number, to
    /// tell it from a later query given the same id once it was freed).
    waiting: HashMap<u16, (u32, oneshot::Sender<Vec<u8>>)>,
    /// Queries this socket has taken.
    taken: u32,
    /// Turns given out (see `waiting`).
    turns: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Exchanger {
    /// Sends `query` to `server` and waits up to `timeout` for its answer,
    /// returned with the query's own id. None: no answer.
    pub async fn ask(
        &self,
        server: SocketAddr,
        query: &[u8],
        timeout: Duration,
    ) -> Option<Vec<u8>> {
        let own_id = [*query.first()?, *query.get(1)?];
        let shared = self.socket(server).await?;
        let (id, turn, answer) = shared.wait()?;
        let mut wire = query.to_vec();
        wire[..2].copy_from_slice(&id.to_be_bytes());
        let answer = match shared.sock.send(&wire).await {
            Ok(_) => tokio::time::timeout(timeout, answer)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        // Answered, timed out or failed: the id is free again (unless it
        // was freed already and another query has it now).
        let mut state = lock(&shared.state);
        if state.waiting.get(&id).is_some_and(|w| w.0 == turn) {
            state.waiting.remove(&id);
        }
        drop(state);
        let mut answer = answer?;
        answer[..2].copy_from_slice(&own_id);
        Some(answer)
    }

    /// The socket for `server` that takes queries now (counting this one).
    async fn socket(&self, server: SocketAddr) -> Option<Arc<Shared>> {
        if let Some(s) = lock(&self.current).get(&server) {
            let mut state = lock(&s.state);
            if state.taken < QUERIES_PER_SOCKET && s.born.elapsed() < SOCKET_LIFE {
                state.taken += 1;
                return Some(s.clone());
            }
        }
        let fresh = Shared::open(server).await?;
        lock(&fresh.state).taken = 1;
        lock(&self.current).insert(server, fresh.clone());
        Some(fresh)
    }
}

impl Shared {
    async fn open(server: SocketAddr) -> Option<Arc<Shared>> {
        let bind: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).await.ok()?;
        sock.connect(server).await.ok()?;
        let sock = Arc::new(sock);
        Some(Arc::new_cyclic(|me: &Weak<Shared>| Shared {
            sock: sock.clone(),
            state: Mutex::default(),
            born: Instant::now(),
            _reader: AbortOnDrop(vec![tokio::spawn(read(sock, me.clone()))]),
        }))
    }

    /// A random wire id no query on this socket waits for, the query's
    /// turn, and where its answer will arrive.
    fn wait(&self) -> Option<(u16, u32, oneshot::Receiver<Vec<u8>>)> {
        let mut state = lock(&self.state);
        let id = loop {
            let id = random_id()?;
            if !state.waiting.contains_key(&id) {
                break id;
            }
        };
        let (tx, rx) = oneshot::channel();
        state.turns += 1;
        let turn = state.turns;
        state.waiting.insert(id, (turn, tx));
        Some((id, turn, rx))
    }
}

/// Hands each answer on `sock` to the query waiting for its id, until the
/// socket is no longer used. Answers nobody waits for are dropped.
async fn read(sock: Arc<UdpSocket>, shared: Weak<Shared>) {
    let mut buf = Vec::with_capacity(65535);
    loop {
        buf.clear();
        let got = sock.recv_buf(&mut buf).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match got {
            Ok(_) if buf.len() >= 2 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some((_, tx)) = lock(&shared.state).waiting.remove(&id) {
                    let _ = tx.send(buf.clone());
                }
            }
            Ok(_) => {}
            // The upstream refused (ICMP port unreachable): the queries
            // waiting on this socket fail now rather than at their timeout
            // (unless a send on the socket took the error first: then that
            // query fails, and the others wait out their timeout).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                lock(&shared.state).waiting.clear();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A query id from the kernel's random source.
pub fn random_id() -> Option<u16> {
    let mut id = [0u8; 2];
    // SAFETY: writes at most two bytes into `id`.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    (n == 2).then(|| u16::from_ne_bytes(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers the queries it gets in reverse order,
    /// first with a wrong id, and never answers a query whose byte 2 is 0xee.
    async fn upstream() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let mut got = Vec::new();
                for _ in 0..3 {
                    let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                    got.push((buf[..n].to_vec(), from));
                }
                for (q, from) in got.into_iter().rev() {
                    if q[2] == 0xee {
                        continue;
                    }
                    let mut wrong = q.clone();
                    wrong[0] ^= 0xff;
                    wrong[3] = 0x55;
                    let _ = sock.send_to(&wrong, from).await;
                    let _ = sock.send_to(&q, from).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_reach_their_query_with_its_own_id() {
        let server = upstream().await;
        let ex = Arc::new(Exchanger::default());
        let ask = |id: u16, tag: u8| {
            let ex = ex.clone();
            tokio::spawn(async move {
                let mut q = id.to_be_bytes().to_vec();
                q.extend_from_slice(&[tag, 0]);
                ex.ask(server, &q, Duration::from_millis(500)).await
            })
        };
        let (a, b, c) = (ask(7, 1), ask(7, 2), ask(9, 0xee));
        // The two answered queries get their own answer (tag) and their
        // own id; the wrong-id copies were dropped; the third timed out.
        assert_eq!(a.await.unwrap(), Some(vec![0, 7, 1, 0]));
        assert_eq!(b.await.unwrap(), Some(vec![0, 7, 2, 0]));
        assert_eq!(c.await.unwrap(), None);
    }

    /// Many queries at once, over rotating sockets: each gets its own
    /// answer. (An answered query once freed its id after the reader had,
    /// and could free a later query's: that query then failed.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_queries_at_once_each_get_their_answer() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        let ex = Arc::new(Exchanger::default());
        let slots = Arc::new(tokio::sync::Semaphore::new(64));
        let mut queries = Vec::new();
        for i in 0..30_000u32 {
            let slot = slots.clone().acquire_owned().await.unwrap();
            let ex = ex.clone();
            queries.push(tokio::spawn(async move {
                let q = [(i >> 8) as u8, i as u8, (i >> 16) as u8, 0];
                let a = ex.ask(server, &q, Duration::from_secs(2)).await;
                drop(slot);
                a.as_deref() == Some(&q[..])
            }));
        }
        let mut wrong = 0;
        for q in queries {
            wrong += usize::from(!q.await.unwrap());
        }
        assert_eq!(wrong, 0);
    }

    #[tokio::test]
    async fn a_socket_is_used_for_a_bounded_number_of_queries() {
        let server = upstream().await;
        let ex = Exchanger::default();
        let first = ex.socket(server).await.unwrap();
        for _ in 1..QUERIES_PER_SOCKET {
            assert!(Arc::ptr_eq(&first, &ex.socket(server).await.unwrap()));
        }
        let next = ex.socket(server).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &next));
        assert_ne!(
            first.sock.local_addr().unwrap(),
            next.sock.local_addr().unwrap()
        );
    }

    #[tokio::test]
    async fn a_refusing_upstream_fails_the_query_at_once() {
        // A port nothing listens on: the kernel answers port unreachable.
        let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = closed.local_addr().unwrap();
        drop(closed);
        let ex = Exchanger::default();
        let t = Instant::now();
        assert_eq!(
            ex.ask(server, &[0, 1, 0, 0], Duration::from_secs(5)).await,
            None
        );
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }
}
