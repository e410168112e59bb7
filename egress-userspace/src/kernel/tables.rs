//! Writing compiled policies into the kernel's maps.
//!
//! A policy's prefixes live in the allow tries under a table id. A new or
//! reloaded policy gets a fresh table, written whole before `POLICIES`
//! switches to it in one update; the old table is deleted afterwards.
//! Hostname updates change only the learned addresses of a live table, in
//! place, each entry in one atomic update (many to a syscall, with the
//! kernel's batch commands).

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    os::fd::{AsFd, BorrowedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{IterableMap, MapError};
use egress_common::{PolicyInfo, PortSet, MAX_PORTSETS, TABLE_BITS, UNIX_KEY_LEN};

use super::{sys, Maps};
use crate::{
    compile::{plan::Plan, Compiled, Entry, PortSpec},
    policy::unix::UnixEntry,
};

/// The kernel maps, and what userspace last wrote into them.
pub struct Tables {
    pub maps: Maps,
    next_table: u32,
    portsets: StdHashMap<PortSpec, u32>,
    applied: StdHashMap<u32, Held>,
    /// Tables no policy refers to any more, and when they may be deleted.
    graveyard: Vec<(Instant, u32)>,
}

/// What one table holds in the kernel: the plan's prefix entries, and
/// learned addresses on top (an address that is also a prefix entry
/// replaces it while learned).
struct Held {
    plan: Arc<Plan>,
    /// The port set id of each spec of the plan's prefix entries.
    prefix_ids: Vec<u32>,
    /// The learned entries written, sorted, their `spec` a port set id (0
    /// when unknown, which no entry written has).
    v4: Vec<Entry<u32>>,
    v6: Vec<Entry<u128>>,
}

/// How long a table outlives the switch away from it. A program that read
/// the old table id just before the switch may still be looking entries up
/// in it; programs run for microseconds, so this is ample.
pub const TABLE_GRACE: Duration = Duration::from_secs(1);

/// An allow-trie key as the kernel lays it out: prefix length, then the
/// table id and the address, big-endian.
#[repr(C)]
struct TrieKey<const N: usize> {
    prefix_len: u32,
    data: [u8; N],
}

trait Prefix: Copy + Ord {
    type Key;
    fn key(table: u32, addr: Self, len: u8) -> Self::Key;
}

/// The key of `addr` (big-endian bytes) / `len` in `table`.
fn trie_key<const N: usize>(table: u32, addr: &[u8], len: u8) -> TrieKey<N> {
    let mut data = [0u8; N];
    data[..4].copy_from_slice(&table.to_be_bytes());
    data[4..].copy_from_slice(addr);
    TrieKey {
        prefix_len: TABLE_BITS + u32::from(len),
        data,
    }
}

impl Prefix for u32 {
    type Key = TrieKey<8>;
    fn key(table: u32, addr: u32, len: u8) -> TrieKey<8> {
        trie_key(table, &addr.to_be_bytes(), len)
    }
}

impl Prefix for u128 {
    type Key = TrieKey<20>;
    fn key(table: u32, addr: u128, len: u8) -> TrieKey<20> {
        trie_key(table, &addr.to_be_bytes(), len)
    }
}

/// What to write (new or changed entries) and what to remove (prefixes
/// gone) to bring `old` to `new`; both sorted by prefix.
fn diff<A: Ord + Copy>(old: &[Entry<A>], new: &[Entry<A>]) -> (Vec<Entry<A>>, Vec<Entry<A>>) {
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
fn with_ids<A>(entries: Vec<Entry<A>>, ids: &[u32]) -> Vec<Entry<A>> {
    entries
        .into_iter()
        .map(|e| Entry {
            spec: ids[e.spec as usize],
            ..e
        })
        .collect()
}

fn values<A>(entries: &[Entry<A>]) -> Vec<u32> {
    entries.iter().map(|e| e.spec).collect()
}

/// The values of prefix entries: the port set id of each one's spec.
fn values_of<A>(entries: &[Entry<A>], ids: &[u32]) -> Vec<u32> {
    entries.iter().map(|e| ids[e.spec as usize]).collect()
}

/// The learned entries whose address is not also a prefix entry.
fn extra<A: Ord + Copy>(learned: &[Entry<A>], prefixes: &[Entry<A>]) -> Vec<Entry<A>> {
    learned
        .iter()
        .filter(|e| find(prefixes, e).is_none())
        .copied()
        .collect()
}

/// The prefix entry with `e`'s prefix, if any.
fn find<'a, A: Ord + Copy>(prefixes: &'a [Entry<A>], e: &Entry<A>) -> Option<&'a Entry<A>> {
    prefixes
        .binary_search_by(|p| (p.addr, p.len).cmp(&(e.addr, e.len)))
        .ok()
        .map(|i| &prefixes[i])
}

