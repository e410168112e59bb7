//! `egressd check` warnings: rules that are valid but let data out more
//! widely than their author probably meant (the broad-endpoint trap).

use ipnet::IpNet;

use super::{Destination, Policy, Rule};

/// Services that relay or store whatever they are sent, which the Public
/// Suffix List does not cover (it lists only domains below which users get
/// names of their own; see `super::suffix`): paste sites, request bins,
/// webhook endpoints, tunnels that serve from one name, chat bots' APIs,
/// and names that encode any IP address. Kept by hand from these services'
/// own documentation. The two storage domains the list does carry stay
/// here so that a wildcard *above* them (`*.amazonaws.com`) is caught too.
const RELAY_SUFFIXES: &[&str] = &[
    "pastebin.com",
    "paste.ee",
    "hastebin.com",
    "gist.githubusercontent.com",
    "webhook.site",
    "requestbin.com",
    "pipedream.net",
    "hooks.slack.com",
    "hooks.zapier.com",
    "loca.lt",
    "serveo.net",
    "transfer.sh",
    "s3.amazonaws.com",
    "storage.googleapis.com",
    "blob.core.windows.net",
    "r2.cloudflarestorage.com",
    "discord.com",
    "telegram.org",
    // Names that encode any IP address: a wildcard over them opens every address.
    "nip.io",
    "sslip.io",
    "xip.io",
    "traefik.me",
];

/// Cloud instance metadata endpoints (credentials live there).
const METADATA: &[&str] = &[
    "169.254.169.254/32",
    "fd00:ec2::254/128",
    "169.254.170.2/32",
];

/// Private and local ranges, which a rule should not allow wholesale.
const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

/// One warning about one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|s| s.parse().expect("constant prefix"))
        .collect()
}

fn rule_warnings(rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    if rule.any_name_at_address {
        out.push(format!(
            "`{}` has `any_name_at_address: true`: a connection to its addresses need not name this host, so every site its front door (a CDN, a cloud load balancer) serves on that address is reachable under this rule. Keep it for protocols that name no host (SSH, a database), on ports that carry nothing else",
            rule.dest
        ));
    }
    if rule.ports.is_empty() {
        out.push(format!(
            "`{}` allows every port: list the ports the agent needs",
            rule.dest
        ));
    }
    match &rule.dest {
        Destination::Net(n) => {
            // Judged as the kernel judges it: mapped IPv6 is IPv4.
            let net = crate::policy::unmap(n.0);
            let broad = match net {
                IpNet::V4(v4) => v4.prefix_len() < 8,
                IpNet::V6(v6) => v6.prefix_len() < 16,
            };
            if net.prefix_len() == 0 {
                out.push(format!(
                    "`{net}` allows the whole Internet: an agent can send data anywhere"
                ));
            } else if broad {
                out.push(format!(
                    "`{net}` is a very broad prefix: anything in it can relay data"
                ));
            }
            for m in nets(METADATA) {
                if net.contains(&m) && net.prefix_len() > 0 {
                    out.push(format!(
                        "`{net}` includes the cloud metadata address {m}, where instance credentials are served"
                    ));
                }
            }
            for p in nets(PRIVATE) {
                if net.contains(&p) && net.prefix_len() > 0 {
                    out.push(format!(
                        "`{net}` allows the private range {p} wholesale: list the hosts the agent needs"
                    ));
                }
            }
        }
        Destination::List(l) => {
            if let Some(n) = l
                .nets
                .iter()
                .find(|n| crate::policy::unmap(**n).prefix_len() == 0)
            {
                out.push(format!(
                    "{} holds `{n}`, which allows the whole Internet",
                    l.file.display()
                ));
            }
        }
        Destination::Host(h) => {
            let name = h.as_str();
            if let Some(s) = RELAY_SUFFIXES
                .iter()
                .find(|s| name == **s || name.ends_with(&format!(".{s}")))
            {
                out.push(format!(
                    "`{name}` is under {s}, a service that relays or stores whatever it is sent: an attacker can read it there"
                ));
            } else if let Some(s) = RELAY_SUFFIXES
                .iter()
                .find(|s| h.is_wildcard() && s.ends_with(&format!(".{name}")))
            {
                out.push(format!(
                    "`{h}` covers {s}, a service that relays or stores whatever it is sent: an attacker can read it there"
                ));
            }
            if let Some(s) = h.over_shared_suffix() {
                out.push(format!(
                    "`{h}` allows every name under {s}, where anyone can create one (`public_suffix: intended`): an attacker's name there receives what the agent sends"
                ));
            } else if let Some(s) = super::suffix::private_suffix_above(name) {
                out.push(format!(
                    "`{h}` is under {s}, a shared domain where users create names of their own: `{name}` belongs to whoever created it, not to {s}'s operator"
                ));
            }
        }
    }
    out
}

