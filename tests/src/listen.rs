//! Listeners that count what reaches them: a deny is proven here, by a
//! count of zero, not only by the client's EPERM.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::Result;

use crate::netns::Netns;

pub struct Listener {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    /// Payload bytes received (TCP: read from accepted connections; UDP:
    /// the datagrams counted).
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Counts accepted TCP connections on `addr` inside `ns`.
    pub fn tcp(ns: &Netns, addr: &str) -> Result<Listener> {
        Self::tcp_replying(ns, addr, 0)
    }

    /// As `tcp`, and answers each connection, once it has read all the
    /// peer sent, with `reply` bytes.
    pub fn tcp_replying(ns: &Netns, addr: &str, reply: usize) -> Result<Listener> {
        let addr: SocketAddr = addr.parse()?;
        let sock = ns.run(move || Ok(TcpListener::bind(addr)?))?;
        sock.set_nonblocking(true)?;
        let (hits, bytes, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (h, b, s) = (hits.clone(), bytes.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match sock.accept() {
                    Ok((mut conn, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let b = b.clone();
                        thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                            let mut chunk = vec![0u8; 65536];
                            loop {
                                match conn.read(&mut chunk) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        b.fetch_add(n as u64, Ordering::SeqCst);
                                    }
                                    Err(_) => return,
                                }
                            }
                            if reply > 0 {
                                let _ = std::io::Write::write_all(&mut conn, &vec![b'r'; reply]);
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Listener {
            addr,
            hits,
            bytes,
            stop,
        })
    }

    /// Counts UDP datagrams received on `addr` inside `ns`.
    pub fn udp(ns: &Netns, addr: &str) -> Result<Listener> {
        let addr: SocketAddr = addr.parse()?;
        let sock = ns.run(move || Ok(UdpSocket::bind(addr)?))?;
        counting(sock, addr, |_| true)
    }

    /// Counts ICMP echo requests addressed to `addr` (an IPv4 address) inside `ns`.
    pub fn icmp_echo(ns: &Netns, addr: &str) -> Result<Listener> {
        let ip: std::net::Ipv4Addr = addr.parse()?;
        let fd = ns.run(|| {
            // SAFETY: plain syscall; the fd is owned below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            if fd < 0 {
                anyhow::bail!("raw socket: {}", std::io::Error::last_os_error());
            }
            Ok(fd)
        })?;
        // SAFETY: fd is a fresh socket we own.
        let sock = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // An IPv4 header (20 bytes without options), then ICMP type 8.
        counting(sock, SocketAddr::new(ip.into(), 0), move |p| {
            p.len() > 20 && p[16..20] == ip.octets() && p[20] == 8
        })
    }

    /// Counts IP packets of any kind whose destination is `addr`, captured on
    /// the loopback of `ns` (where all test traffic flows).
    pub fn capture(ns: &Netns, addr: &str) -> Result<Listener> {
        let ip: std::net::IpAddr = addr.parse()?;
        let fd = ns.run(|| {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain syscalls on a fresh socket; sockaddr_ll is plain data.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto));
                if fd < 0 {
                    anyhow::bail!("packet socket: {}", std::io::Error::last_os_error());
                }
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = libc::if_nametoindex(c"lo".as_ptr()) as i32;
                let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                if libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), len) != 0 {
                    anyhow::bail!("bind packet socket: {}", std::io::Error::last_os_error());
                }
                Ok(fd)
            }
        })?;
        // SAFETY: fd is a fresh socket we own.
        let sock = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        counting(sock, SocketAddr::new(ip, 0), move |p| {
            let dst: Option<std::net::IpAddr> = match p.first().map(|b| b >> 4) {
                Some(4) if p.len() >= 20 => Some(<[u8; 4]>::try_from(&p[16..20]).unwrap().into()),
                Some(6) if p.len() >= 40 => Some(<[u8; 16]>::try_from(&p[24..40]).unwrap().into()),
                _ => None,
            };
            dst == Some(ip)
        })
    }

    /// What arrived so far, after giving in-flight packets a moment.
    pub fn count(&self) -> u64 {
        thread::sleep(Duration::from_millis(100));
        self.hits.load(Ordering::SeqCst)
    }

    /// The payload bytes received so far, after giving in-flight packets a
    /// moment.
    pub fn bytes(&self) -> u64 {
        thread::sleep(Duration::from_millis(100));
        self.bytes.load(Ordering::SeqCst)
    }
}

/// Counts, on a thread of its own, the messages received on `sock` that
/// `matches` accepts, until the listener is dropped.
fn counting(
    sock: UdpSocket,
    addr: SocketAddr,
    matches: impl Fn(&[u8]) -> bool + Send + 'static,
) -> Result<Listener> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let (hits, bytes, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (h, b, s) = (hits.clone(), bytes.clone(), stop.clone());
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !s.load(Ordering::SeqCst) {
            if let Ok(n) = sock.recv(&mut buf) {
                if matches(&buf[..n]) {
                    h.fetch_add(1, Ordering::SeqCst);
                    b.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
    });
    Ok(Listener {
        addr,
        hits,
        bytes,
        stop,
    })
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
