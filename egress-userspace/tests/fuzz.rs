//! Property tests (a fuzzer run on every `cargo xtask test`): the policy
//! parser and the DNS message handling never panic, whatever the input,
//! and their answers stay within what the input allows.

use std::{net::IpAddr, path::Path};

use egressd::{
    dns::message::{addresses, question, reply_code},
    policy::{dest::parse_allow, validate::parse},
};
use hickory_resolver::proto::op::ResponseCode;
use proptest::prelude::*;

/// Fragments of policy files, shuffled into mostly-plausible YAML.
fn policy_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("name: p".to_string()),
        Just("mode: audit".to_string()),
        Just("allow:".to_string()),
        Just("cgroups: [a.slice]".to_string()),
        Just("  - host: api.model.test".to_string()),
        Just("  - host: \"*.cdn.test\"".to_string()),
        Just("  - cidr: 203.0.113.0/24".to_string()),
        Just("  - ip: \"::ffff:198.51.100.7\"".to_string()),
        Just("    ports: [443, \"8000-8100\"]".to_string()),
        Just("    protocol: udp".to_string()),
        Just("dns:\n  upstream: [198.51.100.53]".to_string()),
        "[ -~]{0,40}",
        "  [a-z]{1,8}: [ -~]{0,20}",
    ];
    prop::collection::vec(line, 0..12).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn policy_parser_never_panics(text in policy_text()) {
        let lines = text.lines().count();
        match parse(&text, Path::new("f.yaml")) {
            Ok(p) => {
                prop_assert!(!p.name.is_empty());
                for r in &p.rules {
                    prop_assert!(r.ports.iter().all(|p| p.lo >= 1 && p.lo <= p.hi));
                }
            }
            Err(e) => prop_assert!(e.line <= lines + 1, "{e}"),
        }
    }

    #[test]
    fn policy_parser_never_panics_on_any_bytes(text in "\\PC{0,200}") {
        let _ = parse(&text, Path::new("f.yaml"));
    }

    #[test]
    fn allow_option_parser_never_panics(s in "[ -~]{0,40}") {
        if let Ok(rule) = parse_allow(&s) {
            prop_assert!(rule.ports.iter().all(|p| p.lo >= 1 && p.lo <= p.hi));
        }
    }

    #[test]
    fn dns_query_handling_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok((msg, q)) = question(&bytes) {
            let _ = reply_code(&msg, ResponseCode::Refused);
            let _ = addresses(&q, &bytes);
        }
    }

    /// Answers mutated from a valid one: never a panic, and never an address
    /// the mutated bytes do not hold. (That records for other names allow
    /// nothing is a unit test in dns::message.)
    #[test]
    fn dns_answer_handling_never_panics(
        flips in prop::collection::vec((0usize..200, any::<u8>()), 0..8),
        cut in 0usize..200,
    ) {
        let (q_bytes, a_bytes) = sample();
        let (_, q) = question(&q_bytes).unwrap();
        let mut a = a_bytes.clone();
        for (i, b) in flips {
            if let Some(x) = a.get_mut(i) {
                *x = b;
            }
        }
        a.truncate(cut.max(12).min(a.len()));
        if let Ok((_, ips, _)) = addresses(&q, &a) {
            for ip in ips {
                let octets = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                prop_assert!(a.windows(octets.len()).any(|w| w == octets.as_slice()));
            }
        }
    }
}

/// A query for api.model.test (A) and an answer with one address.
fn sample() -> (Vec<u8>, Vec<u8>) {
    use hickory_resolver::proto::{
        op::{Message, MessageType, Query},
        rr::{rdata::A, Name, RData, Record, RecordType},
    };
    use std::str::FromStr;
    let name = Name::from_str("api.model.test.").unwrap();
    let mut q = Message::new();
    q.set_id(9)
        .add_query(Query::query(name.clone(), RecordType::A));
    let mut a = q.clone();
    a.set_message_type(MessageType::Response)
        .add_answer(Record::from_rdata(
            name,
            60,
            RData::A(A::new(198, 51, 100, 1)),
        ));
    (q.to_vec().unwrap(), a.to_vec().unwrap())
}