/// The `UNIX_ALLOW` keys of `entries` in `table`.
fn unix_keys(table: u32, entries: &[UnixEntry]) -> Vec<TrieKey<UNIX_KEY_LEN>> {
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

fn keys<A: Prefix>(table: u32, entries: &[Entry<A>]) -> Vec<A::Key> {
    entries
        .iter()
        .map(|e| A::key(table, e.addr, e.len))
        .collect()
}

/// `entries` less those without a port set (id 0).
fn writable<A>(entries: Vec<Entry<A>>) -> Vec<Entry<A>> {
    entries.into_iter().filter(|e| e.spec != 0).collect()
}

/// Brings one family's learned entries in the kernel from `held` to `new`
/// (both sorted, with port set ids), failing closed: what is taken away
/// goes first (deletes, and prefix entries given back where a learned
/// address was also one), then what is added or changed; an entry that
/// cannot be written or given back is deleted. Returns what the kernel may
/// hold now (spec 0 where it is not known: the next update writes or
/// removes it again), and the first error.
fn sync_learned<A: Prefix>(
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
    // Taken away: a learned address that was also a prefix entry gets the
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
        first.get_or_insert(anyhow::Error::new(f).context("removing learned allow entries"));
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
fn write_or_delete<A: Prefix>(
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

impl Tables {
    pub fn new(maps: Maps) -> Tables {
        Tables {
            maps,
            next_table: 1,
            portsets: StdHashMap::new(),
            applied: StdHashMap::new(),
            graveyard: Vec::new(),
        }
    }

    /// The port set of a policy's `listen` rules (0: none).
    pub fn listen_set(&mut self, spec: Option<&PortSpec>) -> Result<u32> {
        spec.map_or(Ok(0), |s| self.portset(s))
    }

    /// The id of a port set, writing it to `PORTSETS` the first time.
    fn portset(&mut self, spec: &PortSpec) -> Result<u32> {
        if let Some(id) = self.portsets.get(spec) {
            return Ok(*id);
        }
        let id = self.portsets.len() as u32 + 1;
        if id >= MAX_PORTSETS {
            bail!("more than {MAX_PORTSETS} distinct port sets across all policies");
        }
        let mut set = PortSet {
            count: spec.0.len() as u32,
            ..PortSet::default()
        };
        set.ranges[..spec.0.len()].copy_from_slice(&spec.0);
        self.maps
            .portsets
            .set(id, set, 0)
            .with_context(|| format!("writing port set {id}"))?;
        self.portsets.insert(spec.clone(), id);
        Ok(id)
    }

    /// Writes `plan`'s prefix entries and the `learned` ones as a new table
    /// and returns its id. Nothing refers to it until `set_policy` does.
    /// On failure, what was written is deleted.
    pub fn write_table(&mut self, plan: Arc<Plan>, learned: Compiled) -> Result<u32> {
        let table = self.next_table;
        self.next_table += 1;
        let written = self.write_prefixes(table, plan);
        let written = written.and_then(|()| self.update_learned(table, learned));
        if let Err(e) = written {
            let _ = self.drop_table(table);
            return Err(e);
        }
        Ok(table)
    }

    fn write_prefixes(&mut self, table: u32, plan: Arc<Plan>) -> Result<()> {
        let ids = plan
            .prefixes
            .specs
            .iter()
            .map(|s| self.portset(s))
            .collect::<Result<Vec<u32>>>();
        // Held first: if writing fails part-way, `drop_table` knows what
        // may be in the kernel.
        self.applied.insert(
            table,
            Held {
                plan: plan.clone(),
                prefix_ids: ids.as_ref().map_or(Vec::new(), Clone::clone),
                v4: Vec::new(),
                v6: Vec::new(),
            },
        );
        let ids = ids?;
        let p = &plan.prefixes;
        let (fd4, fd6) = self.fds();
        sys::update_each(fd4, &keys(table, &p.v4), &values_of(&p.v4, &ids))
            .context("writing IPv4 allow entries")?;
        sys::update_each(fd6, &keys(table, &p.v6), &values_of(&p.v6, &ids))
            .context("writing IPv6 allow entries")?;
        let values: Vec<u32> = plan.unix.iter().map(|e| e.value).collect();
        sys::update_each(self.unix_fd(), &unix_keys(table, &plan.unix), &values)
            .context("writing UNIX socket entries")?;
        Ok(())
    }

    fn unix_fd(&self) -> BorrowedFd<'_> {
        self.maps.unix_allow.map().fd().as_fd()
    }

    fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (
            self.maps.allow_v4.map().fd().as_fd(),
            self.maps.allow_v6.map().fd().as_fd(),
        )
    }

    /// Brings the learned addresses of a live table to `learned` (see
    /// `sync_learned`). An entry whose port set cannot be made is not
    /// written (fail closed).
    pub fn update_learned(&mut self, table: u32, learned: Compiled) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        let ids: Vec<u32> = learned
            .specs
            .iter()
            .map(|s| {
                self.portset(s).unwrap_or_else(|e| {
                    first.get_or_insert(e);
                    0
                })
            })
            .collect();
        let new4 = writable(with_ids(learned.v4, &ids));
        let new6 = writable(with_ids(learned.v6, &ids));
        let held = self.applied.get(&table).context("no such table")?;
        let p = &held.plan.prefixes;
        let (fd4, fd6) = self.fds();
        let (now4, e4) = sync_learned(fd4, table, &held.v4, &new4, &p.v4, &held.prefix_ids);
        let (now6, e6) = sync_learned(fd6, table, &held.v6, &new6, &p.v6, &held.prefix_ids);
        let held = self.applied.get_mut(&table).expect("checked");
        held.v4 = now4;
        held.v6 = now6;
        match first.or(e4).or(e6) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Schedules a table no policy refers to any more for deletion once
    /// `TABLE_GRACE` has passed (see `bury`).
    pub fn retire_table(&mut self, table: u32, now: Instant) {
        self.graveyard.push((now + TABLE_GRACE, table));
    }

    /// Deletes the retired tables whose grace has passed.
    pub fn bury(&mut self, now: Instant) -> Result<()> {
        let (due, rest): (Vec<_>, Vec<_>) = self.graveyard.iter().partition(|(t, _)| *t <= now);
        self.graveyard = rest;
        let mut result = Ok(());
        for (_, table) in due {
            result = result.and(self.drop_table(table));
        }
        result
    }

    /// Deletes a table that no policy refers to, at once.
    pub fn drop_table(&mut self, table: u32) -> Result<()> {
        let Some(held) = self.applied.remove(&table) else {
            return Ok(());
        };
        let p = &held.plan.prefixes;
        let (fd4, fd6) = self.fds();
        // No policy refers to the table: what fails to be deleted allows
        // nothing, and only takes room in the tries.
        sys::delete_each(fd4, &keys(table, &p.v4))
            .and(sys::delete_each(fd6, &keys(table, &p.v6)))
            .and(sys::delete_each(fd4, &keys(table, &extra(&held.v4, &p.v4))))
            .and(sys::delete_each(fd6, &keys(table, &extra(&held.v6, &p.v6))))
            .and(sys::delete_each(
                self.unix_fd(),
                &unix_keys(table, &held.plan.unix),
            ))
            .with_context(|| format!("deleting table {table}"))
    }

    /// Entries in a table.
    pub fn table_len(&self, table: u32) -> (usize, usize) {
        self.applied.get(&table).map_or((0, 0), |h| {
            let p = &h.plan.prefixes;
            (
                p.v4.len() + extra(&h.v4, &p.v4).len(),
                p.v6.len() + extra(&h.v6, &p.v6).len(),
            )
        })
    }

    /// Points a policy at a table, with a mode (one atomic map update).
    pub fn set_policy(&mut self, policy: u32, info: PolicyInfo) -> Result<()> {
        self.maps
            .policies
            .set(policy, info, 0)
            .with_context(|| format!("writing policy {policy}"))
    }

    /// Says that `cgroup_id` is no longer governed by `policy` (if another
    /// policy governs it now, that stays).
    pub fn remove_cgroup(&mut self, cgroup_id: u64, policy: u32) -> Result<()> {
        match self.maps.cgroup_policy.get(&cgroup_id, 0) {
            Ok(p) if p == policy => {}
            _ => return Ok(()),
        }
        match self.maps.cgroup_policy.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing cgroup {cgroup_id}")),
        }
    }

    /// Says that `cgroup_id` is governed by `policy`.
    pub fn set_cgroup(&mut self, cgroup_id: u64, policy: u32) -> Result<()> {
        self.maps
            .cgroup_policy
            .insert(cgroup_id, policy, 0)
            .with_context(|| format!("writing cgroup {cgroup_id}"))
    }
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
    fn learned_entries_fail_closed_when_the_trie_is_full() {
        use std::os::fd::AsFd;
        let map = sys::tests::lpm_trie(12, 3);
        let fd = map.as_fd();
        // The prefix entry 203.0.113.1 (port set 7) is in the table.
        let prefixes = [host(1, 0)];
        sys::update_each(fd, &keys(1, &prefixes), &[7u32]).unwrap();
        // Four learned addresses, one of them the prefix entry's: the trie
        // holds three entries, so the fourth cannot be written.
        let new = [host(1, 9), host(2, 9), host(3, 9), host(4, 9)];
        let (now, err) = sync_learned(fd, 1, &[], &new, &prefixes, &[7]);
        assert!(err.is_some());
        assert_eq!(now, [host(1, 9), host(2, 9), host(3, 9)]);
        assert_eq!(
            [at(fd, 1), at(fd, 2), at(fd, 3), at(fd, 4)],
            [Some(9), Some(9), Some(9), None]
        );
        // All gone: the prefix entry gets its own ports back.
        let (now, err) = sync_learned(fd, 1, &now, &[], &prefixes, &[7]);
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
