//! The proxy's sockets: UDP and TCP on one port of 127.0.0.1 and ::1, in
//! egressd's network namespace or in a pod's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};
use tokio::net::{TcpListener, UdpSocket};

/// The proxy's sockets, all on one port, before it knows its policy id.
pub struct Sockets {
    pub port: u16,
    pub(super) udp: Vec<UdpSocket>,
    pub(super) tcp: Vec<TcpListener>,
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
