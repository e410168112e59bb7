//! What the daemon writes on stdout: each event as a JSON line, also sent
//! to `egressd events` clients, and counted.

use std::io::Write;

use crate::report::{
    control::EventFeed,
    describe::{Describer, DnsEvent},
    events::Record,
    metrics::Metrics,
};

/// Events written to stdout in one write.
const EVENTS_PER_WRITE: usize = 4096;

/// Writes events as JSON lines on stdout (up to `EVENTS_PER_WRITE` in one
/// write), and to `events` clients if any are connected; counts them.
/// Events read together share their time (when egressd read them).
pub fn emit(batch: Vec<Record>, describer: &Describer, metrics: &Metrics, feed: &EventFeed) {
    if batch.is_empty() {
        return;
    }
    let time = crate::report::describe::timestamp(std::time::SystemTime::now());
    let watched = feed.receiver_count() > 0;
    let mut out = Vec::with_capacity(batch.len().min(EVENTS_PER_WRITE) * 320);
    let mut stdout = std::io::stdout().lock();
    for chunk in batch.chunks(EVENTS_PER_WRITE) {
        // Counted per (policy, verdict), once per chunk.
        let mut counts: Vec<((u32, u8), u64)> = Vec::new();
        out.clear();
        for e in chunk {
            let key = (e.policy_id, e.verdict);
            match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => counts.push((key, 1)),
            }
            describer.write_line(e, &time, &mut out);
            if watched {
                let _ = feed.send(describer.json(e));
            }
        }
        // A failed write (stdout closed) loses the lines, not the count:
        // the kernel counters and this count say what was taken off the
        // ring buffer.
        let _ = stdout.write_all(&out);
        for ((policy, verdict), n) in counts {
            metrics.events(describer.policy(policy), verdict, n);
        }
    }
    let _ = stdout.flush();
}

/// Writes a DNS proxy's event as a JSON line on stdout, and to `events`
/// clients.
pub fn emit_dns(e: &DnsEvent, describer: &Describer, feed: &EventFeed) {
    let json = describer.dns_json(e);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{json}");
    let _ = out.flush();
    let _ = feed.send(json);
}
