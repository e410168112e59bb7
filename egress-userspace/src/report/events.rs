//! Deny and audit events: draining the ring buffer, and describing each
//! event as one JSON line.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{MapData, RingBuf};
use egress_common::{
    hook, presented, reason, Event, NameEvent, UnixEvent, AF_INET, AF_INET6, AF_UNIX,
};
use tokio::io::unix::AsyncFd;

/// One ring-buffer record: an event, and for a UNIX socket the name it
/// was aimed at (`sun_path` as given: an abstract name starts with 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub event: Event,
    pub unix: Option<Vec<u8>>,
    /// For a connection refused for the name it presented: what it
    /// presented.
    pub presented: Option<Presented>,
}

/// What a connection's first bytes presented (`NameEvent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presented {
    /// `egress_common::presented`.
    pub what: u8,
    /// The name as the kernel read it (lower case), cut at
    /// `EVENT_NAME_LEN` bytes.
    pub name: Vec<u8>,
    pub cut: bool,
    /// The socket's cookie.
    pub cookie: u64,
}

impl Presented {
    /// The name, escaped: printable ASCII as it is, other bytes as
    /// `\xNN`, and `...` when it was cut.
    pub fn name(&self) -> Option<String> {
        if self.name.is_empty() {
            return None;
        }
        let mut out = String::new();
        for &b in &self.name {
            if b.is_ascii_graphic() && b != b'\\' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        if self.cut {
            out.push_str("...");
        }
        Some(out)
    }

    /// What was presented, in a word.
    pub fn kind(&self) -> &'static str {
        match self.what {
            presented::TLS => "tls_server_name",
            presented::HTTP => "http_host",
            presented::TLS_NO_SNI => "tls_without_server_name",
            presented::TLS_ECH => "tls_encrypted_client_hello",
            presented::TLS_UNREAD => "tls_unreadable",
            presented::HTTP_NO_HOST => "http_without_host",
            presented::DATAGRAM => "datagram",
            _ => "no_name",
        }
    }
}

impl std::ops::Deref for Record {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl From<Event> for Record {
    fn from(event: Event) -> Record {
        Record {
            event,
            unix: None,
            presented: None,
        }
    }
}

/// Decodes one ring-buffer record (an `Event`, or a `UnixEvent` when its
/// family is `AF_UNIX`).
pub fn decode(bytes: &[u8]) -> Option<Record> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain old data and the slice is long enough.
    let event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    if event.reason == reason::NAME_NOT_AT_ADDRESS
        && event.hook == hook::PACKET_EGRESS
        && event.protocol == 6
    {
        if bytes.len() < std::mem::size_of::<NameEvent>() {
            return None;
        }
        // SAFETY: as above, for the longer NameEvent.
        let n = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<NameEvent>()) };
        // The kernel judged this away from its process (a connection's
        // first bytes): the name of the process that made the connection,
        // read now, while it is there (its socket is destroyed next).
        let mut event = event;
        if event.comm == [0; 16] && event.tgid != 0 {
            if let Ok(c) = std::fs::read(format!("/proc/{}/comm", event.tgid)) {
                let c = c.strip_suffix(b"\n").unwrap_or(&c);
                let len = c.len().min(15);
                event.comm[..len].copy_from_slice(&c[..len]);
            }
        }
        let len = usize::from(n.len).min(n.name.len());
        return Some(Record {
            presented: Some(Presented {
                what: n.presented,
                name: n.name[..len].to_vec(),
                cut: n.cut != 0,
                cookie: n.cookie,
            }),
            ..event.into()
        });
    }
    if event.family != AF_UNIX {
        return Some(event.into());
    }
    if bytes.len() < std::mem::size_of::<UnixEvent>() {
        return None;
    }
    // SAFETY: as above, for the longer UnixEvent.
    let u = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<UnixEvent>()) };
    let len = usize::from(u.len).min(u.name.len());
    Some(Record {
        unix: Some(u.name[..len].to_vec()),
        ..event.into()
    })
}

/// A UNIX socket name for people: a path up to its NUL; an abstract name
/// as `@name`, with its other bytes escaped as `\xNN` where not printable.
pub fn unix_name(raw: &[u8]) -> String {
    match raw.split_first() {
        Some((0, rest)) => {
            let mut out = String::from("@");
            for &b in rest {
                if b.is_ascii_graphic() || b == b' ' {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            out
        }
        _ => {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        }
    }
}

/// The ring buffer, readable from async code.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<EventStream> {
        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // for as long as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
        Ok(EventStream { ring })
    }

    /// Everything in the buffer now, without waiting.
    pub fn drain(&mut self) -> Vec<Record> {
        let ring = self.ring.get_mut();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(e) = decode(&item) {
                out.push(e);
            }
        }
        cut_refused(&out);
        out
    }

    /// Waits until events arrive, then returns them.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<Record>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(e) = decode(&item) {
                    out.push(e);
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                cut_refused(&out);
                return Ok(out);
            }
        }
    }
}

