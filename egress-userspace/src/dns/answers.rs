//! What the proxy forwards and learns beyond "is the name allowed": the
//! query types that carry addresses, and the addresses an answer may make
//! reachable. A name whose records others can write (a wildcard's) must not
//! turn loopback, a metadata service or the local network into a
//! destination, and TXT or NULL queries for an allowed name must not carry
//! data out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_resolver::proto::rr::RecordType;

use crate::policy::Policy;

/// Query types forwarded for an allowed name: those that answer with
/// addresses or lead to them.
pub fn type_allowed(t: RecordType) -> bool {
    matches!(
        t,
        RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::HTTPS | RecordType::SVCB
    )
}

/// Why an answered address is never learned, if it is special: an address
/// no DNS answer should make reachable unless a policy's `ip` or `cidr`
/// rule names it.
pub fn special(ip: IpAddr, refuse_private: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special4(v4, refuse_private),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => special4(v4, refuse_private),
            None => special6(v6, refuse_private),
        },
    }
}

fn special4(ip: Ipv4Addr, refuse_private: bool) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (the cloud metadata service lives there)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else if refuse_private && (ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)) {
        Some("private")
    } else {
        None
    }
}

fn special6(ip: Ipv6Addr, refuse_private: bool) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local (the cloud metadata service lives there)")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast or broadcast")
    } else if refuse_private && first & 0xfe00 == 0xfc00 {
        Some("private")
    } else {
        None
    }
}

/// Splits answered addresses into those that may be learned and those
/// refused (each with why): a special address is refused unless one of the
/// policy's `ip` or `cidr` rules covers it.
pub fn screen(policy: &Policy, ips: Vec<IpAddr>) -> (Vec<IpAddr>, Vec<(IpAddr, &'static str)>) {
    let refuse_private = !policy.dns.private_answers;
    let mut ok = Vec::with_capacity(ips.len());
    let mut refused = Vec::new();
    for ip in ips {
        match special(ip, refuse_private) {
            Some(why) if !policy.net_rule_covers(ip) => refused.push((ip, why)),
            _ => ok.push(ip),
        }
    }
    (ok, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_addresses() {
        for s in [
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(special(ip(s), false).is_some(), "{s}");
        }
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert_eq!(special(ip(s), true), Some("private"), "{s}");
            assert_eq!(special(ip(s), false), None, "{s}");
        }
        for s in [
            "198.51.100.1",
            "203.0.113.9",
            "2001:db8::1",
            "::ffff:198.51.100.1",
        ] {
            assert_eq!(special(ip(s), true), None, "{s}");
        }
    }

    #[test]
    fn types() {
        assert!(type_allowed(RecordType::A) && type_allowed(RecordType::HTTPS));
        assert!(!type_allowed(RecordType::TXT) && !type_allowed(RecordType::NULL));
        assert!(!type_allowed(RecordType::MX) && !type_allowed(RecordType::ANY));
    }
}