/// One overlapping IPv4 or IPv6 rule: (IPv6?, last byte, prefix length
/// within the last byte, port, protocol).
fn net_rule() -> impl Strategy<Value = (bool, u8, u8, u16, u8)> {
    (any::<bool>(), any::<u8>(), 0u8..=8, 1u16..=12, 0u8..3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Each compiled entry allows exactly the ports of every rule that
    /// covers it: a prefix rule its prefix is inside (its own included), a
    /// host rule one of whose addresses it is. The entries are the rules'
    /// prefixes and the hosts' addresses, each once.
    #[test]
    fn compiled_entries_carry_every_covering_rule(
        rules in prop::collection::vec(net_rule(), 0..40),
        host_ports in prop::collection::vec((1u16..=12, 0u8..3), 0..4),
        answers in prop::collection::vec((0usize..4, any::<bool>(), any::<u8>()), 0..12),
    ) {
        use egressd::compile::{plan::Plan, Compiled};
        use ipnet::IpNet;
        use std::collections::{BTreeSet, HashMap};
        let protos = ["tcp", "udp", "any"];
        let nets: Vec<IpNet> = rules
            .iter()
            .map(|&(v6, byte, bits, _, _)| {
                let text = if v6 {
                    format!("2001:db8::{byte:x}/{}", 120 + bits)
                } else {
                    format!("203.0.113.{byte}/{}", 24 + bits)
                };
                text.parse::<IpNet>().unwrap().trunc()
            })
            .collect();
        let mut yaml = "name: p\nallow:\n".to_string();
        for (net, &(_, _, _, port, proto)) in nets.iter().zip(&rules) {
            yaml += &format!("  - cidr: {net}\n    ports: [{port}]\n    protocol: {}\n", protos[proto as usize]);
        }
        for (i, &(port, proto)) in host_ports.iter().enumerate() {
            yaml += &format!("  - host: h{i}.test\n    ports: [{port}]\n    protocol: {}\n", protos[proto as usize]);
        }
        // Each host's addresses, as the resolver would give them.
        let mut resolved: HashMap<egressd::policy::Host, Vec<IpAddr>> = HashMap::new();
        let mut host_ips: Vec<Vec<IpAddr>> = vec![Vec::new(); host_ports.len()];
        for &(h, v6, byte) in &answers {
            if host_ports.is_empty() { break; }
            let h = h % host_ports.len();
            let ip: IpAddr = if v6 { format!("2001:db8::{byte:x}") } else { format!("203.0.113.{byte}") }.parse().unwrap();
            host_ips[h].push(ip);
            resolved.entry(format!("h{h}.test").parse().unwrap()).or_default().push(ip);
        }
        let policy = parse(&yaml, Path::new("p.yaml")).unwrap();
        // What the kernel's trie holds: the admitted entries, and the prefix
        // entries whose prefix no admitted entry replaces (as `kernel::tables`
        // writes them).
        let plan = Plan::new(&policy).unwrap();
        let admitted = plan.admitted(&resolved).unwrap();
        // (port, TCP?) pairs a compiled spec allows.
        let allowed = |c: &Compiled, spec: u32| -> BTreeSet<(u16, bool)> {
            c.specs[spec as usize].0.iter().flat_map(|r| {
                (r.lo..=r.hi).flat_map(move |p| {
                    [(p, true, r.protos & 1 != 0), (p, false, r.protos & 2 != 0)]
                })
            }).filter(|t| t.2).map(|(p, tcp, _)| (p, tcp)).collect()
        };
        let add = |want: &mut BTreeSet<(u16, bool)>, port: u16, proto: u8| {
            if proto != 1 { want.insert((port, true)); }
            if proto != 0 { want.insert((port, false)); }
        };
        let of = |c: &Compiled| -> Vec<(IpNet, BTreeSet<(u16, bool)>)> {
            c.v4.iter()
                .map(|e| (IpNet::new(std::net::Ipv4Addr::from(e.addr).into(), e.len).unwrap(), allowed(c, e.spec)))
                .chain(c.v6.iter().map(|e| (IpNet::new(std::net::Ipv6Addr::from(e.addr).into(), e.len).unwrap(), allowed(c, e.spec))))
                .collect()
        };
        let mut entries = of(&admitted);
        let replaced: BTreeSet<IpNet> = entries.iter().map(|e| e.0).collect();
        entries.extend(of(&plan.prefixes).into_iter().filter(|e| !replaced.contains(&e.0)));
        let distinct: BTreeSet<IpNet> = nets.iter().copied()
            .chain(host_ips.iter().flatten().map(|ip| IpNet::from(*ip)))
            .collect();
        prop_assert_eq!(entries.len(), distinct.len());
        prop_assert_eq!(entries.iter().map(|e| e.0).collect::<BTreeSet<_>>(), distinct);
        for (net, ports) in &entries {
            let mut want = BTreeSet::new();
            for (rule, &(_, _, _, port, proto)) in nets.iter().zip(&rules) {
                if rule.contains(net) {
                    add(&mut want, port, proto);
                }
            }
            for (ips, &(port, proto)) in host_ips.iter().zip(&host_ports) {
                if ips.iter().any(|ip| IpNet::from(*ip) == *net) {
                    add(&mut want, port, proto);
                }
            }
            prop_assert_eq!(ports, &want, "{}", net);
        }
        for c in [&plan.prefixes, &admitted] {
            for w in c.v4.windows(2) { prop_assert!((w[0].addr, w[0].len) < (w[1].addr, w[1].len)); }
            for w in c.v6.windows(2) { prop_assert!((w[0].addr, w[0].len) < (w[1].addr, w[1].len)); }
        }
    }
}
