//! Where a policy's names are resolved: its upstream servers and search
//! domains, from the policy or else from /etc/resolv.conf.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};

use super::Policy;

/// Where the proxy forwards allowed queries: the policy's upstream, else
/// the nameservers of /etc/resolv.conf.
pub fn upstreams(policy: &Policy) -> Result<Vec<SocketAddr>> {
    if !policy.dns.upstream.is_empty() {
        return Ok(policy.dns.upstream.clone());
    }
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .context("reading /etc/resolv.conf for the DNS upstream")?;
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        bail!("/etc/resolv.conf names no nameserver: set `dns.upstream` in the policy (or --resolver)");
    }
    Ok(servers)
}

/// The search domains of a policy's resolver: `dns.search`, else the
/// `search` (or `domain`) line of /etc/resolv.conf (none if unreadable).
pub fn search_domains(policy: &Policy) -> Vec<String> {
    if let Some(list) = &policy.dns.search {
        return list.clone();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // The last search or domain line counts, as in glibc.
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            matches!(words.next(), Some("search" | "domain")).then(|| {
                words
                    .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<String>>()
            })
        })
        .next_back()
        .unwrap_or_default()
}

/// Whether `qname` is an allowed name with a search domain appended (what
/// a resolver tries first for a name with fewer dots than `ndots`): an
/// allowed name, then any labels, then a search domain, so that
/// `cluster.local` covers every namespace's `<ns>.svc.cluster.local`.
/// The DNS proxy answers such a query itself and never forwards it, so
/// nothing in its labels leaves.
pub fn search_expansion(qname: &str, search: &[String], allowed: impl Fn(&str) -> bool) -> bool {
    search.iter().any(|domain| {
        let Some(rest) = qname
            .strip_suffix(domain.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
        else {
            return false;
        };
        // `rest`, then `rest` less its last label, and so on.
        let mut name = rest;
        loop {
            if !name.is_empty() && allowed(name) {
                return true;
            }
            match name.rfind('.') {
                Some(i) => name = &name[..i],
                None => return false,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_expansions_of_allowed_names_are_recognised() {
        let search = vec![
            "default.svc.cluster.local".to_string(),
            "cluster.local".to_string(),
        ];
        let allowed = |n: &str| n == "api.model.test";
        for q in [
            "api.model.test.default.svc.cluster.local",
            "api.model.test.svc.cluster.local",
            "api.model.test.cluster.local",
            "api.model.test.other-ns.svc.cluster.local",
        ] {
            assert!(search_expansion(q, &search, allowed), "{q}");
        }
        for q in [
            "api.model.test",
            "secret.attacker.test.cluster.local",
            "xapi.model.test.cluster.local",
            "api.model.test.cluster.localx",
            "cluster.local",
        ] {
            assert!(!search_expansion(q, &search, allowed), "{q}");
        }
        assert!(!search_expansion(
            "api.model.test.cluster.local",
            &[],
            allowed
        ));
    }
}
