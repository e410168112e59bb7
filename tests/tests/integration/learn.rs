//! Learning a policy from a run: a job that looks up two names and sends to
//! one bare address is learned (`exec --learn`), checked, run again under
//! the learned policy with nothing denied, and a name it never looked up is
//! refused (proven at the listener). A second run adds to the first; the
//! same rules come from a run's event lines (`egressd learn`).

use std::process::Command;

use egress_tests::{
    dns::DnsServer,
    egressd::{bin, ExecResult, TempDir},
    listen::Listener,
    netns::Netns,
    require_root,
};

use crate::dns::in_mount_ns;

const UPSTREAM: &str = "198.51.100.53:53";

/// The job: two names over TCP (a request naming its host, as a host
/// rule asks), one bare address over UDP.
const JOB: &str = r#"
import socket, sys
for name, port in [("api.model.test", 443), ("files.store.test", 8443)] + [(n, 443) for n in sys.argv[1:]]:
    s = socket.create_connection((name, port), timeout=3)
    s.sendall(b"POST /report HTTP/1.1\r\nHost: %s\r\n\r\n" % name.encode())
    s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"report", ("203.0.113.7", 9000))
"#;

struct Setup {
    ns: Netns,
    tmp: TempDir,
    conf: std::path::PathBuf,
    _upstream: DnsServer,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let ns = Netns::new(tag).unwrap();
        let upstream = DnsServer::start(
            &ns,
            UPSTREAM,
            &[
                ("api.model.test", &["198.51.100.1"], 300),
                ("files.store.test", &["198.51.100.2"], 300),
                ("cdn.store.test", &["198.51.100.3"], 300),
                ("exfil.attacker.test", &["203.0.113.9"], 300),
            ],
        )
        .unwrap();
        let tmp = TempDir::new(tag).unwrap();
        // glibc asks a documentation address where no server runs: only
        // egressd's redirect to its proxy answers.
        let conf = tmp
            .write(
                "resolv.conf",
                "nameserver 203.0.113.53\noptions attempts:1 timeout:2\n",
            )
            .unwrap();
        Setup {
            ns,
            tmp,
            conf,
            _upstream: upstream,
        }
    }

    /// `exec ARGS -- python3 -c JOB NAMES...`.
    fn job(&self, args: &[&str], names: &[&str]) -> ExecResult {
        let mut all = vec!["--resolver", UPSTREAM];
        all.extend_from_slice(args);
        let mut command = vec!["python3", "-c", JOB];
        command.extend_from_slice(names);
        in_mount_ns(&self.ns, &self.conf, &all, &command)
    }
}

/// The rules the job's run gives: its two names and its bare address.
fn has_the_jobs_rules(text: &str) {
    for rule in [
        "- host: api.model.test\n    ports: [443]\n",
        "- host: files.store.test\n    ports: [8443]\n",
        "- ip: 203.0.113.7\n    ports: [9000]\n    protocol: udp\n",
    ] {
        assert!(text.contains(rule), "no `{rule}` in\n{text}");
    }
}

fn check(file: &std::path::Path) -> std::process::Output {
    Command::new(bin()).arg("check").arg(file).output().unwrap()
}

#[test]
fn a_learned_policy_allows_the_run_and_nothing_else() {
    require_root();
    let s = Setup::new("learn");
    let api = Listener::tcp(&s.ns, "198.51.100.1:443").unwrap();
    let files = Listener::tcp(&s.ns, "198.51.100.2:8443").unwrap();
    let cdn = Listener::tcp(&s.ns, "198.51.100.3:443").unwrap();
    let bare = Listener::udp(&s.ns, "203.0.113.7:9000").unwrap();
    let exfil = Listener::tcp(&s.ns, "203.0.113.9:443").unwrap();
    let file = s.tmp.0.join("job.yaml");
    let file_arg = file.to_str().unwrap();

    let r = s.job(&["--learn", file_arg], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    has_the_jobs_rules(&text);
    assert!(text.contains("name: job\nmode: enforce\n"), "{text}");
    assert!(
        text.contains("# api.model.test: seen 1 time(s) on tcp port(s) 443, by python3"),
        "{text}"
    );
    assert!(!text.contains("exfil"), "{text}");
    let c = check(&file);
    assert!(c.status.success(), "{c:?}\n{text}");
    // The learning run itself reached everything (audit mode).
    assert_eq!((api.count(), files.count(), bare.count()), (1, 1, 1));

    // Under the learned policy: the same job, nothing denied.
    let r = s.job(&["--policy", file_arg], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.events.is_empty(), "{:?}", r.events);
    assert!(r.stderr.contains("nothing was denied"), "{r:?}");
    assert_eq!((api.count(), files.count(), bare.count()), (2, 2, 2));

    // A name it never looked up is refused, and nothing reaches it.
    let r = s.job(&["--policy", file_arg], &["exfil.attacker.test"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert_eq!(exfil.count(), 0, "{r:?}");
    assert!(
        r.events.iter().any(|e| e["qname"] == "exfil.attacker.test"
            && e["reason"] == "dns_name_not_allowed"
            && e["verdict"] == "denied"),
        "{:?}",
        r.events
    );

    // A second learning run adds to the first, keeping what is there.
    std::fs::write(&file, format!("# my own comment\n{text}")).unwrap();
    let r = s.job(&["--learn", file_arg], &["cdn.store.test"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let merged = std::fs::read_to_string(&file).unwrap();
    assert!(
        merged.starts_with(&format!("# my own comment\n{text}")),
        "{merged}"
    );
    assert!(
        merged.contains("- host: cdn.store.test\n    ports: [443]\n"),
        "{merged}"
    );
    assert_eq!(
        merged.matches("- host: api.model.test").count(),
        1,
        "{merged}"
    );
    let r = s.job(&["--policy", file_arg], &["cdn.store.test"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.events.is_empty(), "{:?}", r.events);
    assert_eq!(cdn.count(), 2, "{r:?}");
}

/// `egressd learn` writes the same rules from an audit run's event lines.
#[test]
fn learn_reads_a_runs_events() {
    require_root();
    let s = Setup::new("learnev");
    let _api = Listener::tcp(&s.ns, "198.51.100.1:443").unwrap();
    let _files = Listener::tcp(&s.ns, "198.51.100.2:8443").unwrap();
    let _bare = Listener::udp(&s.ns, "203.0.113.7:9000").unwrap();
    let r = s.job(&["--audit"], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let lines: Vec<String> = r
        .events
        .iter()
        .map(|e| format!("journal prefix: {e}"))
        .collect();
    let events = s
        .tmp
        .write("events.jsonl", &(lines.join("\n") + "\n"))
        .unwrap();
    let file = s.tmp.0.join("from-events.yaml");
    let out = Command::new(bin())
        .args(["learn", "-o"])
        .arg(&file)
        .arg(&events)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    has_the_jobs_rules(&text);
    assert!(check(&file).status.success());
    // Events of two policies need a choice.
    let mixed = s
        .tmp
        .write(
            "mixed.jsonl",
            &format!(
                "{}\n{}\n",
                r.events[0],
                r.events[0].to_string().replace("\"exec\"", "\"other\"")
            ),
        )
        .unwrap();
    let out = Command::new(bin())
        .args(["learn", "-o"])
        .arg(s.tmp.0.join("x.yaml"))
        .arg(&mixed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--policy"),
        "{out:?}"
    );
}
