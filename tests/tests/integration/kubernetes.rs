//! Kubernetes: the manifests in deploy/kubernetes validate against the
//! Kubernetes schemas (kubernetes-validate, from PyPI), the policies in
//! the ConfigMap pass `egressd check`, and the agents' seccomp profile
//! refuses the socket families `exec` refuses.

use std::{path::PathBuf, process::Command};

use egress_tests::egressd::{bin, TempDir};

fn manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// The pod seccomp profile (OCI format, for `seccompProfile: Localhost`)
/// refuses `socket` and `socketpair` for every family but those egressd's
/// own `exec` filter leaves open, and io_uring, read as a runtime reads
/// it: a rule's argument comparisons all hold, any matching rule applies.
#[test]
fn the_agent_seccomp_profile_refuses_what_exec_refuses() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/seccomp/egressd-agent.json");
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW");
    let rules = profile["syscalls"].as_array().unwrap();
    let errno_for = |call: &str, args: [u64; 2]| -> Option<u64> {
        rules.iter().find_map(|r| {
            let named = r["names"].as_array().unwrap().iter().any(|n| n == call);
            let holds = r["args"].as_array().is_none_or(|conds| {
                conds.iter().all(|c| {
                    let arg = args[c["index"].as_u64().unwrap() as usize];
                    let v = c["value"].as_u64().unwrap();
                    match c["op"].as_str().unwrap() {
                        "SCMP_CMP_EQ" => arg == v,
                        "SCMP_CMP_GE" => arg >= v,
                        "SCMP_CMP_MASKED_EQ" => arg & v == c["valueTwo"].as_u64().unwrap(),
                        op => panic!("unexpected comparison {op}"),
                    }
                })
            });
            (named && holds && r["action"] == "SCMP_ACT_ERRNO")
                .then(|| r["errnoRet"].as_u64().unwrap())
        })
    };
    const SOCK_PACKET: u64 = 10;
    let cloexec = libc::SOCK_CLOEXEC as u64;
    for call in ["socket", "socketpair"] {
        for family in (0..=255).chain([1000, u64::from(u16::MAX), u64::from(u32::MAX)]) {
            for kind in [1, 2, 3, 2 | cloexec] {
                let open = egressd::cli::exec::seccomp::ALWAYS_OPEN.contains(&(family as i32));
                let refused = errno_for(call, [family, kind]);
                assert_eq!(refused.is_none(), open, "{call}({family}, {kind})");
                if !open {
                    assert_eq!(refused, Some(libc::EAFNOSUPPORT as u64));
                }
            }
        }
    }
    // The old spelling of a packet socket.
    for kind in [SOCK_PACKET, SOCK_PACKET | cloexec] {
        let refused = errno_for("socket", [libc::AF_INET as u64, kind]);
        assert_eq!(
            refused,
            Some(libc::EAFNOSUPPORT as u64),
            "socket(AF_INET, {kind})"
        );
    }
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert_eq!(errno_for(call, [0, 0]), Some(libc::ENOSYS as u64), "{call}");
    }
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.31.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
    for kind in [
        "daemonset/egressd",
        "configmap/egressd-policies",
        "clusterrole/egressd-pod-reader",
        "service/egressd-metrics",
    ] {
        assert!(text.contains(kind), "{kind} was not validated: {text}");
    }
    // The validator can fail: an unknown field is refused.
    let tmp = TempDir::new("k8s").unwrap();
    let bad = tmp
        .write(
            "bad.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  clusterIp: None\n",
        )
        .unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.31.0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "kubernetes-validate accepts anything"
    );
}

