//! A small authoritative DNS server for `.test` names, on UDP inside a test
//! namespace. Answers A and AAAA from a table the test can change, NXDOMAIN
//! for anything else, and records every name it was asked.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use anyhow::Result;

use crate::netns::Netns;

pub type Zone = Arc<Mutex<HashMap<String, (Vec<IpAddr>, u32)>>>;

pub struct DnsServer {
    pub addr: SocketAddr,
    pub zone: Zone,
    pub asked: Arc<Mutex<Vec<String>>>,
    /// The id of each query received.
    pub ids: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
}

/// The question's name (lower case, no trailing dot), type, and the offset after it.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

fn answer(q: &[u8], zone: &Zone) -> Option<(String, Vec<u8>)> {
    let (name, qtype, end) = question(q)?;
    let mut r = q[..end].to_vec();
    r[2] = 0x84 | (q[2] & 0x01); // QR, AA, RD copied
    r[3] = 0x80; // RA, NOERROR
    r[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
    let zone = zone.lock().unwrap();
    let Some((ips, ttl)) = zone.get(&name) else {
        r[3] |= 3; // NXDOMAIN
        return Some((name, r));
    };
    let mut count = 0u16;
    for ip in ips {
        let (t, rdata): (u16, Vec<u8>) = match ip {
            IpAddr::V4(a) => (1, a.octets().to_vec()),
            IpAddr::V6(a) => (28, a.octets().to_vec()),
        };
        if t != qtype {
            continue;
        }
        r.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
        count += 1;
    }
    r[6..8].copy_from_slice(&count.to_be_bytes());
    Some((name, r))
}

impl DnsServer {
    /// Serves `zone` on UDP `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: &str, zone: &[(&str, &[&str], u32)]) -> Result<DnsServer> {
        let addr: SocketAddr = addr.parse()?;
        let zone: Zone = Arc::new(Mutex::new(
            zone.iter()
                .map(|(n, ips, ttl)| {
                    (
                        n.to_string(),
                        (ips.iter().map(|i| i.parse().unwrap()).collect(), *ttl),
                    )
                })
                .collect(),
        ));
        let sock = ns.run(move || Ok(UdpSocket::bind(addr)?))?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let ids = Arc::new(Mutex::new(Vec::new()));
        let (z, s, a, i) = (zone.clone(), stop.clone(), asked.clone(), ids.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((name, reply)) = answer(&buf[..n], &z) {
                    a.lock().unwrap().push(name);
                    i.lock().unwrap().push(u16::from_be_bytes([buf[0], buf[1]]));
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        Ok(DnsServer {
            addr,
            zone,
            asked,
            ids,
            stop,
        })
    }

    /// Changes the answer for `name`.
    pub fn set(&self, name: &str, ips: &[&str], ttl: u32) {
        self.zone.lock().unwrap().insert(
            name.to_string(),
            (ips.iter().map(|i| i.parse().unwrap()).collect(), ttl),
        );
    }

    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
