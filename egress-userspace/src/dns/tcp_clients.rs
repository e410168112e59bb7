//! The TCP connections one proxy listener holds, shared fairly between
//! its clients (a cgroup, as the kernel noted the connecting process; else
//! the peer's address). A connection waiting for a query is idle. When a
//! client has `PER_CLIENT` connections, or the listener `MAX`, a new one
//! takes the place of an idle one: the longest idle of the client holding
//! the most. So one agent holding idle connections cannot leave DNS over
//! TCP (which truncated answers need) unanswered for the others; only
//! connections busy with a query are never closed for another.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::Notify;

/// Connections one listener holds at once.
pub const MAX: usize = 64;
/// Connections one client holds at once.
pub const PER_CLIENT: usize = 8;

#[derive(Default)]
pub struct TcpClients {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    conns: Vec<Conn>,
}

struct Conn {
    id: u64,
    client: u64,
    /// Since when it waits for a query; None while one is answered.
    idle_since: Option<Instant>,
    close: Arc<Notify>,
}

/// One admitted connection: told to close (`closed`) when another takes
/// its place; leaves the count when dropped.
pub struct Slot {
    id: u64,
    clients: Arc<TcpClients>,
    close: Arc<Notify>,
}

impl TcpClients {
    /// Admits a new connection of `client`, closing an idle one to make
    /// room if needed; None when there is no room (every connection in
    /// the way is busy): then the new one is closed.
    pub fn admit(self: &Arc<Self>, client: u64, now: Instant) -> Option<Slot> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = inner.conns.iter().filter(|c| c.client == client).count();
        if mine >= PER_CLIENT {
            inner.evict(Some(client))?;
        } else if inner.conns.len() >= MAX {
            inner.evict(None)?;
        }
        inner.next += 1;
        let (id, close) = (inner.next, Arc::new(Notify::new()));
        inner.conns.push(Conn {
            id,
            client,
            idle_since: Some(now),
            close: close.clone(),
        });
        Some(Slot {
            id,
            clients: self.clone(),
            close,
        })
    }

    /// How many connections `client` holds.
    pub fn held_by(&self, client: u64) -> usize {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.conns.iter().filter(|c| c.client == client).count()
    }

    fn set_idle(&self, id: u64, since: Option<Instant>) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = inner.conns.iter_mut().find(|c| c.id == id) {
            c.idle_since = since;
        }
    }
}

impl Inner {
    /// Closes an idle connection (of `client`, or of the client holding
    /// the most): the longest idle. None if there is none.
    fn evict(&mut self, client: Option<u64>) -> Option<()> {
        let held = |k: u64| self.conns.iter().filter(|c| c.client == k).count();
        let victim = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.idle_since.is_some() && client.is_none_or(|k| c.client == k))
            .max_by_key(|(_, c)| (held(c.client), std::cmp::Reverse(c.idle_since)))
            .map(|(i, _)| i)?;
        let c = self.conns.swap_remove(victim);
        c.close.notify_one();
        Some(())
    }
}

impl Slot {
    /// The connection waits for a query from now on.
    pub fn idle(&self) {
        self.clients.set_idle(self.id, Some(Instant::now()));
    }

    /// The connection is answering a query: it is not closed for another.
    pub fn busy(&self) {
        self.clients.set_idle(self.id, None);
    }

    /// Resolves when another connection took this one's place.
    pub async fn closed(&self) {
        self.close.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self
            .clients
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.conns.retain(|c| c.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_client_holding_many_idle_connections_loses_them_first() {
        let clients = Arc::new(TcpClients::default());
        let t = Instant::now();
        let hog: Vec<Slot> = (0..PER_CLIENT * 3)
            .map(|i| {
                clients
                    .admit(1, t + Duration::from_millis(i as u64))
                    .unwrap()
            })
            .collect();
        // Its own cap: each new one took the place of its longest idle.
        assert_eq!(clients.held_by(1), PER_CLIENT);
        drop(hog);
        assert_eq!(clients.held_by(1), 0);
        // Many clients fill the listener; one more still gets in, in the
        // place of an idle connection of a client holding the most.
        let mut held = Vec::new();
        for client in 0..(MAX / PER_CLIENT) as u64 {
            for _ in 0..PER_CLIENT {
                held.push(clients.admit(100 + client, t).unwrap());
            }
        }
        let seven = clients.admit(7, t);
        assert!(seven.is_some());
        assert_eq!(clients.held_by(7), 1);
        assert_eq!(held.len(), MAX);
    }

    #[test]
    fn busy_connections_are_never_closed_for_another() {
        let clients = Arc::new(TcpClients::default());
        let t = Instant::now();
        let held: Vec<Slot> = (0..PER_CLIENT)
            .map(|_| clients.admit(1, t).unwrap())
            .collect();
        for s in &held {
            s.busy();
        }
        assert!(clients.admit(1, t).is_none());
        held[0].idle();
        assert!(clients.admit(1, t).is_some());
    }
}
