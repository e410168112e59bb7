//! Reading the name a connection's first bytes present: the server_name
//! of a TLS ClientHello, or the Host of a plain HTTP request. The bytes
//! are a copy in `egress_common::Hello::data` (see `names`); every index
//! into them is masked to the buffer, and a loop that stops at a match
//! passes its index through memory (`launder`), so that the verifier
//! checks the code after it once, not once per place it could stop.
//!
//! What is not read whole is never passed as a name:
//! - a ClientHello split over several TLS records, one with lengths that
//!   disagree, more than `MAX_EXTENSIONS` extensions, or two server_name
//!   entries;
//! - a ClientHello offering Encrypted Client Hello (its outer server_name
//!   is not the name the server answers for);
//! - an HTTP request whose Host is not its first header line (RFC 9110
//!   asks clients to send it first; curl, Python, Go and Node do).

use egress_common::{presented, HELLO_LEN};

/// Indexes are masked with this: every read stays inside the buffer (which
/// has 8 bytes of slack past `HELLO_LEN`).
const MASK: usize = HELLO_LEN - 1;
/// Extensions a ClientHello may carry (browsers send about 20).
const MAX_EXTENSIONS: u32 = 64;
/// Bytes an HTTP request line may take.
const MAX_REQUEST_LINE: usize = 8192;
/// Bytes of header lines searched for the Host line.
const MAX_HEADERS: usize = 1024;
/// "\nhost:", the last six bytes of the rolling window (oldest highest).
const HOST: u64 = 0x0a_68_6f_73_74_3a;
/// What makes the letters of "HOST" lower case (bit 5 of each letter).
const CASE: u64 = 0x00_20_20_20_20_00;
/// In `Bounds::hits`: the blank line that ends the header lines was seen.
const ENDED: u32 = 1 << 16;
/// "\n\r\n": a blank line that ends the header lines.
const END: u64 = 0x0a_0d_0a;
/// " HTTP/1.", the eight bytes that end a request line before its minor
/// version and CRLF (as `word` reads them).
const VERSION: u64 = u64::from_le_bytes(*b" HTTP/1.");
/// Longest name read (a DNS name is at most 253 bytes).
pub const MAX_NAME: usize = 253;

/// What the first bytes say.
#[derive(Clone, Copy)]
pub struct Seen {
    /// `presented::TLS` or `presented::HTTP` with a name at `off..off+len`;
    /// else what was presented instead.
    pub what: u8,
    /// More bytes are needed to tell (the first write was cut short).
    pub partial: bool,
    pub off: usize,
    pub len: usize,
}

impl Seen {
    const PARTIAL: Seen = Seen {
        what: 0,
        partial: true,
        off: 0,
        len: 0,
    };

    const fn no(what: u8) -> Seen {
        Seen {
            what,
            partial: false,
            off: 0,
            len: 0,
        }
    }
}

/// The byte at `i`. The mask is kept from the compiler (`opaque`), which
/// would drop it where it can prove it redundant from facts the verifier
/// does not keep (`p < end <= HELLO_LEN`).
#[inline(always)]
fn at(d: &[u8; HELLO_LEN + 8], i: usize) -> u8 {
    d[opaque(i) & MASK]
}

#[inline(always)]
fn opaque(i: usize) -> usize {
    core::hint::black_box(i)
}

#[inline(always)]
fn be16(d: &[u8; HELLO_LEN + 8], i: usize) -> usize {
    (usize::from(at(d, i)) << 8) | usize::from(at(d, i + 1))
}

/// The eight bytes at `i`.
#[inline(always)]
fn word(d: &[u8; HELLO_LEN + 8], i: usize) -> u64 {
    // SAFETY: `i` is masked into the buffer, which has 8 bytes of slack.
    unsafe { core::ptr::read_unaligned(d.as_ptr().add(opaque(i) & MASK).cast::<u64>()) }
}

/// Whether one of the bytes of `w` is a line feed.
#[inline(always)]
fn has_newline(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = w ^ (ONES * u64::from(b'\n'));
    x.wrapping_sub(ONES) & !x & (ONES << 7) != 0
}

/// Cells of the scratch map: where `n` (the bytes that are the
/// connection's) is read afresh, where a value is laundered, and where the
/// Host lines found are counted (`hits`) and placed (`at`).
#[derive(Clone, Copy)]
pub struct Bounds {
    pub n: *const u32,
    pub slot: *mut u32,
    pub hits: *mut u32,
    pub at: *mut u32,
}

impl Bounds {
    /// `n`, as a value the verifier knows nothing of but its bound.
    #[inline(always)]
    fn n(&self) -> usize {
        // SAFETY: a cell of this CPU's scratch map value.
        (unsafe { core::ptr::read_volatile(self.n) } as usize) & (HELLO_LEN * 2 - 1)
    }

