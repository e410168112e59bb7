//! YAML in, a validated `Policy` out, or an error that names the file, the
//! line and the field. Every check a single file can fail is made here
//! (or by the field types in `fields`, as they are read); what only
//! compiling finds is `compile::check`, and what concerns several files
//! (names, cgroups) is `load`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{error::PolicyError, raw::*, Channels, DnsSettings, Policy, Rule};

/// Parses and validates one policy from YAML text.
pub fn parse(text: &str, file: &Path) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        PolicyError {
            file: file.to_path_buf(),
            line,
            column,
            message: with_field(text, line, &strip_location(&e.to_string())),
        }
    })?;
    let whole = |message: String| PolicyError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message,
    };
    let defaults = DnsSettings::default();
    let secs = |v: Option<u64>, d: Duration| v.map(Duration::from_secs).unwrap_or(d);
    let dns = DnsSettings {
        upstream: raw.dns.upstream.into_iter().map(|u| u.0).collect(),
        min_ttl: secs(raw.dns.min_ttl, defaults.min_ttl),
        max_ttl: secs(raw.dns.max_ttl, defaults.max_ttl),
        grace: secs(raw.dns.grace, defaults.grace),
        private_answers: raw.dns.private_answers == Some(Answers::Allow),
        search: raw.dns.search.map(|l| l.into_iter().map(|d| d.0).collect()),
        refuse_with: raw.dns.refuse_with,
    };
    let day = Duration::from_secs(86_400);
    if dns.max_ttl > day || dns.grace > day {
        return Err(whole(format!(
            "dns.max_ttl ({}s) and dns.grace ({}s) are at most 86400 (a day)",
            dns.max_ttl.as_secs(),
            dns.grace.as_secs()
        )));
    }
    if dns.min_ttl.is_zero() || dns.min_ttl > dns.max_ttl {
        return Err(whole(format!(
            "dns.min_ttl ({}s) must be at least 1 and at most dns.max_ttl ({}s)",
            dns.min_ttl.as_secs(),
            dns.max_ttl.as_secs()
        )));
    }
    if raw.listen.iter().any(|l| l.ports.is_empty()) {
        return Err(whole(
            "listen: `ports: []` allows nothing: list the ports to listen on".into(),
        ));
    }
    let mut cgroups: Vec<PathBuf> = Vec::new();
    for c in raw.cgroups {
        if cgroups.contains(&c.0) {
            return Err(whole(format!(
                "cgroups: `{}` is listed twice",
                c.0.display()
            )));
        }
        cgroups.push(c.0);
    }
    let lines = rule_lines(text);
    let mut rules = Vec::with_capacity(raw.allow.len());
    for (i, fields) in raw.allow.into_iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(0);
        // `p.yaml` has the parent "", which names no directory.
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let r = RawRule::from_fields(fields, dir).map_err(|message| PolicyError {
            file: file.to_path_buf(),
            line,
            column: 0,
            message: format!("allow[{i}]: {message}"),
        })?;
        rules.push(Rule {
            dest: r.dest,
            ports: r.ports,
            protocol: r.protocol,
            budget: r.budget,
            any_name_at_address: r.any_name_at_address,
            lookups: r.lookups,
            line,
        });
    }
    Ok(Policy {
        name: raw.name.0,
        mode: raw.mode,
        cgroups,
        pods: raw.pods,
        rules,
        dns,
        listen: raw.listen,
        channels: Channels {
            families: raw.channels.families,
            io_uring: raw.channels.io_uring == Some(Answers::Allow),
            namespaces: raw.channels.namespaces == Some(Answers::Allow),
            unix: raw.channels.unix,
        },
        source: file.display().to_string(),
    })
}

/// serde_yaml_ng appends " at line L column C"; we print the place first.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// serde_yaml_ng's path stops at the mapping that holds a bad value; add
/// the key written on the error's line, so the message names the field.
fn with_field(text: &str, line: usize, message: &str) -> String {
    let key = line
        .checked_sub(1)
        .and_then(|i| text.lines().nth(i))
        .map(|l| l.trim_start().trim_start_matches("- "))
        .and_then(|l| l.split_once(':'))
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let Some(key) = key else {
        return message.to_string();
    };
    match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => {
            if path == key || path.ends_with(&format!(".{key}")) {
                message.to_string()
            } else {
                format!("{path}.{key}: {rest}")
            }
        }
        _ if message.contains(&format!("`{key}`")) => message.to_string(),
        _ => format!("{key}: {message}"),
    }
}

