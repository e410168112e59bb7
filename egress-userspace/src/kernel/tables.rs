//! Writing compiled policies into the kernel's maps.
//!
//! A policy's prefixes live in the allow tries under a table id. A new or
//! reloaded policy gets a fresh table, written whole before `POLICIES`
//! switches to it in one update; the old table is deleted afterwards.
//! Hostname updates change only the admitted addresses of a live table, in
//! place, each entry in one atomic update (many to a syscall, with the
//! kernel's batch commands).

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{IterableMap, MapError};
use egress_common::{NameKey, PolicyInfo, PortSet, AF_INET, AF_INET6, MAX_PORTSETS, NAME_LEN};

use super::{
    sys,
    trie::{extra, keys, sync_admitted, unix_keys, values_of, with_ids, writable},
    Maps,
};
use crate::compile::{plan::Plan, Compiled, Entry, PortSpec};

/// The `NAMES` key of `name` bound to `ip` in `table` (None: a name too
/// long for a key, which no DNS answer carries).
pub fn name_key(table: u32, ip: IpAddr, name: &str) -> Option<NameKey> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > NAME_LEN - 3 {
        return None;
    }
    let mut key = NameKey {
        table,
        ..NameKey::default()
    };
    match ip {
        IpAddr::V4(a) => {
            key.family = AF_INET;
            key.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key.family = AF_INET6;
            key.addr = a.octets();
        }
    }
    key.name[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

/// The kernel maps, and what userspace last wrote into them.
pub struct Tables {
    pub maps: Maps,
    next_table: u32,
    portsets: StdHashMap<PortSpec, u32>,
    applied: StdHashMap<u32, Held>,
    /// Tables no policy refers to any more, and when they may be deleted.
    graveyard: Vec<(Instant, u32)>,
    /// The `NAMES` entries written for each table, and their port sets.
    names: StdHashMap<u32, StdHashMap<NameKey, u32>>,
}

/// What one table holds in the kernel: the plan's prefix entries, and
/// admitted addresses on top (an address that is also a prefix entry
/// replaces it while admitted).
struct Held {
    plan: Arc<Plan>,
    /// The port set id of each spec of the plan's prefix entries.
    prefix_ids: Vec<u32>,
    /// The admitted entries written, sorted, their `spec` a port set id (0
    /// when unknown, which no entry written has).
    v4: Vec<Entry<u32>>,
    v6: Vec<Entry<u128>>,
}

/// How long a table outlives the switch away from it. A program that read
/// the old table id just before the switch may still be looking entries up
/// in it; programs run for microseconds, so this is ample.
pub const TABLE_GRACE: Duration = Duration::from_secs(1);

impl Tables {
    pub fn new(maps: Maps) -> Tables {
        Tables {
            maps,
            next_table: 1,
            portsets: StdHashMap::new(),
            applied: StdHashMap::new(),
            graveyard: Vec::new(),
            names: StdHashMap::new(),
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

    /// Writes `plan`'s prefix entries and the `admitted` ones as a new table
    /// and returns its id. Nothing refers to it until `set_policy` does.
    /// On failure, what was written is deleted.
    pub fn write_table(&mut self, plan: Arc<Plan>, admitted: Compiled) -> Result<u32> {
        let table = self.next_table;
        self.next_table += 1;
        let written = self.write_prefixes(table, plan);
        let written = written.and_then(|()| self.update_admitted(table, admitted));
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

    /// Brings the admitted addresses of a live table to `admitted` (see
    /// `sync_admitted`). An entry whose port set cannot be made is not
    /// written (fail closed).
    pub fn update_admitted(&mut self, table: u32, admitted: Compiled) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        let ids: Vec<u32> = admitted
            .specs
            .iter()
            .map(|s| {
                self.portset(s).unwrap_or_else(|e| {
                    first.get_or_insert(e);
                    0
                })
            })
            .collect();
        let new4 = writable(with_ids(admitted.v4, &ids));
        let new6 = writable(with_ids(admitted.v6, &ids));
        let held = self.applied.get(&table).context("no such table")?;
        let p = &held.plan.prefixes;
        let (fd4, fd6) = self.fds();
        let (now4, e4) = sync_admitted(fd4, table, &held.v4, &new4, &p.v4, &held.prefix_ids);
        let (now6, e6) = sync_admitted(fd6, table, &held.v6, &new6, &p.v6, &held.prefix_ids);
        let held = self.applied.get_mut(&table).expect("checked");
        held.v4 = now4;
        held.v6 = now6;
        match first.or(e4).or(e6) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Brings the `NAMES` entries of `table` to `bound` (address, name,
    /// the ports of the rules that bound it; see `Plan::bound_names`).
    /// An entry that cannot be written is not (its name is refused: fail
    /// closed), and the first error is returned.
    pub fn sync_names(&mut self, table: u32, bound: Vec<(IpAddr, String, PortSpec)>) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        let mut want: StdHashMap<NameKey, u32> = StdHashMap::with_capacity(bound.len());
        for (ip, name, spec) in bound {
            let Some(key) = name_key(table, ip, &name) else {
                continue;
            };
            match self.portset(&spec) {
                Ok(id) => {
                    want.insert(key, id);
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        let held = self.names.entry(table).or_default();
        held.retain(|key, _| {
            if want.contains_key(key) {
                return true;
            }
            match self.maps.names.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => false,
                Err(e) => {
                    first.get_or_insert(anyhow::Error::from(e).context("removing a bound name"));
                    true
                }
            }
        });
        for (key, id) in want {
            if held.get(&key) == Some(&id) {
                continue;
            }
            match self.maps.names.insert(key, id, 0) {
                Ok(()) => {
                    held.insert(key, id);
                }
                Err(e) => {
                    first.get_or_insert(
                        anyhow::Error::from(e)
                            .context(format!("writing the names bound in table {table}")),
                    );
                }
            }
        }
        first.map_or(Ok(()), Err)
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
        for key in self.names.remove(&table).unwrap_or_default().keys() {
            let _ = self.maps.names.remove(key);
        }
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
