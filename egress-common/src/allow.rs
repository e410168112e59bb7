//! `ALLOW_V4` and `ALLOW_V6`: the allowed prefixes of every policy's
//! table, and their keys, built the same way by both halves.

/// `LpmTrie<V4Key, u32 portset id>`: allowed IPv4 prefixes.
pub const ALLOW_V4: &str = "ALLOW_V4";
/// `LpmTrie<V6Key, u32 portset id>`: allowed IPv6 prefixes.
pub const ALLOW_V6: &str = "ALLOW_V6";

/// Entries in each allow trie.
pub const MAX_ALLOW_ENTRIES: u32 = 4 * 1024 * 1024;

/// Data part of an IPv4 allow-trie key: table id (big endian), then the address.
/// The trie's prefix length counts the 32 table bits too.
pub type V4Key = [u8; 8];
/// Data part of an IPv6 allow-trie key: table id (big endian), then the address.
pub type V6Key = [u8; 20];
/// Bits of the table id at the head of every trie key.
pub const TABLE_BITS: u32 = 32;

/// The key data of IPv4 address `addr` in table `table`.
#[inline(always)]
pub fn v4_key(table: u32, addr: &[u8; 4]) -> V4Key {
    let t = table.to_be_bytes();
    [t[0], t[1], t[2], t[3], addr[0], addr[1], addr[2], addr[3]]
}

/// The key data of IPv6 address `addr` in table `table`.
#[inline(always)]
pub fn v6_key(table: u32, addr: &[u8; 16]) -> V6Key {
    let mut data = [0; 20];
    data[..4].copy_from_slice(&table.to_be_bytes());
    data[4..].copy_from_slice(addr);
    data
}
