//! The metrics endpoint: a minimal HTTP server answering `GET /metrics`
//! with a fresh scrape (counters read from the kernel at that moment), and
//! the probes: `/livez` (the daemon's loop turned lately) and `/readyz`
//! (live, and what it governs is known: a node's pods listed).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::metrics::Metrics;
use crate::state::allowlist::Allowlist;

/// How long the loop may go without a turn before the daemon is not live.
const STALL: Duration = Duration::from_secs(30);

/// What the probes report, set by the daemon's loop.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    /// When the loop last turned (seconds since the epoch).
    beat: AtomicU64,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The loop turned.
    pub fn beat(&self) {
        self.beat.store(now_secs(), Ordering::Relaxed);
    }

    pub fn live(&self) -> bool {
        now_secs().saturating_sub(self.beat.load(Ordering::Relaxed)) < STALL.as_secs()
    }

    pub fn ready(&self) -> bool {
        self.live() && self.ready.load(Ordering::Relaxed)
    }
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A probe's answer.
fn probe(ok: bool) -> Vec<u8> {
    let (status, body) = if ok {
        ("200 OK", "ok\n")
    } else {
        ("503 Service Unavailable", "not yet\n")
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `GET /metrics`, `/livez` and `/readyz` on `listener` until the
/// task is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    allowlist: Arc<Mutex<Allowlist>>,
    health: Arc<Health>,
) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (metrics, allowlist, health) = (metrics.clone(), allowlist.clone(), health.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            let read_request = async {
                while len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            };
            let timeout = std::time::Duration::from_secs(5);
            if tokio::time::timeout(timeout, read_request).await.is_err() {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let response = if path == "/metrics" || path.starts_with("/metrics?") {
                let (synced, body) = metrics.scrape(
                    &allowlist
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                if let Err(e) = synced {
                    tracing::error!("reading counters for a scrape: {e:#}");
                }
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend(body);
                r
            } else if path == "/livez" {
                probe(health.live())
            } else if path == "/readyz" {
                probe(health.ready())
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            let _ = conn.write_all(&response).await;
            let _ = conn.shutdown().await;
        });
    }
}
