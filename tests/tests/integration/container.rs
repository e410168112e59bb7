//! The container image (`cargo xtask image`) under a real runtime: podman
//! runs it as the DaemonSet does (host PID namespace, the capabilities
//! deploy/kubernetes/daemonset.yaml adds, its mounts, a read-only root), against
//! a test API server, and it governs the containers podman starts beside
//! it in pod cgroups laid out as kubelet's cgroupfs driver lays them out.
//! crun refuses this host's hybrid cgroup layout, so the VM lane runs it
//! (`cargo xtask vm-test`, with the archive `cargo xtask image` wrote).

use std::{
    process::{Command, Output},
    time::Duration,
};

use egress_tests::{
    egressd::{Instance, TempDir, TestCgroup},
    kube_api::{pod, ApiServer},
    listen::Listener,
    netns::Netns,
    require_root,
};
use serde_json::json;

const PROBE: &str = env!("CARGO_BIN_EXE_probe");
const TAINT: &str = "egressd.io/not-ready";

/// The capabilities deploy/kubernetes/daemonset.yaml adds (it drops all
/// others), as podman's `--cap-add` takes them.
fn daemonset_caps() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let caps: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim() != "add:")
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .map_while(|l| l.strip_prefix("- "))
        .collect();
    assert!(caps.contains(&"BPF") && caps.len() >= 3, "{caps:?}");
    caps.join(",")
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
        .args(["--events-backend", "file"])
        .args(args)
        .output()
        .expect("podman")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A root filesystem for the agent's containers: the probe and the shared
