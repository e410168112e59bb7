//! `UNIX_ALLOW`: the UNIX socket names each policy allows (or refuses
//! quietly).

/// `LpmTrie<UnixKey, u32 unix_entry flags>`: UNIX socket names a policy
/// allows (or refuses quietly).
pub const UNIX_ALLOW: &str = "UNIX_ALLOW";

/// Bytes of `sun_path` in a `sockaddr_un`.
pub const UNIX_PATH_MAX: usize = 108;
/// Data part of a `UNIX_ALLOW` trie key: table id (big endian), then the
/// name. A path is its bytes, NUL-padded; an abstract name is a 0 byte,
/// its length, then its bytes (up to 107), so that names differing only
/// in length differ. An exact path's entry covers its terminating NUL; a
/// directory's (ending in `/`) covers everything beneath it.
pub type UnixKey = [u8; UNIX_KEY_LEN];
/// 4 + 109 bytes, rounded up so that the trie key (with its 4-byte prefix
/// length) has no padding: batched writes lay keys end to end.
pub const UNIX_KEY_LEN: usize = 4 + 112;
/// Entries in `UNIX_ALLOW`, over all policies of one daemon.
pub const MAX_UNIX_ENTRIES: u32 = 16384;

/// Values of `UNIX_ALLOW`.
pub mod unix_entry {
    /// The policy allows this name.
    pub const ALLOW: u32 = 1;
    /// A name-service socket: refused (`reason::NAME_SERVICE_SOCKET`), no event.
    pub const NAME_SERVICE: u32 = 2;
}