    #[inline(always)]
    fn put(&self, cell: *mut u32, v: u32) {
        // SAFETY: a cell of this CPU's scratch map value.
        unsafe { core::ptr::write_volatile(cell, v) }
    }

    #[inline(always)]
    fn get(&self, cell: *mut u32) -> u32 {
        // SAFETY: a cell of this CPU's scratch map value.
        unsafe { core::ptr::read_volatile(cell) }
    }

    /// `v`, as a value the verifier knows nothing of but its mask:
    /// written to and read back from the scratch map.
    #[inline(always)]
    fn launder(&self, v: usize) -> usize {
        // SAFETY: a cell of this CPU's scratch map value.
        unsafe {
            core::ptr::write_volatile(self.slot, v as u32);
            core::ptr::read_volatile(self.slot) as usize & MASK
        }
    }
}

/// Reads `d[..n]` (`n` at most `HELLO_LEN`, in `b`), the first bytes a
/// connection sent.
#[inline(always)]
pub fn read(d: &[u8; HELLO_LEN + 8], b: Bounds) -> Seen {
    let n = b.n();
    if n == 0 {
        return Seen::PARTIAL;
    }
    if at(d, 0) == 0x16 {
        return tls(d, n);
    }
    http(d, b)
}

/// A TLS record carrying a ClientHello: its server_name.
#[inline(always)]
fn tls(d: &[u8; HELLO_LEN + 8], n: usize) -> Seen {
    const UNREAD: Seen = Seen::no(presented::TLS_UNREAD);
    if n < 9 {
        return Seen::PARTIAL;
    }
    let record = be16(d, 3);
    // A handshake record (0x16), TLS major version 3, a ClientHello (1)
    // that this one record holds whole.
    if at(d, 1) != 3 || at(d, 5) != 1 || at(d, 6) != 0 {
        return UNREAD;
    }
    let hello = be16(d, 7);
    if hello + 4 > record {
        return UNREAD;
    }
    let end = 9 + hello;
    if end > HELLO_LEN {
        return UNREAD;
    }
    if n < end {
        return Seen::PARTIAL;
    }
    // Version (2), random (32), then the session id.
    let mut p = 9 + 2 + 32;
    let session = usize::from(at(d, p));
    if session > 32 {
        return UNREAD;
    }
    p += 1 + session;
    p += 2 + be16(d, p);
    if p >= end {
        return UNREAD;
    }
    p += 1 + usize::from(at(d, p));
    if p + 2 > end {
        // No extensions: no server_name.
        return Seen::no(presented::TLS_NO_SNI);
    }
    let extensions_end = p + 2 + be16(d, p);
    if extensions_end != end {
        return UNREAD;
    }
    p += 2;
    let mut name = Seen::no(presented::TLS_NO_SNI);
    let mut i = 0;
    while i < MAX_EXTENSIONS {
        if p >= end {
            return name;
        }
        if p + 4 > end {
            return UNREAD;
        }
        let kind = be16(d, p);
        let len = be16(d, p + 2);
        p += 4;
        if p + len > end {
            return UNREAD;
        }
        // encrypted_client_hello, its drafts' code points (0xfe08 to
        // 0xfe0d) and ESNI's (0xffce)
        if (0xfe08..=0xfe0d).contains(&kind) || kind == 0xffce {
            return Seen::no(presented::TLS_ECH);
        }
        if kind == 0 {
            // server_name: one host_name entry (type 0), filling the list.
            let list = be16(d, p);
            let entry = be16(d, p + 3);
            if name.what != presented::TLS_NO_SNI
                || list + 2 != len
                || at(d, p + 2) != 0
                || entry + 3 != list
                || entry == 0
                || entry > MAX_NAME
            {
                return UNREAD;
            }
            name = Seen {
                what: presented::TLS,
                partial: false,
                off: p + 5,
                len: entry,
            };
        }
        p += len;
        i += 1;
    }
    if p >= end {
        return name;
    }
    UNREAD
}

