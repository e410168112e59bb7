//! Writing compiled policies into the kernel's maps.
//!
//! A policy's prefixes live in the allow tries under a table id. A new or
//! reloaded policy gets a fresh table, written whole before `POLICIES`
//! switches to it in one update; the old table is deleted afterwards. Hostname
//! updates change a live table in place, one entry (an atomic update) at a time.

use std::{
    collections::HashMap as StdHashMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{lpm_trie::Key, MapError};
use egress_common::{PolicyInfo, PortSet, V4Key, V6Key, MAX_PORTSETS, TABLE_BITS};

use super::Maps;
use crate::compile::{Compiled, PortSpec};

/// The kernel maps, and what userspace last wrote into them.
pub struct Tables {
    pub maps: Maps,
    next_table: u32,
    portsets: StdHashMap<PortSpec, u32>,
    applied: StdHashMap<u32, Compiled>,
    /// Tables no policy refers to any more, and when they may be deleted.
    graveyard: Vec<(Instant, u32)>,
}

/// How long a table outlives the switch away from it. A program that read
/// the old table id just before the switch may still be looking entries up
/// in it; programs run for microseconds, so this is ample.
pub const TABLE_GRACE: Duration = Duration::from_secs(1);

fn v4_key(table: u32, addr: u32, len: u8) -> Key<V4Key> {
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&table.to_be_bytes());
    data[4..].copy_from_slice(&addr.to_be_bytes());
    Key::new(TABLE_BITS + u32::from(len), data)
}

fn v6_key(table: u32, addr: u128, len: u8) -> Key<V6Key> {
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&table.to_be_bytes());
    data[4..].copy_from_slice(&addr.to_be_bytes());
    Key::new(TABLE_BITS + u32::from(len), data)
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

    /// Writes `compiled` as a new table and returns its id. Nothing refers to
    /// it until `set_policy` does.
    pub fn write_table(&mut self, compiled: Compiled) -> Result<u32> {
        let table = self.next_table;
        self.next_table += 1;
        self.applied.insert(table, Compiled::default());
        self.update_table(table, compiled)?;
        Ok(table)
    }

    /// Brings a live table to `compiled` (kept as what the kernel holds: a
    /// million entries are not copied): adds and changes entries first,
    /// then removes those that are gone (the removals run even when an
    /// addition failed, so nothing stale stays allowed).
    pub fn update_table(&mut self, table: u32, compiled: Compiled) -> Result<()> {
        let old = self.applied.remove(&table).unwrap_or_default();
        let added = self.add_entries(table, &old, &compiled);
        let removed = self.remove_entries(table, &old, &compiled);
        let mut held = compiled;
        if added.is_err() {
            // Some of the new entries may be missing and some of the old
            // ones changed: remember everything that may be in the kernel,
            // so that the next update removes what it must.
            for (k, v) in &old.v4 {
                held.v4.entry(*k).or_insert_with(|| v.clone());
            }
            for (k, v) in &old.v6 {
                held.v6.entry(*k).or_insert_with(|| v.clone());
            }
            let unknown = std::sync::Arc::new(PortSpec(Vec::new()));
            held.v4.values_mut().for_each(|v| *v = unknown.clone());
            held.v6.values_mut().for_each(|v| *v = unknown.clone());
        }
        self.applied.insert(table, held);
        added.and(removed)
    }

    fn add_entries(&mut self, table: u32, old: &Compiled, new: &Compiled) -> Result<()> {
        for (&(addr, len), spec) in &new.v4 {
            if old.v4.get(&(addr, len)) != Some(spec) {
                let id = self.portset(spec)?;
                self.maps
                    .allow_v4
                    .insert(&v4_key(table, addr, len), id, 0)
                    .context("writing an IPv4 allow entry")?;
            }
        }
        for (&(addr, len), spec) in &new.v6 {
            if old.v6.get(&(addr, len)) != Some(spec) {
                let id = self.portset(spec)?;
                self.maps
                    .allow_v6
                    .insert(&v6_key(table, addr, len), id, 0)
                    .context("writing an IPv6 allow entry")?;
            }
        }
        Ok(())
    }

    /// Removes the entries of `old` that `new` lacks; keeps going after a
    /// failure (an entry already absent is not one) and reports the first.
    fn remove_entries(&mut self, table: u32, old: &Compiled, new: &Compiled) -> Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        let mut note = |r: Result<(), MapError>, what: &str| match r {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => {
                first_error
                    .get_or_insert(anyhow::Error::new(e).context(format!("removing {what}")));
            }
        };
        for &(addr, len) in old.v4.keys().filter(|k| !new.v4.contains_key(k)) {
            note(
                self.maps.allow_v4.remove(&v4_key(table, addr, len)),
                "an IPv4 allow entry",
            );
        }
        for &(addr, len) in old.v6.keys().filter(|k| !new.v6.contains_key(k)) {
            note(
                self.maps.allow_v6.remove(&v6_key(table, addr, len)),
                "an IPv6 allow entry",
            );
        }
        first_error.map_or(Ok(()), Err)
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
        let old = self.applied.remove(&table).unwrap_or_default();
        self.remove_entries(table, &old, &Compiled::default())
    }

    /// Entries in a table.
    pub fn table_len(&self, table: u32) -> (usize, usize) {
        self.applied
            .get(&table)
            .map_or((0, 0), |c| (c.v4.len(), c.v6.len()))
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