/// Whether two rules can allow the same packet: destinations that overlap
/// (prefixes, or names one of which matches the other; a name and a
/// prefix cannot be told before the name is answered), a protocol and a
/// port in common.
fn overlap(a: &Rule, b: &Rule) -> bool {
    use super::Protocol;
    let dests = match (&a.dest, &b.dest) {
        (Destination::Net(x), Destination::Net(y)) => {
            let (x, y) = (super::unmap(x.0), super::unmap(y.0));
            x.contains(&y.network()) || y.contains(&x.network())
        }
        (Destination::Host(x), Destination::Host(y)) => {
            let name = |h: &super::Host| {
                if h.is_wildcard() {
                    format!("x.{}", h.as_str())
                } else {
                    h.as_str().to_string()
                }
            };
            x == y || x.matches(&name(y)) || y.matches(&name(x))
        }
        _ => false,
    };
    let protos =
        a.protocol == Protocol::Any || b.protocol == Protocol::Any || a.protocol == b.protocol;
    let ports = a
        .port_ranges()
        .iter()
        .any(|p| b.port_ranges().iter().any(|q| p.lo <= q.hi && q.lo <= p.hi));
    dests && protos && ports
}

/// A rule with a budget that an earlier rule overlaps: what both allow
/// counts to the earlier rule (the first in the file), not to the budget.
fn budget_warnings(policy: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    for (i, r) in policy.rules.iter().enumerate() {
        if r.budget.is_none() {
            continue;
        }
        if let Some(earlier) = policy.rules[..i].iter().find(|e| overlap(e, r)) {
            out.push(Warning {
                line: r.line,
                message: format!(
                    "`{}` has an upload budget, but the rule on line {} (`{}`) comes first and allows some of the same: what both allow counts to that rule, not to this budget; give the budgeted destination no earlier rule",
                    r.dest, earlier.line, earlier.dest
                ),
            });
        }
    }
    out
}

/// Warnings for every rule of a policy, in file order.
pub fn lint(policy: &Policy) -> Vec<Warning> {
    let mut out: Vec<Warning> = policy
        .rules
        .iter()
        .flat_map(|r| {
            rule_warnings(r).into_iter().map(|message| Warning {
                line: r.line,
                message,
            })
        })
        .collect();
    out.extend(
        policy
            .channels
            .unix
            .iter()
            .filter_map(super::unix::shared_dir_warning)
            .map(|message| Warning { line: 0, message }),
    );
    out.extend(budget_warnings(policy));
    out.extend(exec_only_warnings(policy));
    out
}

