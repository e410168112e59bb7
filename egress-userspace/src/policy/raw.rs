//! A policy file as written: the YAML's shape, read with serde before any
//! check but the field types' own. `validate` turns it into a `Policy`.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{
    fields::{CgroupPath, Name},
    Destination, Family, Host, Listen, Mode, Net, NetList, PodSelector, PortRange, Protocol,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: Name,
    #[serde(default)]
    pub(super) mode: Mode,
    #[serde(default)]
    pub(super) cgroups: Vec<CgroupPath>,
    #[serde(default)]
    pub(super) pods: Vec<PodSelector>,
    #[serde(default)]
    pub(super) allow: Vec<RawRuleFields>,
    #[serde(default)]
    pub(super) dns: RawDns,
    #[serde(default)]
    pub(super) listen: Vec<Listen>,
    #[serde(default)]
    pub(super) channels: RawChannels,
}

/// `channels:`: what the policy opens beyond IP destinations.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannels {
    #[serde(default)]
    pub(super) families: Vec<Family>,
    /// `allow` or `refuse` (default).
    pub(super) io_uring: Option<Answers>,
    /// New user and network namespaces: `allow` or `refuse` (default).
    pub(super) namespaces: Option<Answers>,
    #[serde(default)]
    pub(super) unix: Vec<super::unix::UnixName>,
}

pub(super) struct RawRule {
    pub(super) dest: Destination,
    pub(super) ports: Vec<PortRange>,
    pub(super) protocol: Protocol,
    pub(super) budget: Option<super::budget::Budget>,
    pub(super) any_name_at_address: bool,
    pub(super) lookups: Option<super::lookups::Lookups>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuleFields {
    pub(super) host: Option<Host>,
    pub(super) cidr: Option<Net>,
    pub(super) ip: Option<Net>,
    /// A file of prefixes, one per line, relative to the policy file.
    pub(super) cidr_file: Option<PathBuf>,
    pub(super) ports: Option<Vec<PortRange>>,
    #[serde(default)]
    pub(super) protocol: Protocol,
    /// `public_suffix: intended`: a wildcard directly over a shared public
    /// suffix (`*.github.io`) is meant, knowing anyone can make names there.
    pub(super) public_suffix: Option<Intended>,
    /// `budget: {upload: SIZE, per: WINDOW}`.
    pub(super) budget: Option<super::budget::RawBudget>,
    /// `any_name_at_address: true` on a host rule: a connection to its
    /// addresses may name any host (or none), for protocols that name no
    /// host (SSH, a database); every name its front door serves is then
    /// reachable.
    pub(super) any_name_at_address: Option<bool>,
    /// `lookups: {names: N, per: WINDOW}` on a wildcard host rule.
    pub(super) lookups: Option<super::lookups::RawLookups>,
}

/// The one value of an explicit opt-in.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Intended {
    Intended,
}

/// Largest `cidr_file` read (a million prefixes take about 40 MB).
pub(super) const MAX_LIST_BYTES: u64 = 128 << 20;

/// Reads a `cidr_file` of the policy in `dir`: a regular file below that
/// directory, one address or prefix per line; `#` comments and blank lines
/// are skipped. Errors name the list's file and line, and do not repeat the
/// line (the daemon is privileged: its logs must not show another file).
pub(super) fn read_list(dir: &Path, rel: &Path) -> Result<NetList, String> {
    let shown = rel.display();
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "cidr_file `{shown}`: write a path relative to the policy's directory, without `..`"
        ));
    }
    let path = dir.join(rel);
    let (Ok(real), Ok(base)) = (path.canonicalize(), dir.canonicalize()) else {
        return Err(format!("cidr_file `{shown}`: cannot read it"));
    };
    let meta = std::fs::metadata(&real)
        .map_err(|e| format!("cidr_file `{shown}`: cannot read it: {e}"))?;
    // Kubernetes ConfigMap volumes hold symbolic links into `..data`, which
    // is below the directory too.
    if !real.starts_with(&base) || !meta.is_file() {
        return Err(format!(
            "cidr_file `{shown}`: not a regular file below the policy's directory"
        ));
    }
    if meta.len() > MAX_LIST_BYTES {
        return Err(format!(
            "cidr_file `{shown}`: larger than {MAX_LIST_BYTES} bytes"
        ));
    }
    let text = std::fs::read_to_string(&real)
        .map_err(|e| format!("cidr_file `{shown}`: cannot read it: {e}"))?;
    let mut nets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let net: Net = entry.parse().map_err(|_| {
            format!("cidr_file {shown}:{}: not an address or prefix in canonical form (like 203.0.113.0/24 or 2001:db8::/32)", i + 1)
        })?;
        nets.push(net.0);
    }
    Ok(NetList {
        file: path.to_path_buf(),
        nets: std::sync::Arc::new(nets),
    })
}

