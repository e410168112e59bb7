//! The shipped alert rules and dashboard against a real Prometheus (the
//! Debian package), scraping a real `egressd run` every second, all inside
//! the test's network namespace. Normal allowed traffic fires nothing; one
//! exfiltration attempt fires the deny alert; each other alert fires on
//! its own fault, and the reload alert clears once the file is fixed.
//!
//! The rules are those of `deploy/prometheus/alerts.yml` with every `for:`
//! set to 0s, so that the test need not wait minutes; the durations
//! themselves are checked by `promtool test rules` (tests/prometheus.rs).

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use egress_tests::{
    dns::DnsServer,
    egressd::{Daemon, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    require_root,
};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

fn deploy(file: &str) -> String {
    std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/prometheus")
            .join(file),
    )
    .unwrap()
}

/// Prometheus on 127.0.0.1:9090 in `ns`, scraping egressd's metrics
/// (127.0.0.1:9469 there) and evaluating the rules every second.
struct Prometheus<'a> {
    child: Child,
    ns: &'a Netns,
    _dir: TempDir,
}

impl<'a> Prometheus<'a> {
    fn start(ns: &'a Netns) -> Prometheus<'a> {
        let dir = TempDir::new("prom").unwrap();
        let rules: String = deploy("alerts.yml")
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("for:") {
                    format!("{}for: 0s\n", &l[..l.len() - l.trim_start().len()])
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        dir.write("alerts.yml", &rules).unwrap();
        let config = dir
            .write(
                "prometheus.yml",
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [alerts.yml]\n\
                 scrape_configs:\n  - job_name: egressd\n    static_configs:\n      - targets: ['127.0.0.1:9469']\n",
            )
            .unwrap();
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus)");
        let p = Prometheus {
            child,
            ns,
            _dir: dir,
        };
        assert!(
            p.wait(Duration::from_secs(60), |p| p
                .api("query?query=up")
                .is_some_and(|v| v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()))),
            "prometheus did not start scraping"
        );
        p
    }

    /// GET /api/v1/PATH (query strings already encoded).
    fn api(&self, path: &str) -> Option<Value> {
        let out = self
            .ns
            .command("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:9090/api/v1/{path}"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The result of an instant query.
    fn query(&self, expr: &str) -> Value {
        let out = self
            .ns
            .command("curl")
            .args([
                "-sf",
                "--max-time",
                "5",
                "http://127.0.0.1:9090/api/v1/query",
            ])
            .args(["--data-urlencode", &format!("query={expr}")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("query {expr}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The alerts firing now: (name, policy label).
    fn firing(&self) -> Vec<(String, String)> {
        let Some(v) = self.api("alerts") else {
            return Vec::new();
        };
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["labels"]["policy"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn wait(&self, limit: Duration, f: impl Fn(&Self) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }

    fn wait_firing(&self, alert: &str) -> bool {
        self.wait(Duration::from_secs(30), |p| {
            p.firing().iter().any(|(a, _)| a == alert)
        })
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alerts_fire_on_their_faults_and_not_on_normal_traffic() {
    require_root();
    let ns = Netns::new("alerts").unwrap();
    let dns = DnsServer::start(
        &ns,
        "198.51.100.53:53",
        &[("api.model.test", &["198.51.100.1"], 300)],
    )
    .unwrap();
    let good = Listener::tcp(&ns, "198.51.100.1:443").unwrap();
    let bad = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let cg = TestCgroup::new("alerts").unwrap();
    let dir = TempDir::new("alerts").unwrap();
    let text = format!(
        // The probe writes bare bytes, which name no host.
        "name: agent\ncgroups: [{}]\nallow:\n  - host: api.model.test\n    ports: [443]\n    any_name_at_address: true\n\
         dns:\n  upstream: [198.51.100.53]\n  min_ttl: 1\n  max_ttl: 2\n",
        cg.rel_str()
    );
    let policy = dir.write("p.yaml", &text).unwrap();
    // A small ring buffer, so that a flood loses events.
    let mut daemon = Daemon::start_with(&ns, &policy, &["--ring-buffer-bytes", "4096"]).unwrap();
    let prom = Prometheus::start(&ns);

    // Normal work: resolve the allowed name (glibc, which tries nscd
    // first) and connect to it. Nothing fires.
    let out = cg
        .run(
            &ns,
            "sh",
            &[
                "-c",
                &format!(
                    "getent ahostsv4 api.model.test > /dev/null && {PROBE} tcp 198.51.100.1:443"
                ),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(good.count(), 1);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        prom.firing(),
        Vec::<(String, String)>::new(),
        "alerts on normal traffic"
    );

    // The dashboard's queries run and the main ones have data.
    let dash: Value = serde_json::from_str(&deploy("grafana-dashboard.json")).unwrap();
    let mut with_data = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            let v = prom.query(&expr);
            assert_eq!(v["status"], "success", "{expr}: {v}");
            if v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                with_data += 1;
            }
        }
    }
    assert!(
        with_data >= 3,
        "only {with_data} dashboard queries returned data"
    );

    // One exfiltration attempt.
    let _ = cg.run(&ns, PROBE, &["tcp", "203.0.113.9:443"]).unwrap();
    assert_eq!(bad.count(), 0);
    assert!(prom.wait_firing("EgressdDenied"), "{:?}", prom.firing());
    assert!(prom
        .firing()
        .contains(&("EgressdDenied".to_string(), "agent".to_string())));

    // A broken reload fires, and clears when the file is fixed.
    dir.write("p.yaml", "name: agent\nallow: [oops\n").unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(
        prom.wait_firing("EgressdReloadFailed"),
        "{:?}",
        prom.firing()
    );
    dir.write("p.yaml", &text).unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(
        prom.wait(Duration::from_secs(30), |p| !p
            .firing()
            .iter()
            .any(|(a, _)| a == "EgressdReloadFailed")),
        "the reload alert did not clear"
    );

    // A flood of refusals overflows the 4 KiB ring buffer.
    let _ = cg
        .run(&ns, PROBE, &["tcp", "203.0.113.9:443", "--count", "1000"])
        .unwrap();
    assert!(prom.wait_firing("EgressdEventsLost"), "{:?}", prom.firing());

    // The upstream resolver goes away: egressd's own lookups fail.
    drop(dns);
    assert!(
        prom.wait_firing("EgressdResolverErrors"),
        "{:?}",
        prom.firing()
    );

    // The daemon goes away.
    let _ = daemon.stop();
    assert!(prom.wait_firing("EgressdDown"), "{:?}", prom.firing());
}
