//! The allow tries' entries, byte for byte, and the in-place update of a
//! live table's admitted addresses (failing closed: what cannot be written
//! is deleted, and retried on the next update).

use std::{collections::BTreeMap, os::fd::BorrowedFd};

use egress_common::{allow, TABLE_BITS, UNIX_KEY_LEN};

use super::sys;
use crate::{compile::Entry, policy::unix::UnixEntry};

/// An allow-trie key as the kernel lays it out: prefix length, then the
/// table id and the address, big-endian.
#[repr(C)]
pub(super) struct TrieKey<const N: usize> {
    prefix_len: u32,
    data: [u8; N],
}

pub(super) trait Prefix: Copy + Ord {
    type Key;
    fn key(table: u32, addr: Self, len: u8) -> Self::Key;
}

impl Prefix for u32 {
    type Key = TrieKey<8>;
    fn key(table: u32, addr: u32, len: u8) -> TrieKey<8> {
        TrieKey {
            prefix_len: TABLE_BITS + u32::from(len),
            data: allow::v4_key(table, &addr.to_be_bytes()),
        }
    }
}

impl Prefix for u128 {
    type Key = TrieKey<20>;
    fn key(table: u32, addr: u128, len: u8) -> TrieKey<20> {
        TrieKey {
            prefix_len: TABLE_BITS + u32::from(len),
            data: allow::v6_key(table, &addr.to_be_bytes()),
        }
    }
}

