//! Property tests (a fuzzer run on every `cargo xtask test`): the policy
//! parser and the DNS message handling never panic, whatever the input,
//! and their answers stay within what the input allows.

use std::{net::IpAddr, path::Path};

use egressd::{
    dns::message::{addresses, question, reply_code},
    policy::{dest::parse_allow, file::parse},
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
