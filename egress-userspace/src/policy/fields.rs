//! Field types of a policy, each validating itself when it is parsed, so
//! that an error points at the line and field it came from and says what to
//! write instead.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};

/// Implements `Deserialize` through `FromStr` for a string field.
macro_rules! deserialize_from_str {
    ($ty:ty) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use deserialize_from_str;

/// enforce: refuse what is not allowed; audit: allow, but report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

/// tcp (the default), udp, or any (both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Any,
}

impl Protocol {
    /// The kernel's protocol bits (`egress_common::PROTO_BIT_*`).
    pub fn bits(self) -> u8 {
        use egress_common::{PROTO_BIT_TCP, PROTO_BIT_UDP};
        match self {
            Protocol::Tcp => PROTO_BIT_TCP,
            Protocol::Udp => PROTO_BIT_UDP,
            Protocol::Any => PROTO_BIT_TCP | PROTO_BIT_UDP,
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "any" => Ok(Protocol::Any),
            _ => Err(format!("unknown protocol `{s}`: write tcp, udp or any")),
        }
    }
}

/// An inclusive range of ports, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { lo: 1, hi: 65535 };
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a port: write a number from 1 to 65535"))?;
    if !(1..=65535).contains(&n) {
        return Err(format!(
            "port {n} is out of range: ports run from 1 to 65535"
        ));
    }
    Ok(n as u16)
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (parse_port(lo)?, parse_port(hi)?),
            None => {
                let p = parse_port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!(
                "port range `{s}` runs backwards: write `{hi}-{lo}`"
            ));
        }
        Ok(PortRange { lo, hi })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d).map_err(|_| {
            de::Error::custom("a port is a number (443) or a range in quotes (\"8000-8100\")")
        })? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(de::Error::custom)
    }
}

/// An IP address or prefix, in canonical form (no host bits set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net(pub IpNet);

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains("://") {
            return Err(format!(
                "`{s}` is a URL: write only the address or prefix, and the port under `ports`"
            ));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Net(IpNet::from(ip)));
        }
        let net: IpNet = s.parse().map_err(|_| {
            format!(
                "`{s}` is not an IP address or prefix: write e.g. 203.0.113.0/24 or 2001:db8::/32"
            )
        })?;
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set: write `{}` for the whole prefix, or the single address without `/{}`",
                net.trunc(),
                net.prefix_len()
            ));
        }
        Ok(Net(net))
    }
}

deserialize_from_str!(Net);

/// A policy name: lower-case letters, digits, `-`, `_`, `.`; 1 to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(pub String);

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(format!(
                "`{s}` is not a policy name: use 1 to 64 lower-case letters, digits, `-`, `_` or `.`, starting with a letter or digit"
            ));
        }
        Ok(Name(s.to_string()))
    }
}

deserialize_from_str!(Name);

/// A cgroup path relative to the cgroup2 root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath(pub std::path::PathBuf);

impl FromStr for CgroupPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rel = s.trim().trim_start_matches('/');
        if rel.is_empty() {
            return Err(
                "the cgroup2 root cannot be governed: name a cgroup below it, e.g. agents.slice/agent.service"
                    .into(),
            );
        }
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!(
                "`{s}` is not a plain cgroup path: no empty, `.` or `..` components"
            ));
        }
        if rel.starts_with("sys/fs/cgroup") {
            return Err(format!(
                "`{s}` looks like a mount path: write the path relative to the cgroup2 root, e.g. agents.slice/agent.service"
            ));
        }
        Ok(CgroupPath(rel.into()))
    }
}

deserialize_from_str!(CgroupPath);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Family, Host};

    #[test]
    fn ports_and_ranges() {
        assert_eq!(
            "443".parse::<PortRange>(),
            Ok(PortRange { lo: 443, hi: 443 })
        );
        assert_eq!(
            "8000-8100".parse::<PortRange>(),
            Ok(PortRange { lo: 8000, hi: 8100 })
        );
        assert!("0"
            .parse::<PortRange>()
            .unwrap_err()
            .contains("out of range"));
        assert!("65536"
            .parse::<PortRange>()
            .unwrap_err()
            .contains("out of range"));
        assert!("90-80".parse::<PortRange>().unwrap_err().contains("80-90"));
        assert!("http".parse::<PortRange>().is_err());
    }

    #[test]
    fn nets() {
        assert_eq!(
            "203.0.113.0/24".parse::<Net>().unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            "198.51.100.7".parse::<Net>().unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            "2001:db8::1".parse::<Net>().unwrap().to_string(),
            "2001:db8::1/128"
        );
        let e = "203.0.113.5/24".parse::<Net>().unwrap_err();
        assert!(e.contains("203.0.113.0/24"), "{e}");
        assert!("203.0.113.0/33".parse::<Net>().is_err());
        assert!("https://203.0.113.1/"
            .parse::<Net>()
            .unwrap_err()
            .contains("URL"));
    }

    #[test]
    fn families() {
        assert_eq!("vsock".parse::<Family>().unwrap().number(), 40);
        assert_eq!("AF_PACKET".parse::<Family>().unwrap().number(), 17);
        assert!("inet6"
            .parse::<Family>()
            .unwrap_err()
            .contains("always open"));
        assert!("nope".parse::<Family>().unwrap_err().contains("vsock"));
    }

    #[test]
    fn hosts() {
        assert_eq!(
            "API.Model.test.".parse::<Host>().unwrap().as_str(),
            "api.model.test"
        );
        assert!("https://api.model.test/v1"
            .parse::<Host>()
            .unwrap_err()
            .contains("URL"));
        assert!("api.model.test:443"
            .parse::<Host>()
            .unwrap_err()
            .contains("ports: [443]"));
        let w: Host = "*.CDN.test".parse().unwrap();
        assert!(w.is_wildcard());
        assert_eq!(w.to_string(), "*.cdn.test");
        assert!(w.matches("a.cdn.test") && w.matches("a.b.cdn.test"));
        assert!(!w.matches("cdn.test") && !w.matches("xcdn.test") && !w.matches("cdn.test.evil"));
        assert!("*.test".parse::<Host>().unwrap_err().contains("top-level"));
        assert!("a.*.test".parse::<Host>().unwrap_err().contains("leading"));
        assert!("*.*.test".parse::<Host>().unwrap_err().contains("leading"));
        assert!("203.0.113.1".parse::<Host>().unwrap_err().contains("cidr"));
        assert!("localhost"
            .parse::<Host>()
            .unwrap_err()
            .contains("single label"));
        assert!("bad..name.test".parse::<Host>().is_err());
        assert!("-bad.test".parse::<Host>().is_err());
    }

    #[test]
    fn names_and_cgroups() {
        assert!("doc-summarizer".parse::<Name>().is_ok());
        assert!("Doc Summarizer".parse::<Name>().is_err());
        assert_eq!(
            "/agents.slice/a.service".parse::<CgroupPath>().unwrap().0,
            std::path::PathBuf::from("agents.slice/a.service")
        );
        assert!("agents.slice/../x".parse::<CgroupPath>().is_err());
        assert!("/".parse::<CgroupPath>().is_err());
    }
}