#[test]
fn configmap_policies_pass_check() {
    let text = std::fs::read_to_string(
        manifests()
            .into_iter()
            .find(|p| p.ends_with("configmap.yaml"))
            .unwrap(),
    )
    .unwrap();
    let tmp = TempDir::new("cm").unwrap();
    // Each data key holds a block scalar indented by four spaces.
    let mut files = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(key) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(": |")) {
            if let Some((k, body)) = current.take() {
                files.push(tmp.write(&k, &body).unwrap());
            }
            current = Some((key.to_string(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line.strip_prefix("    ").unwrap_or(""));
            body.push('\n');
        }
    }
    if let Some((k, body)) = current.take() {
        files.push(tmp.write(&k, &body).unwrap());
    }
    assert!(!files.is_empty(), "no policies found in the ConfigMap");
    let out = Command::new(bin())
        .arg("check")
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

mod governed_pods {
    use std::path::Path;

    use egress_tests::{
        egressd::{bin, Daemon, TempDir, TestCgroup},
        listen::Listener,
        netns::Netns,
        require_root,
    };

    const PROBE: &str = env!("CARGO_BIN_EXE_probe");

    fn pod(name: &str, ns: &str, uid: &str, node: &str, qos: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"{ns}","uid":"{uid}","labels":{{"app":"doc-summarizer"}}}},"spec":{{"nodeName":"{node}"}},"status":{{"qosClass":"{qos}"}}}}"#
        )
    }

    fn pod_list(pods: &[String]) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"PodList","items":[{}]}}"#,
            pods.join(",")
        )
    }

    /// A pod's cgroup under the kubepods tree, and one container in it
    /// (both removed on drop).
    fn start_pod(kube: &TestCgroup, rel: &str) -> (TestCgroup, TestCgroup) {
        let pod = kube.child_path(rel).unwrap();
        let container = pod.child("cri-containerd-0123.scope").unwrap();
        (container, pod)
    }

    /// Pods selected by namespace and labels on this node are governed, from
    /// a synthetic kubepods tree (both cgroup drivers) and a PodList file;
    /// a pod that starts later is governed when its cgroup appears.
    #[test]
    fn selected_pods_are_governed() {
        require_root();
        let ns = Netns::new("kube").unwrap();
        let target = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
        let kube = TestCgroup::new("kube").unwrap();
        kube.cgroup.create().unwrap();
        let (a, b, c, d) = (
            "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            "aa11bb22-2222-4c3b-9a55-2b1c0d9e8f71",
            "bb11bb22-3333-4c3b-9a55-2b1c0d9e8f72",
            "cc11bb22-4444-4c3b-9a55-2b1c0d9e8f73",
        );
        let tmp = TempDir::new("kube").unwrap();
        let pods = tmp
            .write(
                "pods.json",
                &pod_list(&[
                    pod("summarizer", "agents", a, "node-a", "Burstable"),
                    pod("web", "default", b, "node-a", "BestEffort"),
                    pod("summarizer-2", "agents", c, "node-a", "Guaranteed"),
                    pod("elsewhere", "agents", d, "node-b", "Burstable"),
                ]),
            )
            .unwrap();
        let (a_cg, _a_pod) = start_pod(
            &kube,
            &format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                a.replace('-', "_")
            ),
        );
        let (b_cg, _b_pod) = start_pod(&kube, &format!("kubepods/besteffort/pod{b}"));
        let (d_cg, _d_pod) = start_pod(
            &kube,
            &format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                d.replace('-', "_")
            ),
        );
        let policy = tmp
            .write("p.yaml", "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow: []\n")
            .unwrap();
        let kubepods_root = kube.rel_str();
        let _daemon = Daemon::start_with(
            &ns,
            &policy,
            &[
                "--pods-file",
                pods.to_str().unwrap(),
                "--node",
                "node-a",
                "--kubepods-root",
                &kubepods_root,
            ],
        )
        .unwrap();
        let probe = |cg: &TestCgroup| {
            String::from_utf8_lossy(
                &cg.run(&ns, PROBE, &["tcp", "203.0.113.9:443"])
                    .unwrap()
                    .stdout,
            )
            .trim()
            .to_string()
        };
        assert_eq!(
            probe(&a_cg),
            "error: 1",
            "a selected pod's container is governed"
        );
        assert_eq!(probe(&b_cg), "ok", "another namespace is not selected");
        assert_eq!(
            probe(&d_cg),
            "ok",
            "a pod on another node is not this egressd's"
        );

        // summarizer-2 starts now: kubelet creates its cgroup (Guaranteed,
        // systemd driver).
        let c_pod = kube
            .child_path(&format!(
                "kubepods.slice/kubepods-pod{}.slice",
                c.replace('-', "_")
            ))
            .unwrap();
        let governed = std::process::Command::new(bin())
            .args(["governed", "--policy", "doc", "--wait", "3", "--cgroup"])
            .arg(Path::new(&c_pod.rel_str()))
            .output()
            .unwrap();
        assert!(
            governed.status.success(),
            "the new pod was not governed: {governed:?}"
        );
        let c_cg = c_pod.child("cri-containerd-4567.scope").unwrap();
        assert_eq!(probe(&c_cg), "error: 1");
        // Only the two pods no policy selects reached the listener.
        assert_eq!(target.count(), 2);
    }

    /// A pod has a network namespace of its own: its DNS, redirected to
    /// loopback there, is answered by a proxy egressd opens inside it.
    #[test]
    fn pods_resolve_through_a_proxy_in_their_own_namespace() {
        require_root();
        let host = Netns::new("khost").unwrap();
        let podns = Netns::new("kpod").unwrap();
        let _upstream = egress_tests::dns::DnsServer::start(
            &host,
            "198.51.100.53:53",
            &[
                ("api.model.test", &["198.51.100.1"], 300),
                ("secret.attacker.test", &["203.0.113.9"], 300),
            ],
        )
        .unwrap();
        let kube = TestCgroup::new("kubedns").unwrap();
        kube.cgroup.create().unwrap();
        let uid = "dd11bb22-5555-4c3b-9a55-2b1c0d9e8f74";
        let tmp = TempDir::new("kubedns").unwrap();
        let pods = tmp
            .write(
                "pods.json",
                &pod_list(&[pod("summarizer", "agents", uid, "node-a", "Burstable")]),
            )
            .unwrap();
        let (container, _pod) = start_pod(&kube, &format!("kubepods/burstable/pod{uid}"));
        // The pod's sandbox: a process in the pod's cgroup and namespace.
        let mut sandbox = container
            .command(&podns, "sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let policy = tmp
            .write(
                "p.yaml",
                "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow:\n  - host: api.model.test\n    ports: [443]\ndns:\n  upstream: [198.51.100.53]\n",
            )
            .unwrap();
        let kubepods_root = kube.rel_str();
        let daemon = Daemon::start_with(
            &host,
            &policy,
            &[
                "--pods-file",
                pods.to_str().unwrap(),
                "--node",
                "node-a",
                "--kubepods-root",
                &kubepods_root,
            ],
        )
        .unwrap();
        let mut ready = false;
        for _ in 0..100 {
            if daemon
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("DNS proxy in the pod's network namespace"))
            {
                ready = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            ready,
            "no proxy in the pod's namespace: {:?}",
            daemon.log.lock().unwrap()
        );
        let dig = |name: &str| {
            let out = container
                .run(
                    &podns,
                    "dig",
                    &["+time=2", "+tries=1", "@203.0.113.1", name],
                )
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let ok = dig("api.model.test");
        assert!(
            ok.contains("status: NOERROR") && ok.contains("198.51.100.1"),
            "{ok}"
        );
        let refused = dig("secret.attacker.test");
        assert!(refused.contains("status: NXDOMAIN"), "{refused}");
        sandbox.kill().unwrap();
        sandbox.wait().unwrap();
    }
}
