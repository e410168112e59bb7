//! Host rules' names: exact or wildcard DNS names, checked as they are read.

use std::{fmt, net::IpAddr, str::FromStr};

use super::fields::deserialize_from_str;

/// A DNS name, lower case, without a trailing dot: exact (`api.example.com`)
/// or a wildcard (`*.example.com`: any name below example.com, not
/// example.com itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Host {
    name: String,
    wildcard: bool,
}

impl Host {
    /// The name (for a wildcard, the domain below which it matches).
    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// For a wildcard over a private-section public suffix (`*.github.io`),
    /// the suffix: anyone can create a name below it. A wildcard over an
    /// ICANN suffix never parses.
    pub fn over_shared_suffix(&self) -> Option<&str> {
        (self.wildcard && super::suffix::wildcard_opens(&self.name).is_some())
            .then_some(self.name.as_str())
    }

    /// Does a queried name (lower case, no trailing dot) fall under this rule?
    pub fn matches(&self, qname: &str) -> bool {
        if self.wildcard {
            qname.len() > self.name.len() + 1
                && qname.ends_with(&self.name)
                && qname.as_bytes()[qname.len() - self.name.len() - 1] == b'.'
        } else {
            qname == self.name
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Checks a DNS name and returns it lower case, without a trailing dot.
fn dns_name(s: &str, whole: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "`{whole}` is not a host name: names are 1 to 253 characters"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "`{whole}` is not a host name: each dot-separated label is 1 to 63 letters, digits, `-` or `_`, not starting or ending with `-`"
            ));
        }
    }
    Ok(name)
}

impl FromStr for Host {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains("://") || s.contains('/') {
            return Err(format!(
                "`{s}` is a URL or a path: write only the host name (e.g. api.example.com), and the port under `ports`"
            ));
        }
        if s.parse::<IpAddr>().is_ok() {
            return Err(format!("`{s}` is an IP address: write it as `cidr: {s}`"));
        }
        if let Some((name, port)) = s.rsplit_once(':') {
            return Err(format!(
                "`{s}` has a port in it: write `host: {name}` and `ports: [{port}]`"
            ));
        }
        if let Some(domain) = s.strip_prefix("*.") {
            if domain.contains('*') {
                return Err(format!(
                    "`{s}`: a wildcard is one leading `*.`, as in *.example.com"
                ));
            }
            let name = dns_name(domain, s)?;
            if !name.contains('.') {
                return Err(format!(
                    "`{s}` is a wildcard over a top-level domain: it would allow most of the Internet; name the domain (e.g. *.cdn.example.com)"
                ));
            }
            if super::suffix::wildcard_opens(&name) == Some(super::suffix::Section::Icann) {
                return Err(format!(
                    "`{s}` is a wildcard over a public suffix, where anyone can register a domain: it would allow every company's names and any an attacker registers; name the domain (e.g. *.cdn.example.{name})"
                ));
            }
            return Ok(Host {
                name,
                wildcard: true,
            });
        }
        if s.contains('*') {
            return Err(format!(
                "`{s}`: a wildcard is one leading `*.`, as in *.example.com"
            ));
        }
        let name = dns_name(s, s)?;
        if !name.contains('.') {
            return Err(format!(
                "`{s}` is a single label: write the fully qualified name (e.g. {s}.example.com)"
            ));
        }
        Ok(Host {
            name,
            wildcard: false,
        })
    }
}

deserialize_from_str!(Host);
