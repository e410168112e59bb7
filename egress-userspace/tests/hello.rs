//! The kernel's reader of the name a connection presents (the eBPF crate's
//! `hello.rs`, compiled here for the host: the same source, the same
//! logic), under hostile input: every truncation, lengths that lie,
//! extensions in any order and number, mutations at random; each answer
//! checked against a plain reference reader written with slices.

#[allow(dead_code)]
#[path = "../../egress-ebpf/src/hello.rs"]
mod hello;

use egress_common::{presented, HELLO_LEN};
use proptest::prelude::*;

/// What the kernel's reader says of `bytes`: `Ok(name)` or
/// `Err(what)`, with "partial" for more bytes needed.
fn read(bytes: &[u8]) -> Result<String, String> {
    read_raw(bytes).map(|n| String::from_utf8_lossy(&n).into_owned())
}

fn read_raw(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut d = Box::new([0xa5u8; HELLO_LEN + 8]);
    let n = bytes.len().min(HELLO_LEN);
    d[..n].copy_from_slice(&bytes[..n]);
    let (n32, mut slot, mut hits, mut at) = (n as u32, 0u32, 0u32, 0u32);
    let b = hello::Bounds {
        n: &n32,
        slot: &mut slot,
        hits: &mut hits,
        at: &mut at,
    };
    let seen = hello::read(&d, b);
    if seen.partial {
        return Err("partial".into());
    }
    match seen.what {
        presented::TLS | presented::HTTP => {
            assert!(seen.off + seen.len <= n, "a name past the bytes read");
            Ok(bytes[seen.off..seen.off + seen.len].to_vec())
        }
        w => Err(format!("refused {w}")),
    }
}

/// A ClientHello: extensions (type, body) in the order given.
fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext = Vec::new();
    for (t, body) in extensions {
        ext.extend(t.to_be_bytes());
        ext.extend((body.len() as u16).to_be_bytes());
        ext.extend(body);
    }
    let mut body = vec![3, 3];
    body.extend([0x11; 32]);
    body.push(32);
    body.extend([0x22; 32]);
    body.extend([0, 4, 0x13, 1, 0x13, 2, 1, 0]);
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

fn sni(name: &[u8]) -> (u16, Vec<u8>) {
    let mut entry = vec![0];
    entry.extend((name.len() as u16).to_be_bytes());
    entry.extend(name);
    let mut list = (entry.len() as u16).to_be_bytes().to_vec();
    list.extend(entry);
    (0, list)
}

fn padding(n: usize) -> (u16, Vec<u8>) {
    (0x15, vec![0; n])
}

/// The reference: a ClientHello's server_name read with slices, `None`
/// for anything not read whole.
fn reference(d: &[u8]) -> Option<Vec<u8>> {
    let be = |s: &[u8]| usize::from(u16::from_be_bytes([s[0], s[1]]));
    if d.len() < 9 || d[0] != 0x16 || d[1] != 3 || d[5] != 1 || d[6] != 0 {
        return None;
    }
    let end = 9 + be(&d[7..]);
    if end > d.len() || end - 5 > be(&d[3..]) {
        return None;
    }
    let d = &d[..end];
    let mut p = 43;
    let session = usize::from(*d.get(p)?);
    p += 1 + session;
    p += 2 + be(d.get(p..p + 2)?);
    p += 1 + usize::from(*d.get(p)?);
    let ext_end = p + 2 + be(d.get(p..p + 2)?);
    if ext_end != end {
        return None;
    }
    p += 2;
    let mut name = None;
    while p < end {
        let (t, l) = (be(d.get(p..p + 2)?), be(d.get(p + 2..p + 4)?));
        let body = d.get(p + 4..p + 4 + l)?;
        if t == 0 {
            if name.is_some() || body.len() < 5 || be(body) + 2 != l || body[2] != 0 {
                return None;
            }
            let n = be(&body[3..]);
            if n + 3 != be(body) || n == 0 {
                return None;
            }
            name = Some(body[5..].to_vec());
        }
        p += 4 + l;
    }
    name
}

#[test]
fn a_client_hello_gives_its_name_wherever_the_extension_is() {
    for before in [0, 1, 5, 40] {
        let mut ext: Vec<(u16, Vec<u8>)> = (0..before)
            .map(|i| (0x4a4a + i, vec![i as u8; 3]))
            .collect();
        ext.push(sni(b"api.model.test"));
        ext.push(padding(1200));
        assert_eq!(
            read(&client_hello(&ext)),
            Ok("api.model.test".into()),
            "{before}"
        );
    }
}

#[test]
fn every_truncation_waits_and_nothing_more_is_read() {
    let full = client_hello(&[padding(1500), sni(b"api.model.test")]);
    for n in 0..full.len() {
        assert_eq!(read(&full[..n]), Err("partial".into()), "cut at {n}");
    }
    assert_eq!(read(&full), Ok("api.model.test".into()));
}

