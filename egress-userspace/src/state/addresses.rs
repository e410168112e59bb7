//! Addresses admitted for a host rule, from egressd's own lookups and from
//! the answers its DNS proxy gave the agent, with the names they were
//! answered for: each (address, name) binding holds until its TTL plus a
//! grace period has passed since it was last seen, and an address is
//! allowed while one of its names is bound to it; at most `MAX_PER_RULE`
//! addresses per rule (the soonest to expire are evicted first).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Addresses one host rule may hold at once.
pub const MAX_PER_RULE: usize = 64;
/// Names one address of a rule may be bound to at once (a wildcard's
/// names often share a front door); the soonest to expire go first.
pub const MAX_NAMES_PER_ADDRESS: usize = 16;

/// Addresses admitted for one host rule, each with the names it was
/// answered for, and until when each binding holds. An address is allowed
/// while any of its names is bound to it.
#[derive(Debug, Default, Clone)]
pub struct Addresses {
    /// Address -> (name -> bound until), at most `MAX_NAMES_PER_ADDRESS`.
    bound: HashMap<IpAddr, HashMap<String, Instant>>,
}

/// Until when an address is allowed: the latest of its names' deadlines.
fn latest(names: &HashMap<String, Instant>) -> Option<(Instant, &str)> {
    names
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(n, t)| (*t, n.as_str()))
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
            let names = self.bound.entry(*ip).or_default();
            let t = names.entry(name.to_string()).or_insert(until);
            *t = (*t).max(until);
            while names.len() > MAX_NAMES_PER_ADDRESS {
                let soonest = names
                    .iter()
                    .filter(|(n, _)| n.as_str() != name)
                    .min_by_key(|(_, t)| **t)
                    .map(|(n, _)| n.clone())
                    .expect("more than one name");
                names.remove(&soonest);
            }
        }
        let mut evicted = 0;
        while self.bound.len() > MAX_PER_RULE {
            let until_of = |names: &HashMap<String, Instant>| latest(names).map(|l| l.0);
            let oldest = self
                .bound
                .iter()
                .filter(|(ip, _)| !ips.contains(ip))
                .min_by_key(|(_, n)| until_of(n))
                .or_else(|| self.bound.iter().min_by_key(|(_, n)| until_of(n)))
                .map(|(ip, _)| *ip)
                .expect("non-empty");
            self.bound.remove(&oldest);
            evicted += 1;
        }
        evicted
    }

    /// Drops what expired by `now`; returns whether anything did.
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for names in self.bound.values_mut() {
            let before = names.len();
            names.retain(|_, t| *t > now);
            changed |= names.len() != before;
        }
        self.bound.retain(|_, names| !names.is_empty());
        changed
    }

    /// Keeps only the addresses `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&IpAddr) -> bool) {
        self.bound.retain(|ip, _| keep(ip));
    }

    /// The addresses, sorted.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.bound.keys().copied().collect();
        ips.sort();
        ips
    }

    /// Until when `ip` is allowed, and the name it was last answered for.
    pub fn until(&self, ip: &IpAddr) -> Option<(Instant, &str)> {
        self.bound.get(ip).and_then(latest)
    }

    /// Address -> the name whose binding lasts longest, for reports.
    pub fn names(&self) -> impl Iterator<Item = (&IpAddr, &str)> {
        self.bound
            .iter()
            .filter_map(|(ip, names)| latest(names).map(|(_, n)| (ip, n)))
    }

    /// The names bound to `ip`, each with until when, sorted by name.
    pub fn bound_to(&self, ip: &IpAddr) -> Vec<(&str, Instant)> {
        let mut out: Vec<(&str, Instant)> = self
            .bound
            .get(ip)
            .map(|names| names.iter().map(|(n, t)| (n.as_str(), *t)).collect())
            .unwrap_or_default();
        out.sort_unstable();
        out
    }

    /// Every (address, name) bound, sorted.
    pub fn bindings(&self) -> Vec<(IpAddr, &str)> {
        let mut out: Vec<(IpAddr, &str)> = self
            .bound
            .iter()
            .flat_map(|(ip, names)| names.keys().map(move |n| (*ip, n.as_str())))
            .collect();
        out.sort_unstable();
        out
    }
}

/// Every (host rule, address, name) bound in `admitted`.
pub fn bindings(
    admitted: &HashMap<crate::policy::Host, Addresses>,
) -> Vec<(&crate::policy::Host, IpAddr, &str)> {
    admitted
        .iter()
        .flat_map(|(h, a)| a.bindings().into_iter().map(move |(ip, n)| (h, ip, n)))
        .collect()
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
    fn each_name_is_bound_to_an_address_until_its_own_deadline() {
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        let secs = Duration::from_secs;
        let mut s = Addresses::default();
        s.record(t0, "one.cdn.test", &[a], secs(10), secs(0));
        s.record(t0, "two.cdn.test", &[a], secs(30), secs(0));
        assert_eq!(s.bindings(), vec![(a, "one.cdn.test"), (a, "two.cdn.test")]);
        assert_eq!(s.until(&a).map(|u| u.1), Some("two.cdn.test"));
        assert!(s.expire(t0 + secs(11)));
        assert_eq!(s.bindings(), vec![(a, "two.cdn.test")]);
        assert_eq!(s.ips(), vec![a]);
        assert!(s.expire(t0 + secs(31)));
        assert!(s.ips().is_empty());
        // At most MAX_NAMES_PER_ADDRESS names; the newest is kept.
        for i in 0..=MAX_NAMES_PER_ADDRESS {
            s.record(
                t0,
                &format!("n{i}.cdn.test"),
                &[a],
                secs(10 + i as u64),
                secs(0),
            );
        }
        let b = s.bindings();
        assert_eq!(b.len(), MAX_NAMES_PER_ADDRESS);
        assert!(!b.contains(&(a, "n0.cdn.test")));
        assert!(b.contains(&(a, &format!("n{MAX_NAMES_PER_ADDRESS}.cdn.test"))));
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