impl RawRule {
    pub(super) fn from_fields(r: RawRuleFields, dir: &Path) -> Result<Self, String> {
        let dest = match (r.host, r.cidr, r.ip, r.cidr_file) {
            (Some(h), None, None, None) => Destination::Host(h),
            (None, Some(n), None, None) | (None, None, Some(n), None) => Destination::Net(n),
            (None, None, None, Some(f)) => Destination::List(read_list(dir, &f)?),
            (None, None, None, None) => {
                return Err(
                    "an allow rule needs a destination: `host: NAME`, `cidr: PREFIX`, `ip: ADDRESS` or `cidr_file: PATH`"
                        .into(),
                )
            }
            _ => {
                return Err(
                    "an allow rule has one destination: write `host`, `cidr`, `ip` or `cidr_file`, not several (split it into two rules)"
                        .into(),
                )
            }
        };
        let shared = match &dest {
            Destination::Host(h) => h.over_shared_suffix(),
            _ => None,
        };
        match (shared, r.public_suffix) {
            (Some(suffix), None) => {
                return Err(format!(
                    "`*.{suffix}` is a wildcard over {suffix}, a shared domain where anyone can create a name of their own (a site, an app, a bucket): an attacker can make one and receive what the agent sends. Name the host (e.g. `host: yours.{suffix}`), or, if every name under it is really meant, add `public_suffix: intended` to this rule"
                ))
            }
            (None, Some(Intended::Intended)) => {
                return Err(format!(
                    "`public_suffix: intended` is only for a wildcard directly over a shared public suffix (like *.github.io), and `{dest}` is not one: remove it"
                ))
            }
            _ => {}
        }
        if r.ports.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(
                "`ports: []` allows nothing: list ports, or leave `ports` out to allow every port"
                    .into(),
            );
        }
        if r.any_name_at_address.is_some() && !matches!(dest, Destination::Host(_)) {
            return Err(format!(
                "`any_name_at_address` is for host rules (a connection to an `ip` or `cidr` rule's address is not asked for a name), and `{dest}` is not one: remove it"
            ));
        }
        let wildcard = matches!(&dest, Destination::Host(h) if h.is_wildcard());
        let lookups = match r.lookups {
            Some(_) if !wildcard => {
                return Err(format!(
                    "`lookups` limits the names looked up below a wildcard (`*.domain`), and `{dest}` is not one: remove it"
                ))
            }
            Some(l) => Some(l.try_into()?),
            None => None,
        };
        Ok(RawRule {
            dest,
            ports: r.ports.unwrap_or_default(),
            protocol: r.protocol,
            budget: r.budget.map(Into::into),
            any_name_at_address: r.any_name_at_address.unwrap_or(false),
            lookups,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    #[serde(default)]
    pub(super) upstream: Vec<Upstream>,
    /// Seconds.
    pub(super) min_ttl: Option<u64>,
    pub(super) max_ttl: Option<u64>,
    pub(super) grace: Option<u64>,
    /// `allow` or `refuse` (default) private addresses in DNS answers.
    pub(super) private_answers: Option<Answers>,
    /// Search domains (default: those of /etc/resolv.conf).
    pub(super) search: Option<Vec<SearchDomain>>,
    #[serde(default)]
    pub(super) refuse_with: super::RefuseWith,
}

/// A search domain: a DNS name, written without a leading or trailing dot.
pub(super) struct SearchDomain(pub(super) String);

impl<'de> Deserialize<'de> for SearchDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse::<super::Host>() {
            Ok(h) if !h.is_wildcard() => Ok(SearchDomain(h.as_str().to_string())),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not a search domain: write a DNS name such as cluster.local"
            ))),
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Answers {
    Allow,
    Refuse,
}

/// A resolver address, `IP` or `IP:PORT` (`[IPv6]:PORT`).
pub(super) struct Upstream(pub(super) SocketAddr);

impl std::str::FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Upstream(SocketAddr::new(ip, 53)));
        }
        s.parse().map(Upstream).map_err(|_| {
            format!("`{s}` is not a resolver address: write IP, IP:PORT or [IPv6]:PORT")
        })
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
