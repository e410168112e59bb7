//! Addresses no DNS answer should make reachable: loopback, link-local
//! (the cloud metadata service), unspecified, multicast, broadcast, other
//! metadata addresses, and private ranges unless the policy allows them.
//! A name whose records others can write (a wildcard's) must not turn the
//! agent's host, a metadata service or the local network into a
//! destination (DNS rebinding). IPv4 carried in IPv6 (mapped, compatible,
//! NAT64, 6to4) is judged as that IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Host, Policy};

/// Why an answered address is never admitted, if it is special: an address
/// no DNS answer should make reachable unless a policy's `ip` or `cidr`
/// rule names it.
pub fn special(ip: IpAddr, refuse_private: bool) -> Option<&'static str> {
    if METADATA.contains(&ip) {
        return Some("a cloud metadata service");
    }
    match ip {
        IpAddr::V4(v4) => special4(v4, refuse_private),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => special4(v4, refuse_private),
            None => special6(v6, refuse_private),
        },
    }
}

/// Metadata services outside link-local space (AWS over IPv6, Alibaba),
/// refused even where private answers are allowed.
const METADATA: &[IpAddr] = &[
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// The IPv4 address an IPv6 one carries, where the packet may end up at
/// it: IPv4-mapped and -compatible, NAT64 (64:ff9b::/96, 64:ff9b:1::/48)
/// and 6to4 (2002::/16).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last = |a: u16, b: u16| Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8);
    let compatible = s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified();
    let nat64 =
        s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1);
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if compatible || nat64 {
        Some(last(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(last(s[1], s[2]))
    } else {
        None
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
    } else if refuse_private && (first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0) {
        Some("private")
    } else {
        None
    }
}

/// Why `ip`, answered for a name under `hosts`, must not be admitted: it is
/// special, and the policy's `ip` and `cidr` rules do not already allow it
/// on those rules' ports.
pub fn refused(policy: &Policy, hosts: &[Host], ip: IpAddr) -> Option<&'static str> {
    let why = special(ip, !policy.dns.private_answers)?;
    let covered = !hosts.is_empty() && hosts.iter().all(|h| policy.net_rules_cover(ip, h));
    (!covered).then_some(why)
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
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::1",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            assert!(special(ip(s), false).is_some(), "{s}");
        }
        assert_eq!(special(ip("64:ff9b::a00:1"), true), Some("private"));
        assert_eq!(special(ip("fec0::1"), true), Some("private"));
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
    fn covered_only_on_the_host_rules_ports() {
        let policy = |extra: &str| {
            crate::policy::validate::parse(
                &format!("name: p\nallow:\n  - host: \"*.corp.test\"\n    ports: [443]\n{extra}"),
                std::path::Path::new("p.yaml"),
            )
            .unwrap()
        };
        let hosts = ["*.corp.test".parse::<Host>().unwrap()];
        let db = policy("  - cidr: 10.0.0.0/8\n    ports: [5432]\n");
        assert_eq!(refused(&db, &hosts, ip("10.1.2.3")), Some("private"));
        let web = policy("  - cidr: 10.0.0.0/8\n    ports: [\"400-500\"]\n");
        assert_eq!(refused(&web, &hosts, ip("10.1.2.3")), None);
        assert_eq!(refused(&web, &hosts, ip("127.0.0.1")), Some("loopback"));
        let udp_only = policy("  - cidr: 10.0.0.0/8\n    ports: [443]\n    protocol: udp\n");
        assert_eq!(refused(&udp_only, &hosts, ip("10.1.2.3")), Some("private"));
    }
}