/// A plain HTTP request: `METHOD target HTTP/1.x`, and its one `Host:`
/// line. Nothing past `n` is read: the buffer holds an
/// earlier connection's bytes there.
///
/// Each loop compares its index with a fresh read of `n` (`b.n()`), never
/// with a value used after the loop: a comparison narrows the range the
/// verifier keeps of both sides, and a value narrowed differently at each
/// turn would make it check what follows the loop once per turn.
#[inline(always)]
fn http(d: &[u8; HELLO_LEN + 8], b: Bounds) -> Seen {
    // Cut short: a later write may complete it (the request line and the
    // Host line fit well within `HELLO_LEN`).
    let more = if b.n() < HELLO_LEN {
        Seen::PARTIAL
    } else {
        Seen::no(presented::HTTP_NO_HOST)
    };
    // A method (upper-case letters), a space, and a target in origin form
    // ("/..." or "*"): a server takes an absolute target ("http://other/")
    // over the Host line.
    let mut m = 0;
    while m < 16 {
        if m >= b.n() || !at(d, m).is_ascii_uppercase() {
            break;
        }
        m += 1;
    }
    let m = b.launder(m);
    if m == 0 {
        return Seen::no(presented::OTHER);
    }
    if m + 2 > b.n() {
        return more;
    }
    if at(d, m) != b' ' || !matches!(at(d, m + 1), b'/' | b'*') {
        return Seen::no(presented::HTTP_NO_HOST);
    }
    // The line's end: eight bytes at a time (the verifier follows a
    // loop's every turn), then the byte.
    let first = m + 2;
    let mut w = 0;
    while w < MAX_REQUEST_LINE / 8 {
        if w * 8 >= b.n().wrapping_sub(first) || has_newline(word(d, first + w * 8)) {
            break;
        }
        w += 1;
    }
    let from = b.launder(first + b.launder(w) * 8);
    let mut k = 0;
    while k < 8 {
        if k >= b.n().wrapping_sub(from) || at(d, from + k) == b'\n' {
            break;
        }
        k += 1;
    }
    let i = b.launder(from + b.launder(k));
    if i >= b.n() {
        return more;
    }
    // The request line ends " HTTP/1.x\r\n" (not HTTP/0.9, which has no
    // header lines, nor a bare line feed, which some servers take and
    // others do not).
    if at(d, i) != b'\n' || at(d, i - 1) != b'\r' || i < m + 12 {
        return Seen::no(presented::HTTP_NO_HOST);
    }
    if word(d, i - 10) != VERSION || !at(d, i - 2).is_ascii_digit() {
        return Seen::no(presented::HTTP_NO_HOST);
    }
    // The header lines, byte by byte (up to `MAX_HEADERS` bytes), for
    // "\nHost:" in any case, until the blank line that ends them. A
    // rolling window of the last six bytes, no state but memory: each
    // Host line's place is written to `b.at`, and counted in `b.hits`.
    // From the request line's "\r\n" (or "\n"), so that a request with
    // no header line ends at once.
    let i = i - 1;
    b.put(b.hits, 0);
    let mut window: u64 = 0;
    let mut k = 0;
    while k < MAX_HEADERS {
        if k >= b.n().wrapping_sub(i) {
            break;
        }
        window = ((window << 8) | u64::from(at(d, i + k))) & 0xffff_ffff_ffff;
        if window | CASE == HOST {
            b.put(b.at, (i + k + 1) as u32);
            b.put(b.hits, b.get(b.hits) + 1);
        }
        // A blank line, CRLF or a bare line feed: the header lines end.
        if window & 0xffff == 0x0a0a || window & 0xff_ffff == END {
            b.put(b.hits, b.get(b.hits) | ENDED);
            break;
        }
        k += 1;
    }
    let k = b.launder(k);
    let hits = b.get(b.hits);
    // Out of bytes before the blank line: a later write may bring the
    // Host line, or a second one.
    if hits & ENDED == 0 && i + k >= b.n() {
        return more;
    }
    let hits = hits & !ENDED;
    if hits == 0 {
        return Seen::no(presented::HTTP_NO_HOST);
    }
    if hits > 1 {
        // Which one a server takes is its own choice.
        return Seen::no(presented::HTTP_NO_HOST);
    }
    let spaces = b.get(b.at) as usize & MASK;
    let mut k = 0;
    while k < 16 {
        if k >= b.n().wrapping_sub(spaces) || !matches!(at(d, spaces + k), b' ' | b'\t') {
            break;
        }
        k += 1;
    }
    let start = b.launder(spaces + b.launder(k));
    let mut e = 0;
    while e <= MAX_NAME {
        if e >= b.n().wrapping_sub(start) {
            break;
        }
        let c = at(d, start + e);
        if matches!(c, b':' | b'\r' | b'\n' | b' ' | b'\t' | b'[' | b'/' | 0) {
            break;
        }
        e += 1;
    }
    let len = b.launder(e);
    if start + len >= b.n() {
        return more;
    }
    // The name ends the line, or a port follows it: "Host: a.test junk"
    // is not a name.
    let c = at(d, start + len);
    if len == 0 || len > MAX_NAME || !matches!(c, b':' | b'\r' | b'\n') {
        return Seen::no(presented::HTTP_NO_HOST);
    }
    Seen {
        what: presented::HTTP,
        partial: false,
        off: start,
        len,
    }
}
