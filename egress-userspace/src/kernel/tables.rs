//! Writing compiled policies into the kernel's maps.
//!
//! A policy's prefixes live in the allow tries under a table id. A new or
//! reloaded policy gets a fresh table, written whole before `POLICIES`
//! switches to it in one update; the old table is deleted afterwards.
//! Hostname updates change only the learned addresses of a live table, in
//! place, each entry in one atomic update (many to a syscall, with the
//! kernel's batch commands).

use std::{
    collections::HashMap as StdHashMap,
    os::fd::AsFd,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{IterableMap, MapError};
use egress_common::{PolicyInfo, PortSet, MAX_PORTSETS, TABLE_BITS};

use super::{sys, Maps};
use crate::compile::{Compiled, Entry, Plan, PortSpec};

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

impl Prefix for u32 {
    type Key = TrieKey<8>;
    fn key(table: u32, addr: u32, len: u8) -> TrieKey<8> {
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&table.to_be_bytes());
        data[4..].copy_from_slice(&addr.to_be_bytes());
        TrieKey {
            prefix_len: TABLE_BITS + u32::from(len),
            data,
        }
    }
}

impl Prefix for u128 {
    type Key = TrieKey<20>;
    fn key(table: u32, addr: u128, len: u8) -> TrieKey<20> {
        let mut data = [0u8; 20];
        data[..4].copy_from_slice(&table.to_be_bytes());
        data[4..].copy_from_slice(&addr.to_be_bytes());
        TrieKey {
            prefix_len: TABLE_BITS + u32::from(len),
            data,
        }
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

/// Every prefix of `a` and `b`, each once, with the unknown port set.
fn union_unknown<A: Ord + Copy>(a: &[Entry<A>], b: &[Entry<A>]) -> Vec<Entry<A>> {
    let mut all: Vec<Entry<A>> = a.iter().chain(b).map(|e| Entry { spec: 0, ..*e }).collect();
    all.sort_unstable();
    all.dedup();
    all
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

/// Writes the entries of `a` and `b` (port set ids as values).
fn write_both<A: Prefix>(
    fd: std::os::fd::BorrowedFd<'_>,
    table: u32,
    a: &[Entry<A>],
    b: &[Entry<A>],
) -> std::io::Result<()> {
    let all: Vec<Entry<A>> = a.iter().chain(b).copied().collect();
    sys::update_batch(fd, &keys(table, &all), &values(&all))
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

/// Splits learned entries that are gone into those that give a prefix
/// entry back (with its port set id) and those to delete.
fn restore<A: Ord + Copy>(
    gone: Vec<Entry<A>>,
    prefixes: &[Entry<A>],
    prefix_ids: &[u32],
) -> (Vec<Entry<A>>, Vec<Entry<A>>) {
    let mut back = Vec::new();
    let mut delete = Vec::new();
    for e in gone {
        match find(prefixes, &e) {
            Some(p) => back.push(Entry {
                spec: prefix_ids[p.spec as usize],
                ..e
            }),
            None => delete.push(e),
        }
    }
    (back, delete)
}

fn keys<A: Prefix>(table: u32, entries: &[Entry<A>]) -> Vec<A::Key> {
    entries
        .iter()
        .map(|e| A::key(table, e.addr, e.len))
        .collect()
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
        sys::update_batch(fd4, &keys(table, &p.v4), &values_of(&p.v4, &ids))
            .context("writing IPv4 allow entries")?;
        sys::update_batch(fd6, &keys(table, &p.v6), &values_of(&p.v6, &ids))
            .context("writing IPv6 allow entries")?;
        Ok(())
    }

    fn fds(&self) -> (std::os::fd::BorrowedFd<'_>, std::os::fd::BorrowedFd<'_>) {
        (
            self.maps.allow_v4.map().fd().as_fd(),
            self.maps.allow_v6.map().fd().as_fd(),
        )
    }

    /// Brings the learned addresses of a live table to `learned`: writes
    /// new and changed entries first, then removes those that are gone (an
    /// address that is also a prefix entry gets that entry back). The
    /// removals run even when a write failed, so nothing stale stays allowed.
    pub fn update_learned(&mut self, table: u32, learned: Compiled) -> Result<()> {
        let ids = learned
            .specs
            .iter()
            .map(|s| self.portset(s))
            .collect::<Result<Vec<u32>>>()?;
        let held = self.applied.get(&table).context("no such table")?;
        let new4 = with_ids(learned.v4, &ids);
        let new6 = with_ids(learned.v6, &ids);
        let (write4, gone4) = diff(&held.v4, &new4);
        let (write6, gone6) = diff(&held.v6, &new6);
        let p = &held.plan.prefixes;
        let (restore4, remove4) = restore(gone4, &p.v4, &held.prefix_ids);
        let (restore6, remove6) = restore(gone6, &p.v6, &held.prefix_ids);
        let (fd4, fd6) = self.fds();
        let added = write_both(fd4, table, &write4, &restore4)
            .context("writing IPv4 allow entries")
            .and_then(|()| {
                write_both(fd6, table, &write6, &restore6).context("writing IPv6 allow entries")
            });
        let removed = sys::delete_batch(fd4, &keys(table, &remove4))
            .context("removing IPv4 allow entries")
            .and(
                sys::delete_batch(fd6, &keys(table, &remove6))
                    .context("removing IPv6 allow entries"),
            );
        let held = self.applied.get_mut(&table).expect("checked");
        if added.is_err() {
            // Some of the new entries may be missing and some of the old
            // ones changed: remember everything that may be in the kernel,
            // so that the next update writes or removes what it must.
            held.v4 = union_unknown(&held.v4, &new4);
            held.v6 = union_unknown(&held.v6, &new6);
        } else {
            held.v4 = new4;
            held.v6 = new6;
        }
        added.and(removed)
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
        sys::delete_batch(fd4, &keys(table, &p.v4))
            .and(sys::delete_batch(fd6, &keys(table, &p.v6)))
            .and(sys::delete_batch(
                fd4,
                &keys(table, &extra(&held.v4, &p.v4)),
            ))
            .and(sys::delete_batch(
                fd6,
                &keys(table, &extra(&held.v6, &p.v6)),
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

    #[test]
    fn diff_writes_new_and_changed_and_removes_gone() {
        let old = [e(1, 32, 1), e(2, 32, 1), e(2 << 8, 24, 2), e(9, 32, 1)];
        let new = [e(0, 32, 1), e(2, 32, 3), e(2 << 8, 24, 2), e(10, 32, 1)];
        let (write, remove) = diff(&old, &new);
        assert_eq!(write, [e(0, 32, 1), e(2, 32, 3), e(10, 32, 1)]);
        assert_eq!(remove, [e(1, 32, 1), e(9, 32, 1)]);
        assert_eq!(diff(&new, &new), (vec![], vec![]));
        assert_eq!(
            union_unknown(&old[..2], &new[..2]),
            [e(0, 32, 0), e(1, 32, 0), e(2, 32, 0)]
        );
    }
}