/// The line of each item of the top-level `allow:` list (block style).
fn rule_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut in_allow = false;
    let mut item_indent: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if indent == 0 {
            in_allow = body.starts_with("allow:");
            item_indent = None;
            if in_allow
                && body
                    .trim_start_matches("allow:")
                    .trim_start()
                    .starts_with("- ")
            {
                lines.push(i + 1);
            }
            continue;
        }
        if in_allow && (body.starts_with("- ") || body == "-") {
            let at = *item_indent.get_or_insert(indent);
            if indent == at {
                lines.push(i + 1);
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Destination, Mode, PortRange, Protocol};

    fn err(text: &str) -> PolicyError {
        parse(text, Path::new("p.yaml")).unwrap_err()
    }

    const GOOD: &str = "\
name: doc-summarizer
mode: audit
cgroups:
  - agents.slice/doc.service
allow:
  - host: api.model.test
    ports: [443]
  - cidr: 203.0.113.0/24
    ports: [\"8000-8100\", 53]
    protocol: udp
  - ip: 2001:db8::1
dns:
  upstream: [198.51.100.53, \"[2001:db8::53]:5353\"]
  min_ttl: 10
";

    #[test]
    fn parses_a_complete_policy() {
        let p = parse(GOOD, Path::new("p.yaml")).unwrap();
        assert_eq!(p.name, "doc-summarizer");
        assert_eq!(p.mode, Mode::Audit);
        assert_eq!(p.cgroups, vec![PathBuf::from("agents.slice/doc.service")]);
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.rules[0].line, 6);
        assert_eq!(p.rules[1].protocol, Protocol::Udp);
        assert_eq!(
            p.rules[1].ports,
            vec![
                PortRange { lo: 8000, hi: 8100 },
                PortRange { lo: 53, hi: 53 }
            ]
        );
        assert_eq!(p.rules[2].line, 11);
        assert!(p.rules[2].ports.is_empty());
        assert_eq!(p.dns.upstream[0], "198.51.100.53:53".parse().unwrap());
        assert_eq!(p.dns.upstream[1], "[2001:db8::53]:5353".parse().unwrap());
        assert_eq!(p.dns.min_ttl, Duration::from_secs(10));
        assert_eq!(p.hosts().len(), 1);
    }

    #[test]
    fn listen_and_channels() {
        let p = parse(
            "name: a\nlisten:\n  - ports: [8080, \"9000-9010\"]\n  - ports: [5353]\n    protocol: udp\nchannels:\n  families: [vsock]\n  io_uring: allow\n  namespaces: allow\n  unix: [/run/a.sock, \"@b\"]\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(p.listen.len(), 2);
        assert_eq!(p.listen[1].protocol, Protocol::Udp);
        assert_eq!(p.channels.families[0].number(), 40);
        assert!(p.channels.io_uring);
        assert!(p.channels.namespaces);
        assert_eq!(p.channels.unix.len(), 2);
        assert!(err("name: a\nlisten:\n  - ports: []\n")
            .to_string()
            .contains("allows nothing"));
        assert!(err("name: a\nchannels:\n  families: [inet]\n")
            .to_string()
            .contains("always open"));
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let e = err("name: a\nallow:\n  - host: api.model.test\n    port: 443\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.to_string().contains("unknown field `port`"), "{e}");
        assert!(e.to_string().starts_with("p.yaml:4:"), "{e}");
    }

    #[test]
    fn bad_cidr_names_line_and_fix() {
        let e = err("name: a\nallow:\n  - cidr: 203.0.113.7/24\n    ports: [443]\n");
        assert_eq!(e.line, 3, "{e}");
        let s = e.to_string();
        assert!(s.contains("allow[0].cidr"), "{s}");
        assert!(s.contains("203.0.113.0/24"), "{s}");
    }

    #[test]
    fn port_out_of_range() {
        let e = err("name: a\nallow:\n  - cidr: 203.0.113.0/24\n    ports: [443, 70000]\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.to_string().contains("out of range"), "{e}");
        assert!(e.to_string().contains("allow[0].ports"), "{e}");
    }

    #[test]
    fn url_and_port_in_host() {
        let e = err("name: a\nallow:\n  - host: https://api.model.test/v1\n");
        assert!(e.to_string().contains("URL"), "{e}");
        let e = err("name: a\nallow:\n  - host: api.model.test:443\n");
        assert!(e.to_string().contains("ports: [443]"), "{e}");
    }

    #[test]
    fn wildcards_below_a_domain_only() {
        let p = parse(
            "name: a\nallow:\n  - host: \"*.cdn.test\"\n    ports: [443]\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(p.host_rules_for("img.cdn.test").len(), 1);
        assert!(p.hosts().is_empty(), "wildcards are not resolved ahead");
        let e = err("name: a\nallow:\n  - host: \"*.test\"\n    ports: [443]\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.to_string().contains("wildcard over a top-level domain"),
            "{e}"
        );
    }

    #[test]
    fn a_wildcards_lookups_have_a_default_and_a_limit() {
        let p = parse(
            "name: a\nallow:\n  - host: \"*.cdn.test\"\n  - host: \"*.img.test\"\n    lookups: {names: 5, per: 1m}\n  - host: api.img.test\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        let limits = |n: &str| p.lookup_limits_for(n);
        assert_eq!(
            limits("a.cdn.test"),
            vec![("*.cdn.test".to_string(), super::super::lookups::DEFAULT)]
        );
        assert_eq!(limits("a.img.test")[0].1.names, 5);
        assert_eq!(limits("a.img.test")[0].1.window.as_secs(), 60);
        // Allowed by name: not counted.
        assert!(limits("api.img.test").is_empty());
        for (bad, says) in [
            (
                "  - host: api.test\n    lookups: {names: 5, per: 1m}\n",
                "is not one",
            ),
            (
                "  - host: \"*.cdn.test\"\n    lookups: {names: 0, per: 1m}\n",
                "refuse every name",
            ),
            (
                "  - host: \"*.cdn.test\"\n    lookups: {names: 1000000, per: 1m}\n",
                "at most 100000",
            ),
        ] {
            let e = err(&format!("name: a\nallow:\n{bad}"));
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn rule_needs_exactly_one_destination() {
        let e = err("name: a\nallow:\n  - host: a.test\n  - ports: [443]\n");
        assert!(e.to_string().contains("needs a destination"), "{e}");
        assert!(e.to_string().starts_with("p.yaml:4:0: allow[1]:"), "{e}");
        let e = err("name: a\nallow:\n  - host: a.test\n    cidr: 203.0.113.0/24\n");
        assert!(e.to_string().contains("not several"), "{e}");
        let e = err("name: a\nallow:\n  - host: a.test\n    ports: []\n");
        assert!(e.to_string().contains("allows nothing"), "{e}");
    }

    #[test]
    fn bad_mode_protocol_and_name() {
        assert!(err("name: a\nmode: permissive\n")
            .to_string()
            .contains("mode"));
        let e = err("name: a\nallow:\n  - cidr: 203.0.113.0/24\n    protocol: icmp\n");
        assert!(e.to_string().contains("protocol"), "{e}");
        assert!(err("name: Bad Name\n").to_string().contains("policy name"));
        assert!(err("mode: audit\n")
            .to_string()
            .contains("missing field `name`"));
    }

    #[test]
    fn cidr_file_lists_prefixes_and_names_bad_lines() {
        let dir = std::env::temp_dir().join(format!("egressd-list-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("ok.txt"),
            "# mirrors\n203.0.113.0/28\n\n2001:db8::/48  # v6\n198.51.100.7\n",
        )
        .unwrap();
        std::fs::write(dir.join("bad.txt"), "203.0.113.0/28\n203.0.113.99/24\n").unwrap();
        let policy = dir.join("p.yaml");
        let p = parse(
            "name: a\nallow:\n  - cidr_file: ok.txt\n    ports: [443]\n",
            &policy,
        )
        .unwrap();
        let Destination::List(l) = &p.rules[0].dest else {
            panic!("not a list")
        };
        assert_eq!(l.nets.len(), 3);
        let e = parse("name: a\nallow:\n  - cidr_file: bad.txt\n", &policy).unwrap_err();
        assert!(e.to_string().contains("bad.txt:2:"), "{e}");
        assert!(
            !e.to_string().contains("203.0.113.99"),
            "the line is not repeated: {e}"
        );
        let e = parse("name: a\nallow:\n  - cidr_file: missing.txt\n", &policy).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        for outside in ["/etc/hostname", "../ok.txt", "/proc/self/status"] {
            let e = parse(
                &format!("name: a\nallow:\n  - cidr_file: {outside}\n"),
                &policy,
            )
            .unwrap_err();
            assert!(e.to_string().contains("relative"), "{outside}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cgroup_listed_twice() {
        let e = err("name: a\ncgroups: [x.slice, /x.slice]\n");
        assert!(e.to_string().contains("listed twice"), "{e}");
    }
}