#[test]
fn what_hides_or_doubles_the_name_is_refused() {
    let refused = |what: u8| Err(format!("refused {what}"));
    assert_eq!(
        read(&client_hello(&[padding(10)])),
        refused(presented::TLS_NO_SNI)
    );
    for ech in [0xfe0d, 0xfe08, 0xffce] {
        let h = client_hello(&[sni(b"public.test"), (ech, vec![1; 40])]);
        assert_eq!(read(&h), refused(presented::TLS_ECH), "{ech:x}");
    }
    let two = client_hello(&[sni(b"api.model.test"), sni(b"other.test")]);
    assert_eq!(read(&two), refused(presented::TLS_UNREAD));
    // Two entries in one server_name list.
    let (_, mut list) = sni(b"api.model.test");
    let (_, more) = sni(b"other.test");
    list.extend(&more[2..]);
    let l = (list.len() - 2) as u16;
    list[..2].copy_from_slice(&l.to_be_bytes());
    assert_eq!(
        read(&client_hello(&[(0, list)])),
        refused(presented::TLS_UNREAD)
    );
    // A handshake longer than its record: split over records.
    let mut h = client_hello(&[sni(b"api.model.test")]);
    let short = (h.len() - 5 - 10) as u16;
    h[3..5].copy_from_slice(&short.to_be_bytes());
    assert_eq!(read(&h), refused(presented::TLS_UNREAD));
    // Extensions whose lengths overrun the message.
    let mut h = client_hello(&[sni(b"api.model.test"), padding(20)]);
    let n = h.len();
    h[n - 22..n - 20].copy_from_slice(&500u16.to_be_bytes());
    assert_eq!(read(&h), refused(presented::TLS_UNREAD));
    // More extensions than the reader walks.
    let many: Vec<(u16, Vec<u8>)> = (0..70)
        .map(|i| (0x1000 + i, vec![]))
        .chain([sni(b"a.test")])
        .collect();
    assert_eq!(read(&client_hello(&many)), refused(presented::TLS_UNREAD));
}

#[test]
fn http_gives_its_one_host() {
    let ok = |r: &str| read(r.as_bytes());
    assert_eq!(
        ok("GET / HTTP/1.1\r\nHost: api.model.test\r\n\r\n"),
        Ok("api.model.test".into())
    );
    assert_eq!(
        ok("POST /v1 HTTP/1.1\r\nAccept-Encoding: identity\r\nhOsT:api.model.test:443\r\nUser-Agent: x\r\n\r\n"),
        Ok("api.model.test".into())
    );
    assert_eq!(
        ok("GET / HTTP/1.1\r\nHost: api.model.test\r\n"),
        Err("partial".into())
    );
    assert_eq!(ok("GET / HTTP/1.1\r\nUser-Agent: x"), Err("partial".into()));
    let no = Err(format!("refused {}", presented::HTTP_NO_HOST));
    for r in [
        "GET http://other.test/ HTTP/1.1\r\nHost: api.model.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.model.test\r\nHost: other.test\r\n\r\n",
        "GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\nHost: api.model.test\r\n\r\n",
        "GET /\r\nHost: api.model.test\r\n\r\n",
        "GET / HTTP/1.1\nHost: api.model.test\r\n\r\n",
        "GET / HTTP/1.0\r\n\nHost: api.model.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.model.test junk\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n",
        "CONNECT other.test:443 HTTP/1.1\r\nHost: api.model.test\r\n\r\n",
    ] {
        assert_eq!(ok(r), no, "{r:?}");
    }
    assert_eq!(
        ok("hello, any name"),
        Err(format!("refused {}", presented::OTHER))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20000))]

    /// Any bytes: the reader never names what the reference does not read
    /// as a ClientHello's one server_name (and never panics).
    #[test]
    fn mutated_client_hellos_name_only_what_they_carry(
        pad in 0usize..2000,
        first in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    ) {
        let mut ext = vec![padding(pad)];
        let s = sni(b"api.model.test");
        if first { ext.insert(0, s) } else { ext.push(s) }
        let mut h = client_hello(&ext);
        for (i, b) in flips {
            let at = i.index(h.len());
            h[at] = b;
        }
        if let Ok(name) = read_raw(&h) {
            prop_assert_eq!(Some(name), reference(&h));
        }
    }

    /// Random bytes after a request line never yield a name the bytes do
    /// not hold as "\nHost:" followed by it.
    #[test]
    fn http_names_come_from_a_host_line(tail in "[ -~\r\n]{0,300}") {
        let r = format!("GET / HTTP/1.1\r\n{tail}");
        if let Ok(name) = read(r.as_bytes()) {
            let lower = r.to_ascii_lowercase();
            prop_assert!(lower.contains(&format!("\nhost:{name}")) || lower.contains(&format!("\nhost: {name}")) || lower.contains(&format!("\nhost:\t{name}")), "{r:?} -> {name}");
        }
    }
}
