//! What `egressd exec` prints when its command ends: the denied attempts,
//! grouped by destination, hostname, process and reason.

use std::{collections::BTreeMap, io::Write};

use crate::{
    kernel::counters::reason_name,
    report::{
        describe::{Describer, DnsEvent},
        events::{address, comm, protocol_name, unix_name, Record},
    },
};

/// One summary line's key: destination, hostname, process name, reason.
type Row = (String, String, String, String);

/// Denied attempts grouped by what and who, for the summary: count and pids.
#[derive(Default)]
pub struct Summary {
    rows: BTreeMap<Row, (u64, Vec<u32>)>,
    total: u64,
    /// Attempts not shown because `MAX_ROWS` distinct rows were reached.
    overflow: u64,
    /// Events the ring buffer had no room for, and the refused (or
    /// audited) attempts the kernel counted, events or not.
    pub lost: u64,
    pub counted: u64,
    /// What went through each allowed rule, by its label.
    pub rules: Vec<(String, egress_common::RuleStats)>,
}

/// Distinct lines the summary keeps (an agent may try endless destinations).
const MAX_ROWS: usize = 1000;

impl Summary {
    pub fn add(&mut self, e: &Record, d: &Describer) {
        let dest = match address(e) {
            _ if e.unix.is_some() => unix_name(e.unix.as_deref().unwrap_or_default()),
            Some(a) if e.hook == egress_common::hook::LISTEN && e.port == 0 => {
                format!("(listen on {a}, any port)")
            }
            Some(a) if e.hook == egress_common::hook::LISTEN => {
                format!("(listen on {a}:{})", e.port)
            }
            Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{}", e.port),
            Some(a) => format!("{a}:{}", e.port),
            None if e.hook == egress_common::hook::SOCK_CREATE => "(socket refused)".into(),
            None if e.hook == egress_common::hook::SOCKET_FAMILY => format!(
                "(socket of family {} refused)",
                crate::policy::family::family_name(e.family)
            ),
            None => "(no destination)".into(),
        };
        let key = (
            match e.unix {
                Some(_) => format!("unix {dest}"),
                None => format!("{} {dest}", protocol_name(e.protocol)),
            },
            d.host(e).map(|h| format!(" ({h})")).unwrap_or_default(),
            comm(e).into_owned(),
            reason_name(e.reason).to_string(),
        );
        self.count(key, Some(e.tgid));
    }

    pub fn add_dns(&mut self, e: &DnsEvent) {
        let who = e.asker.as_ref().map_or_else(
            || "a resolver query".to_string(),
            |a| crate::report::events::comm_of(&a.comm).into_owned(),
        );
        let key = (
            format!("dns {} {}", e.qtype, e.name),
            String::new(),
            who,
            e.reason.to_string(),
        );
        self.count(key, e.asker.map(|a| a.tgid));
    }

    /// One attempt under `key`, by process `tgid` when known; past
    /// `MAX_ROWS` distinct rows, only counted.
    fn count(&mut self, key: Row, tgid: Option<u32>) {
        self.total += 1;
        if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            self.overflow += 1;
            return;
        }
        let row = self.rows.entry(key).or_default();
        row.0 += 1;
        if let Some(t) = tgid.filter(|t| !row.1.contains(t)) {
            row.1.push(t);
        }
    }

    pub fn print(&self, audit: bool) {
        let mut err = std::io::stderr().lock();
        for (label, s) in &self.rules {
            if let Some(line) = crate::report::describe::rule_line(s) {
                let _ = writeln!(err, "egressd: {label}: {line}");
            }
        }
        let verb = if audit { "would have denied" } else { "denied" };
        if self.lost > 0 {
            let _ = writeln!(
                err,
                "egressd: {} event(s) were lost (the ring buffer was full; --ring-buffer-bytes makes it larger): the kernel counted {} attempt(s) it {verb}, of which these:",
                self.lost, self.counted
            );
        }
        if self.total == 0 && self.lost == 0 {
            let _ = writeln!(
                err,
                "egressd: nothing was {}",
                if audit { "reported" } else { "denied" }
            );
            return;
        }
        let _ = writeln!(err, "egressd: {verb} {} attempt(s):", self.total);
        for ((dest, host, comm, reason), (count, pids)) in &self.rows {
            let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
            let _ = writeln!(
                err,
                "  {dest}{host} by {comm} (pid {}) x{count}: {reason}",
                pids.join(", ")
            );
        }
        if self.overflow > 0 {
            let _ = writeln!(
                err,
                "  ... and {} more attempt(s) to other destinations",
                self.overflow
            );
        }
    }
}
