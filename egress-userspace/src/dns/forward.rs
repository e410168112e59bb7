//! Asking the upstream servers for an allowed name: each in turn, over UDP
//! (whatever the client used); a truncated answer is asked again over TCP.
//! On the wire the query carries a random id of egressd's own.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    message::{addresses, Question},
    upstream::{random_id, Exchanger},
};

/// How long one upstream may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks each upstream in turn, over UDP (whatever the client used); a
/// truncated answer is asked again over TCP.
pub async fn forward(
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
