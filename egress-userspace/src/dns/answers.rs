//! What the proxy forwards and learns beyond "is the name allowed": only
//! query types that carry addresses (TXT or NULL queries for an allowed
//! name must not carry data out), and only addresses that
//! `policy::special` does not refuse.

use std::net::IpAddr;

use hickory_resolver::proto::rr::RecordType;

use crate::policy::{special::refused, Host, Policy};

/// Query types forwarded for an allowed name: those that answer with
/// addresses or lead to them.
pub fn type_allowed(t: RecordType) -> bool {
    matches!(
        t,
        RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::HTTPS | RecordType::SVCB
    )
}

/// Splits addresses answered for a name under `hosts` into those that may
/// be learned and those refused, each with why.
pub fn screen(
    policy: &Policy,
    hosts: &[Host],
    ips: Vec<IpAddr>,
) -> (Vec<IpAddr>, Vec<(IpAddr, &'static str)>) {
    let mut ok = Vec::with_capacity(ips.len());
    let mut no = Vec::new();
    for ip in ips {
        match refused(policy, hosts, ip) {
            Some(why) => no.push((ip, why)),
            None => ok.push(ip),
        }
    }
    (ok, no)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        assert!(type_allowed(RecordType::A) && type_allowed(RecordType::HTTPS));
        assert!(!type_allowed(RecordType::TXT) && !type_allowed(RecordType::NULL));
        assert!(!type_allowed(RecordType::MX) && !type_allowed(RecordType::ANY));
    }
}