/// libraries `ldd` says it loads, at their paths.
fn agent_rootfs(dir: &std::path::Path) {
    let ldd = Command::new("ldd").arg(PROBE).output().expect("ldd");
    assert!(ldd.status.success(), "{}", text(&ldd));
    let libs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(String::from)
        .collect();
    assert!(libs.iter().any(|l| l.contains("libc.so")), "{libs:?}");
    for lib in libs.iter().map(String::as_str).chain([PROBE]) {
        let to = dir.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
}

/// The egressd container, removed on drop.
struct Egressd(String);

impl Egressd {
    fn logs(&self) -> String {
        text(&podman(&["logs", &self.0]))
    }

    /// Waits (at most 60 s) until its log has a line with every word.
    fn wait_log(&self, words: &[&str]) -> bool {
        for _ in 0..300 {
            if self
                .logs()
                .lines()
                .any(|l| words.iter().all(|w| l.contains(w)))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Egressd {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "5", &self.0]);
    }
}

#[test]
#[ignore = "needs podman and a pure cgroup2 host (crun refuses hybrid layouts): cargo xtask vm-test runs it"]
fn the_image_governs_containers_podman_starts() {
    require_root();
    let image = std::env::var("EGRESSD_IMAGE")
        .expect("EGRESSD_IMAGE: the OCI archive `cargo xtask image` wrote");
    let loaded = podman(&["load", "-i", &image]);
    assert!(loaded.status.success(), "{}", text(&loaded));
    let ns = Netns::new("ctr").unwrap();
    let target = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let api = ApiServer::start(
        &ns,
        "127.0.0.1:16443",
        &[("agents", json!({}))],
        Some(TAINT),
    )
    .unwrap();
    let (agent, web, unknown) = (
        "0a2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
        "0b11bb22-2222-4c3b-9a55-2b1c0d9e8f71",
        "0c11bb22-3333-4c3b-9a55-2b1c0d9e8f72",
    );
    api.add_pod(pod(
        "agent",
        "agents",
        agent,
        json!({"app": "agent"}),
        "BestEffort",
    ));
    api.add_pod(pod(
        "web",
        "agents",
        web,
        json!({"app": "web"}),
        "BestEffort",
    ));
    let kube = TestCgroup::new("ctr").unwrap();
    let _besteffort = kube.child_path("kubepods/besteffort").unwrap();
    let tmp = TempDir::new("ctr").unwrap();
    std::fs::create_dir_all(tmp.0.join("policies")).unwrap();
    std::fs::create_dir_all(tmp.0.join("state")).unwrap();
    tmp.write(
        "policies/agent.yaml",
        "name: agent\npods:\n  - namespace: agents\n    labels: {app: agent}\nallow: []\n",
    )
    .unwrap();
    let kubeconfig = api.kubeconfig(&tmp.0).unwrap();
    std::fs::create_dir_all("/run/egressd").unwrap();
    let instance = Instance::new(format!("test-ctr-{}", std::process::id()));
    let network = format!("ns:/run/netns/{}", ns.name);
    let name = format!("egressd-test-{}", std::process::id());
    let started = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &network,
        "--pid",
        "host",
        "--read-only",
        "--cap-drop",
        "all",
        "--cap-add",
        &daemonset_caps(),
        "--security-opt",
        "seccomp=unconfined",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup",
        "-v",
        "/sys/fs/bpf:/sys/fs/bpf",
        "-v",
        "/sys/kernel/security:/sys/kernel/security:ro",
        "-v",
        "/run/egressd:/run/egressd",
        "-v",
        &format!("{}:/var/lib/egressd", tmp.0.join("state").display()),
        "-v",
        &format!(
            "{}:/etc/egressd/policies:ro",
            tmp.0.join("policies").display()
        ),
        "-v",
        &format!("{}:/kubeconfig:ro", kubeconfig.display()),
        &format!("localhost/egressd:{}", env!("CARGO_PKG_VERSION")),
        "run",
        "--kubernetes",
        "--kubeconfig",
        "/kubeconfig",
        "--node",
        "node-a",
        "--kubepods-root",
        &kube.rel_str(),
        "--policy",
        "/etc/egressd/policies",
        "--instance",
        &instance.0,
        "--metrics-addr",
        "127.0.0.1:19469",
        "--ready-taint",
        TAINT,
    ]);
    assert!(started.status.success(), "{}", text(&started));
    let egressd = Egressd(name);
    for _ in 0..300 {
        if !api.patches().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(api.patches().len(), 1, "not ready: {}", egressd.logs());

    // kubelet makes a pod's cgroup before its containers; the runtime puts
    // each container in a cgroup below it.
    let pods: Vec<TestCgroup> = [agent, web, unknown]
        .iter()
        .map(|uid| {
            kube.child_path(&format!("kubepods/besteffort/pod{uid}"))
                .unwrap()
        })
        .collect();
    assert!(
        egressd.wait_log(&["pod governed", agent]),
        "{}",
        egressd.logs()
    );
    assert!(
        egressd.wait_log(&["pod released", web]),
        "{}",
        egressd.logs()
    );
    let rootfs = tmp.0.join("agent");
    agent_rootfs(&rootfs);
    let rootfs = rootfs.to_string_lossy().into_owned();
    let container = |uid: &str| {
        let parent = format!("/{}/kubepods/besteffort/pod{uid}", kube.rel_str());
        let out = podman(&[
            "run",
            "--rm",
            "--network",
            &network,
            "--cgroup-parent",
            &parent,
            "-e",
            "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu",
            "--rootfs",
            &rootfs,
            PROBE,
            "tcp",
            "203.0.113.9:443",
        ]);
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            text(&out),
        )
    };
    let (got, all) = container(agent);
    assert_eq!(
        got, "error: 1",
        "the selected pod's container is governed: {all}"
    );
    let (got, all) = container(web);
    assert_eq!(got, "ok", "a pod no policy selects is released: {all}");
    let (got, all) = container(unknown);
    assert_eq!(
        got, "error: 1",
        "a pod egressd has not heard of is held: {all}"
    );
    assert_eq!(
        target.count(),
        1,
        "only the released pod's container reached it"
    );
    drop(egressd);
    drop(pods);
}
