//! `egressd exec --allow DEST`: one allow rule written on the command line.
//!
//! Forms: `HOST:PORT`, `IP:PORT`, `CIDR:PORT`, `[IPv6]:PORT`, `[IPv6/LEN]:PORT`;
//! PORT is a number, `LOW-HIGH`, or `*` for every port; a `/udp` or `/any`
//! suffix changes the protocol from TCP.

use std::net::IpAddr;

use super::{Destination, Host, Listen, Net, PortRange, Protocol, Rule};

const FORMS: &str = "write HOST:PORT, IP:PORT, CIDR:PORT or [IPv6]:PORT, with PORT a number, LOW-HIGH or *, and /udp or /any after it for UDP";

/// Splits a `/tcp`, `/udp` or `/any` suffix off `s` (TCP without one).
fn protocol_suffix(s: &str) -> Result<(&str, Protocol), String> {
    Ok(match s.rsplit_once('/') {
        Some((rest, p @ ("tcp" | "udp" | "any"))) => (rest, p.parse::<Protocol>()?),
        _ => (s, Protocol::Tcp),
    })
}

/// Parses one `--listen` value: `PORT` or `LOW-HIGH`, with a protocol
/// suffix as `--allow` takes.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let (port, protocol) = protocol_suffix(s)?;
    let port = port.parse::<PortRange>()?;
    Ok(Listen {
        ports: vec![port],
        protocol,
    })
}

/// Parses one `--allow` value.
pub fn parse_allow(s: &str) -> Result<Rule, String> {
    let (rest, protocol) = protocol_suffix(s)?;
    let (dest, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, port) = inner.split_once("]:").ok_or_else(|| {
            format!("`{s}`: an IPv6 destination needs a port after `]:`; {FORMS}")
        })?;
        (addr, port)
    } else {
        rest.rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port; {FORMS}"))?
    };
    if dest.contains(':') && !rest.starts_with('[') {
        return Err(format!(
            "`{s}`: put an IPv6 address in brackets, e.g. [2001:db8::1]:443"
        ));
    }
    let ports = if port == "*" {
        Vec::new()
    } else {
        vec![port
            .parse::<PortRange>()
            .map_err(|e| format!("`{s}`: {e}"))?]
    };
    let dest = if dest.parse::<IpAddr>().is_ok() || dest.contains('/') {
        Destination::Net(dest.parse::<Net>().map_err(|e| format!("`{s}`: {e}"))?)
    } else {
        let host = dest.parse::<Host>().map_err(|e| format!("`{s}`: {e}"))?;
        if let Some(suffix) = host.over_shared_suffix() {
            return Err(format!(
                "`{s}`: a wildcard over {suffix}, a shared domain where anyone can create a name of their own: name the host, or write the rule in a policy file with `public_suffix: intended`"
            ));
        }
        Destination::Host(host)
    };
    Ok(Rule {
        dest,
        ports,
        protocol,
        budget: None,
        any_name_at_address: false,
        lookups: None,
        line: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (String, Vec<PortRange>, Protocol) {
        let r = parse_allow(s).unwrap();
        (r.dest.to_string(), r.ports, r.protocol)
    }

    #[test]
    fn forms() {
        let p443 = vec![PortRange { lo: 443, hi: 443 }];
        assert_eq!(
            ok("198.51.100.1:443"),
            ("198.51.100.1/32".into(), p443.clone(), Protocol::Tcp)
        );
        assert_eq!(
            ok("api.model.test:443"),
            ("api.model.test".into(), p443.clone(), Protocol::Tcp)
        );
        assert_eq!(
            ok("203.0.113.0/24:8000-8100/udp"),
            (
                "203.0.113.0/24".into(),
                vec![PortRange { lo: 8000, hi: 8100 }],
                Protocol::Udp
            )
        );
        assert_eq!(
            ok("[2001:db8::1]:443"),
            ("2001:db8::1/128".into(), p443.clone(), Protocol::Tcp)
        );
        assert_eq!(
            ok("[2001:db8::/32]:53/any"),
            (
                "2001:db8::/32".into(),
                vec![PortRange { lo: 53, hi: 53 }],
                Protocol::Any
            )
        );
        assert_eq!(
            ok("198.51.100.1:*"),
            ("198.51.100.1/32".into(), vec![], Protocol::Tcp)
        );
    }

    #[test]
    fn errors_say_what_to_write() {
        assert!(parse_allow("198.51.100.1").unwrap_err().contains("no port"));
        assert!(parse_allow("2001:db8::1:443")
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_allow("198.51.100.1:99999")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_allow("[2001:db8::1]").unwrap_err().contains("]:"));
        assert!(parse_allow("*.test:443").unwrap_err().contains("wildcard"));
        assert!(parse_allow("*.co.uk:443")
            .unwrap_err()
            .contains("public suffix"));
        assert!(parse_allow("*.github.io:443")
            .unwrap_err()
            .contains("public_suffix: intended"));
        assert!(parse_allow("*.pages.example.co.uk:443").is_ok());
        let l = parse_listen("8000-8100/udp").unwrap();
        assert_eq!(
            (l.ports[0].lo, l.ports[0].hi, l.protocol),
            (8000, 8100, Protocol::Udp)
        );
        assert_eq!(parse_listen("8080").unwrap().protocol, Protocol::Tcp);
        assert!(parse_listen("http").is_err() && parse_listen("8080/sctp").is_err());
        assert_eq!(
            parse_allow("*.x.test:443").unwrap().dest.to_string(),
            "*.x.test"
        );
    }
}
