//! The workload, run inside the cgroup under test (`egress-bench client`),
//! and the servers it talks to.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use egress_tests::netns::Netns;

use crate::{BULK, NAMED, TARGET};

/// A ClientHello of curl's size (517 bytes) naming `api.model.test`: a
/// padding extension fills it out.
fn client_hello() -> Vec<u8> {
    let name = b"api.model.test";
    let mut sni = vec![0, 0];
    let list = (name.len() + 3) as u16;
    sni.extend((list + 2).to_be_bytes());
    sni.extend(list.to_be_bytes());
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let fixed = 2 + 32 + 1 + 32 + 4 + 2 + 2;
    let pad = 517 - 9 - fixed - sni.len() - 4;
    let mut ext = vec![0, 0x15];
    ext.extend((pad as u16).to_be_bytes());
    ext.extend(vec![0u8; pad]);
    ext.extend(sni);
    let mut body = vec![3, 3];
    body.extend([0x11; 32]);
    body.push(32);
    body.extend([0x22; 32]);
    body.extend([0, 2, 0x13, 1, 1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1, 0];
    hs.extend((body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

// ---------------------------------------------------------------- client

/// The workload, run inside the cgroup under test; prints its measurements.
pub(crate) fn client(args: &[String]) -> Result<()> {
    let n = |i: usize| -> Result<u64> { Ok(args.get(i).context("missing count")?.parse()?) };
    match args.first().map(String::as_str) {
        Some("tcp") => {
            let addr: SocketAddr = args[1].parse()?;
            let count = n(2)?;
            let t = Instant::now();
            for _ in 0..count {
                let s = TcpStream::connect(addr)?;
                // Close with a reset: tens of thousands of connects must not
                // leave as many ports in TIME_WAIT.
                reset_on_close(&s);
            }
            println!("{}", t.elapsed().as_nanos());
        }
        Some("hello") => {
            // COUNT connections, each writing a ClientHello, then reset.
            let addr: SocketAddr = args[1].parse()?;
            let count = n(2)?;
            let hello = client_hello();
            let t = Instant::now();
            for _ in 0..count {
                let mut s = TcpStream::connect(addr)?;
                s.write_all(&hello)?;
                reset_on_close(&s);
            }
            println!("{}", t.elapsed().as_nanos());
        }
        Some("udp") => {
            let addr: SocketAddr = args[1].parse()?;
            let count = n(2)?;
            let t = Instant::now();
            for _ in 0..count {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(addr)?;
            }
            println!("{}", t.elapsed().as_nanos());
        }
        Some("bulk") => {
            let addr: SocketAddr = args[1].parse()?;
            let bytes = n(2)?;
            let buf = vec![7u8; 1 << 16];
            let mut s = TcpStream::connect(addr)?;
            let t = Instant::now();
            let mut sent = 0u64;
            while sent < bytes {
                s.write_all(&buf)?;
                sent += buf.len() as u64;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            let mut ack = [0u8; 1];
            let _ = s.read(&mut ack);
            println!("{}", t.elapsed().as_nanos());
        }
        Some("storm") => {
            // COUNT connects to ADDR, all on one TCP socket: each must be
            // refused by egressd (EPERM); prints the time and the refusals.
            let addr: std::net::SocketAddrV4 = args[1].parse()?;
            let count = n(2)?;
            // SAFETY: a plain socket call.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*addr.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            let t = Instant::now();
            let mut refused = 0u64;
            for _ in 0..count {
                // SAFETY: a valid socket and address.
                let rc = unsafe {
                    libc::connect(
                        fd,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if rc == 0 {
                    bail!("a connect to {addr} was let through");
                }
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                    refused += 1;
                }
            }
            println!("{} {refused}", t.elapsed().as_nanos());
        }
        Some("dnsflood") => {
            // COUNT A queries for NAME with WINDOW in flight at once;
            // prints the time and how many were answered.
            let server: SocketAddr = args[1].parse()?;
            let name = &args[2];
            let count = n(3)?;
            let window = n(4)?;
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 1500];
            let t = Instant::now();
            let (mut sent, mut answered) = (0u64, 0u64);
            while sent < count.min(window) {
                s.send(&query(sent as u16, name))?;
                sent += 1;
            }
            while answered < sent {
                let Ok(n) = s.recv(&mut buf) else {
                    break; // timed out: the rest are unanswered
                };
                // Only a NOERROR answer with a record counts.
                if n < 12 || buf[3] & 0x0f != 0 || buf[6..8] == [0, 0] {
                    bail!(
                        "DNS flood: an answer that is not one ({:02x?})",
                        &buf[..n.min(12)]
                    );
                }
                answered += 1;
                if sent < count {
                    s.send(&query(sent as u16, name))?;
                    sent += 1;
                }
            }
            println!("{} {answered}", t.elapsed().as_nanos());
        }
        Some("dns") => {
            // Sequential A queries for NAME; prints each latency in ns.
            let server: SocketAddr = args[1].parse()?;
            let name = &args[2];
            let count = n(3)?;
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            let mut buf = [0u8; 1500];
            for i in 0..count {
                let q = query(i as u16, name);
                let t = Instant::now();
                s.send(&q)?;
                s.recv(&mut buf)?;
                let _ = writeln!(out, "{}", t.elapsed().as_nanos());
            }
            print!("{out}");
        }
        _ => bail!("client tcp|udp|bulk|storm|dns|dnsflood ..."),
    }
    Ok(())
}

/// SO_LINGER with a zero timeout: close() sends a reset and leaves no
/// TIME_WAIT behind.
pub(crate) fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and option buffer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// A DNS query for `name` (A, recursion desired).
pub(crate) fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

// ---------------------------------------------------------------- servers

/// Accepts and closes connections on `addr` (connect cost), and sinks bulk
/// data on `bulk`, inside `ns`, until the process ends.
pub(crate) fn serve(ns: &Netns) -> Result<()> {
    let (a, b): (SocketAddr, SocketAddr) = (TARGET.parse()?, BULK.parse()?);
    let listener = ns.run(move || listen(a))?;
    let bulk = ns.run(move || listen(b))?;
    thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let named: SocketAddr = NAMED.parse()?;
    let named = ns.run(move || listen(named))?;
    thread::spawn(move || {
        for c in named.incoming() {
            drop(c);
        }
    });
    thread::spawn(move || {
        for c in bulk.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                let mut buf = vec![0u8; 1 << 16];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                let _ = c.write_all(b"k");
            });
        }
    });
    // A UDP receiver, so that UDP connect() has a destination that exists.
    let u: SocketAddr = TARGET.parse()?;
    let sock = ns.run(move || Ok(UdpSocket::bind(u)?))?;
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while sock.recv(&mut buf).is_ok() {}
    });
    Ok(())
}

/// A TCP listener with a deep accept queue (std's is 128): a burst of
/// connects must not overflow it, or SYN retransmits (a second each) would
/// swamp what is measured.
pub(crate) fn listen(addr: SocketAddr) -> Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        bail!("IPv4 only")
    };
    // SAFETY: plain syscalls on a socket we own; sockaddr_in is plain data.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), len) != 0
            || libc::listen(fd, 4096) != 0
        {
            bail!("listen on {addr}: {}", std::io::Error::last_os_error());
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}