/// Destroys the sockets of connections refused for the name they
/// presented: the kernel drops what they send, and their clients would
/// otherwise wait for their own timeouts. (Audited ones go on.)
fn cut_refused(records: &[Record]) {
    let cookies: std::collections::HashSet<u64> = records
        .iter()
        .filter(|r| r.verdict == egress_common::verdict::DENIED)
        .filter_map(|r| r.presented.as_ref().map(|p| p.cookie))
        .filter(|c| *c != 0)
        .collect();
    if cookies.is_empty() {
        return;
    }
    if let Err(e) = crate::kernel::diag::destroy_by_cookie(&cookies) {
        tracing::debug!("closing connections refused for their name: {e}");
    }
}

/// The destination address of an event (none for a refused socket).
pub fn address(e: &Event) -> Option<IpAddr> {
    if e.hook == hook::SOCK_CREATE || e.hook == hook::SOCKET_FAMILY || e.family == 0 {
        return None;
    }
    match e.family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            e.addr[0], e.addr[1], e.addr[2], e.addr[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(e.addr))),
        _ => None,
    }
}

/// The process name, up to its first NUL.
pub fn comm(e: &Event) -> Cow<'_, str> {
    comm_of(&e.comm)
}

/// A task name as the kernel wrote it (NUL-padded).
pub fn comm_of(c: &[u8; 16]) -> Cow<'_, str> {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end])
}

pub fn protocol_name(p: u8) -> Cow<'static, str> {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        136 => "udplite".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        255 => "raw".into(),
        n => format!("ip-proto-{n}").into(),
    }
}

pub fn hook_name(h: u8) -> &'static str {
    match h {
        hook::CONNECT4 => "connect4",
        hook::CONNECT6 => "connect6",
        hook::SENDMSG4 => "sendmsg4",
        hook::SENDMSG6 => "sendmsg6",
        hook::SOCK_CREATE => "sock_create",
        hook::SETSOCKOPT => "setsockopt",
        hook::PACKET_EGRESS => "packet_egress",
        hook::BIND4 => "bind4",
        hook::BIND6 => "bind6",
        hook::CONNECT_UNIX => "connect_unix",
        hook::SENDMSG_UNIX => "sendmsg_unix",
        hook::SOCKET_FAMILY => "socket_family",
        hook::LISTEN => "listen",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::describe::Describer;
    use std::collections::HashMap;

    #[test]
    fn decodes_an_event() {
        let mut e = Event {
            family: AF_INET,
            port: 443,
            protocol: 6,
            ..Default::default()
        };
        e.addr[..4].copy_from_slice(&[203, 0, 113, 9]);
        e.comm[..7].copy_from_slice(b"python3");
        // SAFETY: Event is plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        };
        let d = decode(bytes).unwrap();
        assert_eq!(address(&d), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(comm(&d), "python3");
        assert!(decode(&bytes[..10]).is_none());
    }

    #[test]
    fn decodes_a_unix_event_with_its_name() {
        let mut u = UnixEvent {
            event: Event {
                family: AF_UNIX,
                hook: hook::CONNECT_UNIX,
                ..Default::default()
            },
            name: [0xff; egress_common::UNIX_PATH_MAX],
            len: 4,
            _pad: [0; 3],
        };
        u.name[..4].copy_from_slice(b"\0a\nb");
        // SAFETY: UnixEvent is plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&u as *const UnixEvent).cast::<u8>(),
                std::mem::size_of::<UnixEvent>(),
            )
        };
        let r = decode(bytes).unwrap();
        assert_eq!(unix_name(r.unix.as_deref().unwrap()), "@a\\x0ab");
        // Cut short: not decoded as something else.
        assert!(decode(&bytes[..80]).is_none());
        assert_eq!(unix_name(b"/run/x.sock\0garbage"), "/run/x.sock");
        let d = Describer {
            policies: HashMap::new(),
            names: Default::default(),
            pods: Default::default(),
        };
        let j = d.json(&r);
        assert_eq!(j["path"], "@a\\x0ab");
        assert_eq!(j["protocol"], "unix");
        assert_eq!(j["hook"], "connect_unix");
    }
}
