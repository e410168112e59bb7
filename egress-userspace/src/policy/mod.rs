//! Policies: what a governed cgroup may reach.
//!
//! A policy file goes parse (`file`), then validate (the field types here
//! check themselves as they are read, so every error carries its line), then
//! compile (`crate::compile`). `dest` parses `egressd exec --allow` options
//! into the same rules; `lint` finds allowed-but-dangerous destinations;
//! `suffix` knows the public suffixes, below which anyone can make a name;
//! `unix` reads `channels.unix`.

pub mod budget;
pub mod dest;
pub mod error;
pub mod family;
pub mod fields;
pub mod host;
pub mod lint;
pub mod load;
pub mod lookups;
pub mod raw;
pub mod resolver;
pub mod selector;
pub mod special;
pub mod suffix;
pub mod unix;
pub mod unix_writers;
pub mod validate;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use family::Family;
pub use fields::{Mode, Net, PortRange, Protocol};
pub use host::Host;
pub use selector::PodSelector;

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    /// Governed cgroups, relative to the cgroup2 root.
    pub cgroups: Vec<PathBuf>,
    /// Kubernetes pods governed (on this node), by namespace and labels.
    pub pods: Vec<PodSelector>,
    pub rules: Vec<Rule>,
    pub dns: DnsSettings,
    /// Ports the governed processes may listen on (bind to on an address
    /// other than loopback); empty: none.
    pub listen: Vec<Listen>,
    /// Channels beyond IP destinations that the policy opens.
    pub channels: Channels,
    /// Where the policy came from (a file path, or "command line").
    pub source: String,
}

/// Ports a policy lets its processes listen on (`listen:`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Channels a policy opens beyond its IP destinations (`channels:`); all
/// closed by default. `exec` enforces them with a seccomp filter (see
/// `crate::confine::seccomp`); `run` cannot, for processes it does not start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Channels {
    /// Socket families beyond AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK.
    pub families: Vec<Family>,
    /// io_uring, which can make sockets out of a seccomp filter's sight.
    pub io_uring: bool,
    /// New user and network namespaces (`exec` refuses them otherwise).
    pub namespaces: bool,
    /// UNIX socket names the processes may connect or send to.
    pub unix: Vec<unix::UnixName>,
}

/// One allow rule: a destination, its ports, its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub dest: Destination,
    /// Empty means every port.
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
    /// An upload budget on what goes to the rule's destinations.
    pub budget: Option<budget::Budget>,
    /// A host rule whose connections need not name the host (see
    /// `Rule::checks_names`).
    pub any_name_at_address: bool,
    /// `lookups:` as written (see `Rule::lookups`).
    pub lookups: Option<lookups::Lookups>,
    /// 1-based line in the source file (0 for the command line).
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A DNS name (exact or wildcard); its addresses are those egressd
    /// resolved or answered for it.
    Host(Host),
    /// An address or a prefix.
    Net(Net),
    /// Addresses and prefixes from a file, one per line (`cidr_file:`).
    List(NetList),
}

/// A list of prefixes read from a file (for allowlists of thousands of
/// entries, which YAML carries slowly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetList {
    pub file: PathBuf,
    pub nets: std::sync::Arc<Vec<ipnet::IpNet>>,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Host(h) => write!(f, "{h}"),
            Destination::Net(n) => write!(f, "{n}"),
            Destination::List(l) => write!(f, "{} ({} prefixes)", l.file.display(), l.nets.len()),
        }
    }
}

impl Rule {
    /// Whether a TCP connection to this rule's addresses must name, in
    /// its first bytes, a host the policy's DNS answered with the address
    /// (and UDP to them is refused): a host rule without
    /// `any_name_at_address`.
    pub fn checks_names(&self) -> bool {
        matches!(self.dest, Destination::Host(_)) && !self.any_name_at_address
    }

    /// How many distinct names below this rule's wildcard may be looked
    /// up (None for every other rule): as written, or the default.
    pub fn lookups(&self) -> Option<lookups::Lookups> {
        match &self.dest {
            Destination::Host(h) if h.is_wildcard() => {
                Some(self.lookups.unwrap_or(lookups::DEFAULT))
            }
            _ => None,
        }
    }

