//! Resolving the exact hostnames a policy names, and keeping their addresses
//! fresh: re-resolved as TTLs run out (within the policy's bounds), old
//! addresses kept for a grace period (see `state::answers`), failures counted
//! and never opening anything; and sweeping out expired addresses.

use std::{
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

use crate::{
    policy::{DnsSettings, Host, Policy},
    report::metrics::Metrics,
    state::{allowlist::Allowlist, answers::Admitter},
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

/// When to ask again after an answer with this TTL.
pub fn refresh_after(ttl: Duration, dns: &DnsSettings) -> Duration {
    ttl.clamp(dns.min_ttl, dns.max_ttl)
}

/// Resolves every exact host of policy `id` once and records the answers,
/// so that the first connect after a (re)start is not refused. Failures are
/// logged and counted; such a host has no address until a lookup succeeds.
/// Returns when to look each host up again.
pub async fn prewarm(
    admitter: &Admitter,
    resolver: &TokioResolver,
    policy: &Policy,
    metrics: &Metrics,
) -> Vec<(Host, Duration)> {
    let mut next = Vec::new();
    for host in policy.hosts() {
        let wait = match lookup(resolver, &host).await {
            Ok((ips, ttl)) => {
                metrics.lookup(&policy.name, true);
                admit(admitter, &policy.name, &host, ips, ttl);
                refresh_after(ttl, &policy.dns)
            }
            Err(e) => {
                metrics.lookup(&policy.name, false);
                tracing::warn!(policy = policy.name, host = %host, "{e:#}: no address is allowed for it until a lookup succeeds");
                policy.dns.min_ttl
            }
        };
        next.push((host, wait));
    }
    next
}

/// Has egressd's own answer for `host` admitted, as the proxy's answers are
/// (`state::answers`): special addresses are not admitted, and are logged.
fn admit(admitter: &Admitter, policy: &str, host: &Host, ips: Vec<IpAddr>, ttl: Duration) {
    match admitter.admit(std::slice::from_ref(host), host.as_str(), ips, ttl) {
        Ok(Some(admitted)) => {
            for (ip, why) in admitted.refused {
                let verb = if admitted.audit {
                    "admitted in audit"
                } else {
                    "not admitted"
                };
                tracing::warn!(policy, host = %host, address = %ip, "an answer of egressd's own lookup is {why}: {verb}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::error!(policy, host = %host, "allowing its addresses: {e:#}"),
    }
}

/// Everything needed to keep one exact host of one policy fresh.
pub struct HostRefresh {
    pub admitter: Admitter,
    pub resolver: Arc<TokioResolver>,
    pub metrics: Arc<Metrics>,
    pub policy: String,
    pub host: Host,
    pub dns: DnsSettings,
}

impl HostRefresh {
    /// Looks the host up again each time its answer runs out, forever;
    /// `wait` is the delay before the first lookup. Expiry is the sweeper's.
    pub async fn run(self, mut wait: Duration) {
        let (policy, host) = (&self.policy, &self.host);
        loop {
            tokio::time::sleep(wait).await;
            match lookup(&self.resolver, host).await {
                Ok((ips, ttl)) => {
                    self.metrics.lookup(policy, true);
                    admit(&self.admitter, policy, host, ips, ttl);
                    wait = refresh_after(ttl, &self.dns);
                }
                Err(e) => {
                    self.metrics.lookup(policy, false);
                    tracing::warn!(policy, host = %host, "{e:#}; keeping the addresses known so far until they expire");
                    wait = self.dns.min_ttl;
                }
            }
        }
    }
}
/// How often expired addresses are removed.
pub const SWEEP_PERIOD: Duration = Duration::from_millis(500);

/// Removes expired addresses every `period`, forever (and retries a
/// failed update of admitted addresses). An error that repeats is logged
/// once, and again when it clears.
pub async fn sweep(allowlist: Arc<Mutex<Allowlist>>, period: Duration) {
    let mut failing: Option<String> = None;
    loop {
        tokio::time::sleep(period).await;
        let result = allowlist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expire(std::time::Instant::now());
        match result {
            Err(e) => {
                let e = format!("{e:#}");
                if failing.as_ref() != Some(&e) {
                    tracing::error!("removing expired addresses: {e} (retried every sweep)");
                }
                failing = Some(e);
            }
            Ok(()) if failing.take().is_some() => {
                tracing::info!("admitted addresses are up to date again");
            }
            Ok(()) => {}
        }
    }
}

/// Starts a refresher for each host `prewarm` returned, and the sweeper.
pub fn spawn_refreshers(
    admitter: &Admitter,
    resolver: &Arc<TokioResolver>,
    metrics: &Arc<Metrics>,
    policy: &Policy,
    hosts: Vec<(Host, Duration)>,
) -> Vec<tokio::task::JoinHandle<()>> {
    hosts
        .into_iter()
        .map(|(host, wait)| {
            let r = HostRefresh {
                admitter: admitter.clone(),
                resolver: resolver.clone(),
                metrics: metrics.clone(),
                policy: policy.name.clone(),
                host,
                dns: policy.dns.clone(),
            };
            tokio::spawn(r.run(wait))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
