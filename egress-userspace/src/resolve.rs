//! Resolving the exact hostnames a policy names, and keeping their addresses
//! fresh: re-resolved as TTLs run out (within the policy's bounds), old
//! addresses kept for a grace period, failures counted and never opening
//! anything.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_resolver::{
    config::{LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
    TokioResolver,
};
use tokio::time::Instant;

use crate::{
    enforcer::Enforcer,
    metrics::Metrics,
    policy::{DnsSettings, Host},
};

/// A resolver for one policy's settings.
pub fn resolver(dns: &DnsSettings) -> Result<TokioResolver> {
    let mut builder = if dns.upstream.is_empty() {
        TokioResolver::builder_tokio()
            .context("reading the system resolver configuration (/etc/resolv.conf)")?
    } else {
        let servers: Vec<NameServerConfig> = dns
            .upstream
            .iter()
            .flat_map(|a| {
                [
                    NameServerConfig::new(*a, Protocol::Udp),
                    NameServerConfig::new(*a, Protocol::Tcp),
                ]
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::from(servers)),
            TokioConnectionProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.cache_size = 0;
    Ok(builder.build())
}

/// One lookup: the addresses and how long the answer is valid.
pub async fn lookup(resolver: &TokioResolver, host: &Host) -> Result<(Vec<IpAddr>, Duration)> {
    let fqdn = format!("{}.", host.as_str());
    let answer = resolver
        .lookup_ip(fqdn.as_str())
        .await
        .with_context(|| format!("resolving {host}"))?;
    let ttl = answer
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    let mut ips: Vec<IpAddr> = answer.iter().collect();
    ips.sort();
    ips.dedup();
    Ok((ips, ttl))
}

/// The addresses of one hostname, each with the instant it stops being allowed.
#[derive(Debug, Default)]
pub struct Addresses {
    until: HashMap<IpAddr, Instant>,
}

impl Addresses {
    /// Records an answer seen at `now`: its addresses are allowed until
    /// `now + ttl + grace`; addresses missing from it keep their old deadline.
    pub fn record(&mut self, now: Instant, ips: &[IpAddr], ttl: Duration, grace: Duration) {
        for ip in ips {
            let until = now + ttl + grace;
            let e = self.until.entry(*ip).or_insert(until);
            *e = (*e).max(until);
        }
    }

    /// Drops addresses whose deadline passed; returns the rest, sorted.
    pub fn current(&mut self, now: Instant) -> Vec<IpAddr> {
        self.until.retain(|_, until| *until > now);
        let mut ips: Vec<IpAddr> = self.until.keys().copied().collect();
        ips.sort();
        ips
    }

    /// The next instant an address expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }
}

/// When to ask again after an answer with this TTL.
pub fn refresh_after(ttl: Duration, dns: &DnsSettings) -> Duration {
    ttl.clamp(dns.min_ttl, dns.max_ttl)
}

/// Resolves every host once, for the first install. Failures are logged and
/// counted; the host then has no address until a refresh succeeds.
pub async fn prewarm(
    resolver: &TokioResolver,
    policy: &str,
    hosts: &[Host],
    dns: &DnsSettings,
    metrics: &Metrics,
) -> (
    HashMap<Host, Vec<IpAddr>>,
    HashMap<Host, (Addresses, Duration)>,
) {
    let mut resolved = HashMap::new();
    let mut state = HashMap::new();
    for host in hosts {
        let now = Instant::now();
        let mut addrs = Addresses::default();
        let wait = match lookup(resolver, host).await {
            Ok((ips, ttl)) => {
                metrics.lookup(policy, true);
                addrs.record(now, &ips, ttl, dns.grace);
                refresh_after(ttl, dns)
            }
            Err(e) => {
                metrics.lookup(policy, false);
                tracing::warn!(policy, host = %host, "{e:#}: no address is allowed for it until a lookup succeeds");
                dns.min_ttl
            }
        };
        resolved.insert(host.clone(), addrs.current(now));
        state.insert(host.clone(), (addrs, wait));
    }
    (resolved, state)
}

/// Everything needed to keep one hostname of one policy fresh.
pub struct HostRefresh {
    pub enforcer: Arc<Mutex<Enforcer>>,
    pub resolver: Arc<TokioResolver>,
    pub metrics: Arc<Metrics>,
    pub id: u32,
    pub policy: String,
    pub host: Host,
    pub dns: DnsSettings,
    pub addrs: Addresses,
}

impl HostRefresh {
    /// Looks the host up again when its answer runs out (or an address
    /// expires), forever; `wait` is the delay before the first refresh.
    pub async fn run(mut self, mut wait: Duration) {
        let (policy, host) = (self.policy.clone(), self.host.clone());
        loop {
            let wake = Instant::now() + wait;
            tokio::time::sleep_until(self.addrs.next_expiry().map_or(wake, |e| e.min(wake))).await;
            let now = Instant::now();
            if now >= wake {
                match lookup(&self.resolver, &host).await {
                    Ok((ips, ttl)) => {
                        self.metrics.lookup(&policy, true);
                        self.addrs.record(now, &ips, ttl, self.dns.grace);
                        wait = refresh_after(ttl, &self.dns);
                    }
                    Err(e) => {
                        self.metrics.lookup(&policy, false);
                        tracing::warn!(policy, host = %host, "{e:#}; keeping the addresses known so far until they expire");
                        wait = self.dns.min_ttl;
                    }
                }
            } else {
                // An address expired before the next lookup is due.
                wait = wake - now;
            }
            let current = self.addrs.current(Instant::now());
            let result = self
                .enforcer
                .lock()
                .expect("enforcer lock")
                .set_resolved(self.id, &host, current);
            if let Err(e) = result {
                tracing::error!(policy, host = %host, "updating the allowlist: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_expire_after_ttl_plus_grace() {
        let t0 = Instant::now();
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let mut s = Addresses::default();
        s.record(t0, &[a], Duration::from_secs(10), Duration::from_secs(5));
        s.record(
            t0 + Duration::from_secs(8),
            &[b],
            Duration::from_secs(10),
            Duration::from_secs(5),
        );
        assert_eq!(s.current(t0 + Duration::from_secs(14)), vec![a, b]);
        assert_eq!(s.current(t0 + Duration::from_secs(16)), vec![b]);
        assert_eq!(
            s.current(t0 + Duration::from_secs(30)),
            Vec::<IpAddr>::new()
        );
    }

    #[test]
    fn refresh_is_clamped() {
        let dns = DnsSettings::default();
        assert_eq!(refresh_after(Duration::from_secs(0), &dns), dns.min_ttl);
        assert_eq!(
            refresh_after(Duration::from_secs(60), &dns),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(1 << 30), &dns),
            dns.max_ttl
        );
    }
}
