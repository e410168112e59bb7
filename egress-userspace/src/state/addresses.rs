//! Addresses learned for a host rule, from egressd's own lookups and from
//! the answers its DNS proxy gave the agent: each allowed until its TTL
//! plus a grace period has passed since it was last seen, at most
//! `MAX_PER_RULE` per rule (the soonest to expire are evicted first).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Addresses one host rule may hold at once.
pub const MAX_PER_RULE: usize = 64;

#[derive(Debug, Default, Clone)]
pub struct Addresses {
    /// Address -> (allowed until, the name it was answered for).
    until: HashMap<IpAddr, (Instant, String)>,
}

impl Addresses {
    /// Records an answer for `name` seen at `now`; returns how many
    /// addresses were evicted to stay within `MAX_PER_RULE`.
    pub fn record(
        &mut self,
        now: Instant,
        name: &str,
        ips: &[IpAddr],
        ttl: Duration,
        grace: Duration,
    ) -> usize {
        // Saturating: a TTL from the network may be anything.
        let until = now
            .checked_add(ttl.saturating_add(grace))
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        for ip in ips {
            let e = self.until.entry(*ip).or_insert((until, name.to_string()));
            if until >= e.0 {
                *e = (until, name.to_string());
            }
        }
        let mut evicted = 0;
        while self.until.len() > MAX_PER_RULE {
            let oldest = self
                .until
                .iter()
                .filter(|(ip, _)| !ips.contains(ip))
                .min_by_key(|(_, (t, _))| *t)
                .or_else(|| self.until.iter().min_by_key(|(_, (t, _))| *t))
                .map(|(ip, _)| *ip)
                .expect("non-empty");
            self.until.remove(&oldest);
            evicted += 1;
        }
        evicted
    }

    /// Drops what expired by `now`; returns whether anything did.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.until.len();
        self.until.retain(|_, (t, _)| *t > now);
        self.until.len() != before
    }

    /// Keeps only the addresses `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&IpAddr) -> bool) {
        self.until.retain(|ip, _| keep(ip));
    }

    /// The addresses, sorted.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.until.keys().copied().collect();
        ips.sort();
        ips
    }

    /// Until when `ip` is allowed, and the name it was answered for.
    pub fn until(&self, ip: &IpAddr) -> Option<(Instant, &str)> {
        self.until.get(ip).map(|(t, n)| (*t, n.as_str()))
    }

    /// Address -> the name it was answered for.
    pub fn names(&self) -> impl Iterator<Item = (&IpAddr, &str)> {
        self.until.iter().map(|(ip, (_, n))| (ip, n.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_expire_after_ttl_plus_grace() {
        let t0 = Instant::now();
        let (a, b) = (ip("198.51.100.1"), ip("198.51.100.2"));
        let mut s = Addresses::default();
        let secs = Duration::from_secs;
        s.record(t0, "a.test", &[a], secs(10), secs(5));
        s.record(t0 + secs(8), "a.test", &[b], secs(10), secs(5));
        assert!(!s.expire(t0 + secs(14)));
        assert_eq!(s.ips(), vec![a, b]);
        assert!(s.expire(t0 + secs(16)));
        assert_eq!(s.ips(), vec![b]);
        // Seen again: the deadline moves later, never earlier.
        s.record(t0 + secs(20), "a.test", &[b], secs(1), secs(0));
        assert!(!s.expire(t0 + secs(22)));
        assert!(s.expire(t0 + secs(24)));
        assert!(s.ips().is_empty());
    }

    #[test]
    fn at_most_max_per_rule_soonest_evicted() {
        let t0 = Instant::now();
        let mut s = Addresses::default();
        let many: Vec<IpAddr> = (0..MAX_PER_RULE as u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i)))
            .collect();
        assert_eq!(
            s.record(t0, "x.test", &many, Duration::from_secs(10), Duration::ZERO),
            0
        );
        let fresh = [ip("203.0.113.1"), ip("203.0.113.2")];
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            s.record(
                later,
                "y.test",
                &fresh,
                Duration::from_secs(10),
                Duration::ZERO
            ),
            2
        );
        assert_eq!(s.ips().len(), MAX_PER_RULE);
        assert!(
            fresh.iter().all(|f| s.ips().contains(f)),
            "the new answer is kept"
        );
        assert_eq!(s.names().filter(|(_, n)| *n == "y.test").count(), 2);
    }
}