/// `channels` fields only `exec` enforces (with the seccomp filter it puts
/// on the command it starts), set in a policy that governs cgroups or
/// pods: under `run` they change nothing.
fn exec_only_warnings(policy: &Policy) -> Vec<Warning> {
    if policy.cgroups.is_empty() && policy.pods.is_empty() {
        return Vec::new();
    }
    let c = &policy.channels;
    [
        (c.io_uring, "io_uring", "io_uring is open to the processes `run` governs whatever this says"),
        (c.namespaces, "namespaces", "new user and network namespaces are open to the processes `run` governs whatever this says"),
    ]
    .into_iter()
    .filter(|(set, ..)| *set)
    .map(|(_, field, what)| Warning {
        line: 0,
        message: format!(
            "`channels.{field}: allow` applies under `egressd exec` only (its seccomp filter); this policy governs cgroups or pods, where {what}"
        ),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::parse;
    use std::path::Path;

    #[test]
    fn exec_only_channels_in_a_run_policy_are_warned_of() {
        let text = "name: a\ncgroups: [agents.slice/a.service]\nchannels:\n  io_uring: allow\n  namespaces: allow\n";
        let p = parse(text, Path::new("p.yaml")).unwrap();
        let w: Vec<String> = lint(&p).into_iter().map(|w| w.message).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("`channels.io_uring: allow` applies under `egressd exec` only"),
            "{w:?}"
        );
        // For exec (no cgroups): nothing to say.
        let p = parse(
            &text.replace("cgroups: [agents.slice/a.service]\n", ""),
            Path::new("p.yaml"),
        )
        .unwrap();
        assert!(lint(&p).is_empty());
    }

    fn warnings(allow: &str) -> Vec<String> {
        let p = parse(&format!("name: a\nallow:\n{allow}"), Path::new("p.yaml")).unwrap();
        lint(&p).into_iter().map(|w| w.message).collect()
    }

    #[test]
    fn flags_a_budget_an_earlier_rule_overlaps() {
        let budget = "    budget: {upload: 1 MiB, per: 1h}\n";
        let w = warnings(&format!(
            "  - cidr: 203.0.113.0/24\n    ports: [443]\n  - ip: 203.0.113.5\n    ports: [443]\n{budget}"
        ));
        assert!(w.iter().any(|m| m.contains("comes first")), "{w:?}");
        let w = warnings(&format!(
            "  - host: \"*.storage.test\"\n    ports: [443]\n  - host: up.storage.test\n    ports: [443]\n{budget}"
        ));
        assert!(w.iter().any(|m| m.contains("comes first")), "{w:?}");
        // Other ports, another protocol, the budgeted rule first: no warning.
        for allow in [
            format!("  - cidr: 203.0.113.0/24\n    ports: [80]\n  - ip: 203.0.113.5\n    ports: [443]\n{budget}"),
            format!("  - cidr: 203.0.113.0/24\n    ports: [443]\n    protocol: udp\n  - ip: 203.0.113.5\n    ports: [443]\n{budget}"),
            format!("  - ip: 203.0.113.5\n    ports: [443]\n{budget}  - cidr: 203.0.113.0/24\n    ports: [443]\n"),
        ] {
            let w = warnings(&allow);
            assert!(!w.iter().any(|m| m.contains("comes first")), "{allow}: {w:?}");
        }
    }

    #[test]
    fn flags_the_broad_endpoint_trap() {
        assert!(warnings("  - cidr: 0.0.0.0/0\n    ports: [443]\n")[0].contains("whole Internet"));
        assert!(warnings("  - cidr: \"::/0\"\n    ports: [443]\n")[0].contains("whole Internet"));
        assert!(
            warnings("  - cidr: \"::ffff:0.0.0.0/96\"\n    ports: [443]\n")[0]
                .contains("whole Internet")
        );
        assert!(
            warnings("  - host: bucket.s3.amazonaws.com\n    ports: [443]\n")[0].contains("relays")
        );
        assert!(warnings("  - cidr: 169.254.0.0/16\n    ports: [80]\n")
            .iter()
            .any(|w| w.contains("metadata")));
        assert!(warnings("  - cidr: 10.0.0.0/8\n    ports: [80]\n")[0].contains("private range"));
        assert!(warnings("  - host: api.model.test\n")[0].contains("every port"));
        assert!(warnings("  - host: api.model.test\n    ports: [443]\n").is_empty());
        let w =
            warnings("  - host: git.model.test\n    ports: [22]\n    any_name_at_address: true\n");
        assert!(w[0].contains("every site its front door"), "{w:?}");
        let e = parse(
            "name: a\nallow:\n  - ip: 198.51.100.1\n    ports: [22]\n    any_name_at_address: true\n",
            Path::new("p.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is for host rules"), "{e}");
    }

    fn error(allow: &str) -> String {
        parse(&format!("name: a\nallow:\n{allow}"), Path::new("p.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn wildcards_over_public_suffixes() {
        // The ICANN section: an error, with no way around it.
        for w in ["*.co.uk", "*.com.au", "*.com"] {
            let e = error(&format!("  - host: \"{w}\"\n    ports: [443]\n"));
            assert!(e.contains("p.yaml:3:"), "{e}");
            assert!(
                e.contains("top-level domain") || e.contains("public suffix"),
                "{e}"
            );
            let e = error(&format!(
                "  - host: \"{w}\"\n    ports: [443]\n    public_suffix: intended\n"
            ));
            assert!(
                e.contains("top-level domain") || e.contains("public suffix"),
                "{e}"
            );
        }
        // The private section: an error unless the rule says it is meant.
        for w in [
            "*.github.io",
            "*.herokuapp.com",
            "*.vercel.app",
            "*.workers.dev",
            "*.s3.amazonaws.com",
            "*.compute.amazonaws.com",
        ] {
            let e = error(&format!("  - host: \"{w}\"\n    ports: [443]\n"));
            assert!(e.contains("anyone can create a name"), "{w}: {e}");
            assert!(e.contains("public_suffix: intended"), "{w}: {e}");
            let opted = warnings(&format!(
                "  - host: \"{w}\"\n    ports: [443]\n    public_suffix: intended\n"
            ));
            assert!(
                opted.iter().any(|m| m.contains("anyone can create one")),
                "{w}: {opted:?}"
            );
        }
        // An opt-in where none is needed is a mistake, not a no-op.
        let e = error(
            "  - host: \"*.cdn.example.co.uk\"\n    ports: [443]\n    public_suffix: intended\n",
        );
        assert!(e.contains("remove it"), "{e}");
        assert!(warnings("  - host: \"*.cdn.example.co.uk\"\n    ports: [443]\n").is_empty());
    }

    #[test]
    fn names_under_shared_suffixes_and_above_relays() {
        let w = warnings("  - host: someone.github.io\n    ports: [443]\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("belongs to whoever created it"), "{w:?}");
        let w = warnings("  - host: \"*.site.netlify.app\"\n    ports: [443]\n");
        assert!(w[0].contains("belongs to whoever created it"), "{w:?}");
        let w = warnings("  - host: \"*.amazonaws.com\"\n    ports: [443]\n");
        assert!(
            w.iter().any(|m| m.contains("covers s3.amazonaws.com")),
            "{w:?}"
        );
        assert!(warnings("  - host: github.io\n    ports: [443]\n").is_empty());
    }
}
