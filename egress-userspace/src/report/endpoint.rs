//! The metrics endpoint: a minimal HTTP server answering `GET /metrics`
//! with a fresh scrape (counters read from the kernel at that moment).

use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::metrics::Metrics;
use crate::state::allowlist::Allowlist;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, allowlist: Arc<Mutex<Allowlist>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (metrics, allowlist) = (metrics.clone(), allowlist.clone());
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
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            let _ = conn.write_all(&response).await;
            let _ = conn.shutdown().await;
        });
    }
}