    /// The rule in a few words, as metrics, `status` and `exec` name it:
    /// `api.model.test:443`, `203.0.113.0/28:8000-8010`,
    /// `203.0.113.7:9000/udp`, `list.txt:8080` (a `cidr_file`), `:*`
    /// for every port.
    pub fn label(&self) -> String {
        let dest = match &self.dest {
            Destination::List(l) => l.file.file_name().map_or_else(
                || l.file.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            Destination::Net(n) if n.0.prefix_len() == n.0.max_prefix_len() => {
                n.0.addr().to_string()
            }
            d => d.to_string(),
        };
        let ports = if self.ports.is_empty() {
            "*".to_string()
        } else {
            let p: Vec<String> = self.ports.iter().map(PortRange::to_string).collect();
            p.join(",")
        };
        let proto = match self.protocol {
            Protocol::Tcp => "",
            Protocol::Udp => "/udp",
            Protocol::Any => "/any",
        };
        format!("{dest}:{ports}{proto}")
    }

    /// The ports this rule allows; all ports when none are listed.
    pub fn port_ranges(&self) -> Vec<PortRange> {
        if self.ports.is_empty() {
            vec![PortRange::ALL]
        } else {
            self.ports.clone()
        }
    }
}

/// How egressd resolves the hostnames a policy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Resolvers to ask; empty means those of /etc/resolv.conf.
    pub upstream: Vec<SocketAddr>,
    /// Re-resolve no sooner than this, whatever the TTL says.
    pub min_ttl: Duration,
    /// Re-resolve no later than this, whatever the TTL says.
    pub max_ttl: Duration,
    /// How long an address stays allowed after its TTL ran out without it
    /// being seen again (clients cache answers past their TTL).
    pub grace: Duration,
    /// Whether a DNS answer may make private addresses (10/8, 172.16/12,
    /// 192.168/16, 100.64/10, fc00::/7) reachable; default no.
    pub private_answers: bool,
    /// The resolver's search domains (`dns.search`); `None`: those of
    /// /etc/resolv.conf. A query for an allowed name with one of them
    /// appended is a search-list expansion, answered NXDOMAIN quietly.
    pub search: Option<Vec<String>>,
    /// The reply to a name no rule allows (`dns.refuse_with`).
    pub refuse_with: RefuseWith,
}

/// How the proxy answers a name no rule allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefuseWith {
    /// The name does not exist: a resolver goes on down its search list
    /// (musl stops at REFUSED, so Alpine images could not resolve an
    /// allowed name under Kubernetes' ndots:5).
    #[default]
    Nxdomain,
    /// REFUSED.
    Refused,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            upstream: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(300),
            private_answers: false,
            search: None,
            refuse_with: RefuseWith::default(),
        }
    }
}

impl Policy {
    /// The exact hostnames the policy names, once each (those egressd
    /// resolves ahead of the agent).
    pub fn hosts(&self) -> Vec<Host> {
        let mut hosts: Vec<Host> = self
            .rules
            .iter()
            .filter_map(|r| match &r.dest {
                Destination::Host(h) if !h.is_wildcard() => Some(h.clone()),
                _ => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

impl Policy {
    /// Do the policy's `ip`, `cidr` and `cidr_file` rules allow `ip` on
    /// every port and protocol its rules for `host` allow? Then a DNS
    /// answer of `ip` for `host` opens nothing the policy does not already
    /// allow. (Each of the host rule's port ranges must lie within one
    /// range of one covering rule: a cautious reading.)
    pub fn net_rules_cover(&self, ip: std::net::IpAddr, host: &Host) -> bool {
        let ip = unmap(ipnet::IpNet::from(ip)).addr();
        let covering: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| match &r.dest {
                Destination::Net(n) => unmap(n.0).contains(&ip),
                Destination::List(l) => l.nets.iter().any(|n| unmap(*n).contains(&ip)),
                Destination::Host(_) => false,
            })
            .collect();
        let mut host_rules = self
            .rules
            .iter()
            .filter(|r| matches!(&r.dest, Destination::Host(h) if h == host))
            .peekable();
        host_rules.peek().is_some()
            && host_rules.all(|hr| {
                let bits = hr.protocol.bits();
                hr.port_ranges().iter().all(|want| {
                    covering.iter().any(|nr| {
                        nr.protocol.bits() & bits == bits
                            && nr
                                .port_ranges()
                                .iter()
                                .any(|have| have.lo <= want.lo && want.hi <= have.hi)
                    })
                })
            })
    }

    /// The host rules a queried name falls under, once each.
    /// Whether a host rule that checks names (see `Rule::checks_names`)
    /// matches `qname`.
    pub fn names_checked_for(&self, qname: &str) -> bool {
        self.rules.iter().any(|r| {
            r.checks_names() && matches!(&r.dest, Destination::Host(h) if h.matches(qname))
        })
    }

    /// The wildcard rules whose lookups a query for `qname` counts
    /// against, with their limits: none when an exact host rule allows
    /// the name (it is then named in the policy, not made up).
    pub fn lookup_limits_for(&self, qname: &str) -> Vec<(String, lookups::Lookups)> {
        let hosts = self.rules.iter().filter_map(|r| match &r.dest {
            Destination::Host(h) if h.matches(qname) => Some((r, h)),
            _ => None,
        });
        let mut limits = Vec::new();
        for (rule, host) in hosts {
            match rule.lookups() {
                Some(l) => limits.push((host.to_string(), l)),
                None => return Vec::new(),
            }
        }
        limits
    }

    pub fn host_rules_for(&self, qname: &str) -> Vec<Host> {
        let mut hosts: Vec<Host> = self
            .rules
            .iter()
            .filter_map(|r| match &r.dest {
                Destination::Host(h) if h.matches(qname) => Some(h.clone()),
                _ => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// IPv4-mapped IPv6 prefixes (`::ffff:0:0/96` and inside) are IPv4.
pub fn unmap(net: ipnet::IpNet) -> ipnet::IpNet {
    if let ipnet::IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                return ipnet::IpNet::V4(
                    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("length <= 32"),
                );
            }
        }
    }
    net
}