/// What to write (new or changed entries) and what to remove (prefixes
/// gone) to bring `old` to `new`; both sorted by prefix.
pub(super) fn diff<A: Ord + Copy>(
    old: &[Entry<A>],
    new: &[Entry<A>],
) -> (Vec<Entry<A>>, Vec<Entry<A>>) {
    let (mut write, mut remove) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) => (o.addr, o.len).cmp(&(n.addr, n.len)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                remove.push(old[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                write.push(new[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if old[i].spec != new[j].spec {
                    write.push(new[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    (write, remove)
}

/// `entries` with their spec index replaced by the port set id `ids` gives.
pub(super) fn with_ids<A>(entries: Vec<Entry<A>>, ids: &[u32]) -> Vec<Entry<A>> {
    entries
        .into_iter()
        .map(|e| Entry {
            spec: ids[e.spec as usize],
            ..e
        })
        .collect()
}

pub(super) fn values<A>(entries: &[Entry<A>]) -> Vec<u32> {
    entries.iter().map(|e| e.spec).collect()
}

/// The values of prefix entries: the port set id of each one's spec.
pub(super) fn values_of<A>(entries: &[Entry<A>], ids: &[u32]) -> Vec<u32> {
    entries.iter().map(|e| ids[e.spec as usize]).collect()
}

/// The admitted entries whose address is not also a prefix entry.
pub(super) fn extra<A: Ord + Copy>(admitted: &[Entry<A>], prefixes: &[Entry<A>]) -> Vec<Entry<A>> {
    admitted
        .iter()
        .filter(|e| find(prefixes, e).is_none())
        .copied()
        .collect()
}

/// The prefix entry with `e`'s prefix, if any.
pub(super) fn find<'a, A: Ord + Copy>(
    prefixes: &'a [Entry<A>],
    e: &Entry<A>,
) -> Option<&'a Entry<A>> {
    prefixes
        .binary_search_by(|p| (p.addr, p.len).cmp(&(e.addr, e.len)))
        .ok()
        .map(|i| &prefixes[i])
}

/// The `UNIX_ALLOW` keys of `entries` in `table`.
pub(super) fn unix_keys(table: u32, entries: &[UnixEntry]) -> Vec<TrieKey<UNIX_KEY_LEN>> {
    entries
        .iter()
        .map(|e| TrieKey {
            prefix_len: TABLE_BITS + e.bits,
            data: {
                let mut data = [0u8; UNIX_KEY_LEN];
                data[..4].copy_from_slice(&table.to_be_bytes());
                data[4..].copy_from_slice(&e.name);
                data
            },
        })
        .collect()
}

pub(super) fn keys<A: Prefix>(table: u32, entries: &[Entry<A>]) -> Vec<A::Key> {
    entries
        .iter()
        .map(|e| A::key(table, e.addr, e.len))
        .collect()
}

/// `entries` less those without a port set (id 0).
pub(super) fn writable<A>(entries: Vec<Entry<A>>) -> Vec<Entry<A>> {
    entries.into_iter().filter(|e| e.spec != 0).collect()
}

/// Brings one family's admitted entries in the kernel from `held` to `new`
/// (both sorted, with port set ids), failing closed: what is taken away
/// goes first (deletes, and prefix entries given back where a admitted
/// address was also one), then what is added or changed; an entry that
/// cannot be written or given back is deleted. Returns what the kernel may
/// hold now (spec 0 where it is not known: the next update writes or
/// removes it again), and the first error.
pub(super) fn sync_admitted<A: Prefix>(
    fd: BorrowedFd<'_>,
    table: u32,
    held: &[Entry<A>],
    new: &[Entry<A>],
    prefixes: &[Entry<A>],
    prefix_ids: &[u32],
) -> (Vec<Entry<A>>, Option<anyhow::Error>) {
    let (write, gone) = diff(held, new);
    let mut now: BTreeMap<(A, u8), u32> = new.iter().map(|e| ((e.addr, e.len), e.spec)).collect();
    let mut first: Option<anyhow::Error> = None;
    let unknown = |now: &mut BTreeMap<(A, u8), u32>, e: &Entry<A>| {
        now.insert((e.addr, e.len), 0);
    };
    // Taken away: a admitted address that was also a prefix entry gets the
    // prefix entry back; the others are deleted.
    let (back, delete): (Vec<Entry<A>>, Vec<Entry<A>>) =
        gone.into_iter().partition(|e| find(prefixes, e).is_some());
    let back: Vec<Entry<A>> = back
        .into_iter()
        .map(|e| Entry {
            spec: prefix_ids[find(prefixes, &e).expect("partitioned").spec as usize],
            ..e
        })
        .collect();
    if let Err(f) = sys::delete_each(fd, &keys(table, &delete)) {
        f.indices
            .iter()
            .for_each(|&i| unknown(&mut now, &delete[i]));
        first.get_or_insert(anyhow::Error::new(f).context("removing admitted allow entries"));
    }
    let failed_back = write_or_delete(fd, table, &back, &mut first);
    // Given back or not, the prefix entry's address is not known to hold
    // its prefix's ports until a write succeeds: retry next time.
    failed_back.iter().for_each(|e| unknown(&mut now, e));
    // Added and changed: an entry that cannot be written is deleted; one
    // whose address is a prefix entry is then retried next time.
    for e in write_or_delete(fd, table, &write, &mut first) {
        if find(prefixes, &e).is_some() || e.spec == 0 {
            unknown(&mut now, &e);
        } else {
            now.remove(&(e.addr, e.len));
        }
    }
    let now = now
        .into_iter()
        .map(|((addr, len), spec)| Entry { addr, len, spec })
        .collect();
    (now, first)
}

/// Writes `entries`; each that fails is deleted instead (fail closed).
/// Returns those that failed, with spec 0 for those whose delete failed too.
pub(super) fn write_or_delete<A: Prefix>(
    fd: BorrowedFd<'_>,
    table: u32,
    entries: &[Entry<A>],
    first: &mut Option<anyhow::Error>,
) -> Vec<Entry<A>> {
    let Err(f) = sys::update_each(fd, &keys(table, entries), &values(entries)) else {
        return Vec::new();
    };
    let failed: Vec<Entry<A>> = f.indices.iter().map(|&i| entries[i]).collect();
    first.get_or_insert(anyhow::Error::new(f).context("writing allow entries"));
    let mut out = failed.clone();
    if let Err(d) = sys::delete_each(fd, &keys(table, &failed)) {
        d.indices.iter().for_each(|&i| out[i].spec = 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: u32, len: u8, spec: u32) -> Entry<u32> {
        Entry { addr, len, spec }
    }

    /// The port set id the trie gives 203.0.113.`last` in table 1.
    fn at(fd: BorrowedFd<'_>, last: u8) -> Option<u32> {
        sys::tests::lookup(fd, u32::key(1, u32::from_be_bytes([203, 0, 113, last]), 32))
    }

    fn host(last: u8, spec: u32) -> Entry<u32> {
        e(u32::from_be_bytes([203, 0, 113, last]), 32, spec)
    }

    #[test]
    fn admitted_entries_fail_closed_when_the_trie_is_full() {
        use std::os::fd::AsFd;
        let map = sys::tests::lpm_trie(12, 3);
        let fd = map.as_fd();
        // The prefix entry 203.0.113.1 (port set 7) is in the table.
        let prefixes = [host(1, 0)];
        sys::update_each(fd, &keys(1, &prefixes), &[7u32]).unwrap();
        // Four admitted addresses, one of them the prefix entry's: the trie
        // holds three entries, so the fourth cannot be written.
        let new = [host(1, 9), host(2, 9), host(3, 9), host(4, 9)];
        let (now, err) = sync_admitted(fd, 1, &[], &new, &prefixes, &[7]);
        assert!(err.is_some());
        assert_eq!(now, [host(1, 9), host(2, 9), host(3, 9)]);
        assert_eq!(
            [at(fd, 1), at(fd, 2), at(fd, 3), at(fd, 4)],
            [Some(9), Some(9), Some(9), None]
        );
        // All gone: the prefix entry gets its own ports back.
        let (now, err) = sync_admitted(fd, 1, &now, &[], &prefixes, &[7]);
        assert!(err.is_none(), "{err:?}");
        assert!(now.is_empty());
        assert_eq!([at(fd, 1), at(fd, 2), at(fd, 3)], [Some(7), None, None]);
    }

    #[test]
    fn diff_writes_new_and_changed_and_removes_gone() {
        let old = [e(1, 32, 1), e(2, 32, 1), e(2 << 8, 24, 2), e(9, 32, 1)];
        let new = [e(0, 32, 1), e(2, 32, 3), e(2 << 8, 24, 2), e(10, 32, 1)];
        let (write, remove) = diff(&old, &new);
        assert_eq!(write, [e(0, 32, 1), e(2, 32, 3), e(10, 32, 1)]);
        assert_eq!(remove, [e(1, 32, 1), e(9, 32, 1)]);
        assert_eq!(diff(&new, &new), (vec![], vec![]));
    }
}
