//! Kubernetes: the manifests in deploy/kubernetes validate against the
//! Kubernetes schemas (kubernetes-validate, from PyPI), the policies in
//! the ConfigMap pass `egressd check`, and the agents' seccomp profile
//! refuses the socket families `exec` refuses.

use std::{path::PathBuf, process::Command};

use egress_tests::egressd::{bin, TempDir};

/// The Kubernetes objects in deploy/kubernetes: every YAML file but the
/// kustomization (kustomize's own file, which has no API schema).
fn manifests() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    v.sort();
    v
}

/// `kubectl apply -k deploy/kubernetes` applies every manifest: the
/// kustomization lists each file (`  - NAME.yaml` under `resources:`),
/// the Namespace first.
#[test]
fn the_kustomization_lists_every_manifest() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "resources:")
        .skip(1)
        .map_while(|l| l.strip_prefix("  - "))
        .collect();
    assert_eq!(listed.first(), Some(&"namespace.yaml"), "{listed:?}");
    let mut listed: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    listed.sort();
    let files: Vec<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, files);
}

/// The pod seccomp profile (OCI format, for `seccompProfile: Localhost`)
/// refuses `socket` and `socketpair` for every family but those egressd's
/// own `exec` filter leaves open, netlink protocols but NETLINK_ROUTE, new
/// user and network namespaces, and io_uring, read as a runtime reads it:
/// a rule's argument comparisons all hold, any matching rule applies.
#[test]
fn the_agent_seccomp_profile_refuses_what_exec_refuses() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/seccomp/egressd-agent.json");
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW");
    let rules = profile["syscalls"].as_array().unwrap();
    let errno_for = |call: &str, args: [u64; 3]| -> Option<u64> {
        rules.iter().find_map(|r| {
            let named = r["names"].as_array().unwrap().iter().any(|n| n == call);
            let holds = r["args"].as_array().is_none_or(|conds| {
                conds.iter().all(|c| {
                    let arg = args[c["index"].as_u64().unwrap() as usize];
                    let v = c["value"].as_u64().unwrap();
                    match c["op"].as_str().unwrap() {
                        "SCMP_CMP_EQ" => arg == v,
                        "SCMP_CMP_GE" => arg >= v,
                        "SCMP_CMP_NE" => arg != v,
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
                let open = egressd::confine::seccomp::ALWAYS_OPEN.contains(&(family as i32));
                let refused = errno_for(call, [family, kind, 0]);
                assert_eq!(refused.is_none(), open, "{call}({family}, {kind})");
                if !open {
                    assert_eq!(refused, Some(libc::EAFNOSUPPORT as u64));
                }
            }
        }
    }
    // The old spelling of a packet socket.
    for kind in [SOCK_PACKET, SOCK_PACKET | cloexec] {
        let refused = errno_for("socket", [libc::AF_INET as u64, kind, 0]);
        assert_eq!(
            refused,
            Some(libc::EAFNOSUPPORT as u64),
            "socket(AF_INET, {kind})"
        );
    }
    for call in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "clone3",
    ] {
        assert_eq!(
            errno_for(call, [0, 0, 0]),
            Some(libc::ENOSYS as u64),
            "{call}"
        );
    }
    // Netlink: NETLINK_ROUTE (0) only.
    let netlink = libc::AF_NETLINK as u64;
    assert_eq!(errno_for("socket", [netlink, 3, 0]), None);
    for protocol in [2, 4, 9, 15, 16] {
        assert_eq!(
            errno_for("socket", [netlink, 3, protocol]),
            Some(libc::EPROTONOSUPPORT as u64),
            "netlink protocol {protocol}"
        );
    }
    // New user and network namespaces; other flags pass.
    let (user, net) = (libc::CLONE_NEWUSER as u64, libc::CLONE_NEWNET as u64);
    let (mount, sigchld) = (libc::CLONE_NEWNS as u64, libc::SIGCHLD as u64);
    for flags in [user, net, user | net, user | mount | sigchld] {
        for call in ["unshare", "clone"] {
            assert_eq!(
                errno_for(call, [flags, 0, 0]),
                Some(1),
                "{call}({flags:#x})"
            );
        }
        assert_eq!(
            errno_for("setns", [3, flags, 0]),
            Some(1),
            "setns({flags:#x})"
        );
    }
    // The kernel reads nstype as a 32-bit int: high bits do not hide a 0.
    for nstype in [0, 1 << 32] {
        assert_eq!(
            errno_for("setns", [3, nstype, 0]),
            Some(1),
            "setns({nstype:#x})"
        );
    }
    for flags in [
        sigchld,
        mount,
        libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64 | sigchld,
    ] {
        for call in ["unshare", "clone"] {
            assert_eq!(errno_for(call, [flags, 0, 0]), None, "{call}({flags:#x})");
        }
    }
}

/// What `kubectl apply -k deploy/kubernetes` applies, built by kubectl's
/// kustomize, validates against the schemas of the Kubernetes versions the
/// README names; the Namespace comes first, and the image is the
/// kustomization's.
#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    assert!(manifests().len() >= 5);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let built = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl (cargo xtask setup installs it)");
    assert!(built.status.success(), "{built:?}");
    let objects = String::from_utf8(built.stdout).unwrap();
    assert!(
        objects.starts_with("apiVersion: v1\nkind: Namespace\n"),
        "{objects}"
    );
    assert!(
        objects.contains(&format!(
            "image: localhost/egressd:{}\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{objects}"
    );
    let tmp = TempDir::new("k8s").unwrap();
    let all = tmp.write("all.yaml", &objects).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.31.0", "-k", "1.33.0", "-k", "1.36.0"])
        .arg(&all)
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
        "clusterrole/egressd",
        "clusterrolebinding/egressd",
        "namespace/egressd-system",
        "service/egressd-metrics",
        "resourcequota/egressd-critical-pods",
    ] {
        assert!(text.contains(kind), "{kind} was not validated: {text}");
    }
    // The validator can fail: an unknown field is refused.
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

/// Checks the Prometheus Operator's objects in a built kustomization
/// (argv[1]) against the Operator's models (generated from its CRDs: a
/// field the schema does not have is dropped by the model, so an object
/// that does not come back whole fails), that the ServiceMonitor selects
/// the Service and names its port, and that the PrometheusRule's groups
/// are those of alerts.yml (argv[2]).
const OPERATOR_CHECK: &str = r#"
import sys, yaml
from cloudcoil.models.prometheus_operator import v1
models = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}
docs = list(yaml.safe_load_all(open(sys.argv[1])))
service = next(d for d in docs if d["kind"] == "Service")
for doc in docs:
    if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
        continue
    back = models[doc["kind"]].model_validate(doc).model_dump(
        by_alias=True, exclude_none=True, exclude_unset=True, mode="json")
    if back != doc:
        sys.exit(f"{doc['kind']} is not the Operator's schema: {doc} came back as {back}")
    if doc["kind"] == "ServiceMonitor":
        labels = service["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in doc["spec"]["selector"]["matchLabels"].items()), labels
        ports = [p["name"] for p in service["spec"]["ports"]]
        assert all(e["port"] in ports for e in doc["spec"]["endpoints"]), ports
        assert doc["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    if doc["kind"] == "PrometheusRule":
        rules = yaml.safe_load(open(sys.argv[2]))["groups"]
        assert doc["spec"]["groups"] == rules, "the PrometheusRule differs from alerts.yml"
    print(doc["kind"], "ok")
"#;

/// The monitoring component (`kubectl apply -k
/// deploy/kubernetes-with-monitoring`): the Kubernetes objects validate as
/// the base's do, the Operator's against its models, and the
/// PrometheusRule holds alerts.yml's rules.
#[test]
fn the_monitoring_component_validates_and_carries_the_alert_rules() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let built = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy.join("kubernetes-with-monitoring"))
        .output()
        .expect("kubectl (cargo xtask setup installs it)");
    assert!(built.status.success(), "{built:?}");
    let objects = String::from_utf8(built.stdout).unwrap();
    let (operator, core): (Vec<&str>, Vec<&str>) = objects
        .split("\n---\n")
        .partition(|d| d.starts_with("apiVersion: monitoring.coreos.com/"));
    assert_eq!(operator.len(), 2, "{objects}");
    let tmp = TempDir::new("k8smon").unwrap();
    let core = tmp.write("core.yaml", &core.join("\n---\n")).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.31.0", "-k", "1.33.0", "-k", "1.36.0"])
        .arg(&core)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && !text.contains("WARN"), "{text}");
    assert!(text.contains("daemonset/egressd"), "{text}");
    let all = tmp.write("all.yaml", &objects).unwrap();
    let alerts = deploy.join("prometheus/alerts.yml");
    let check = |file: &std::path::Path| {
        Command::new("python3")
            .args(["-c", OPERATOR_CHECK])
            .arg(file)
            .arg(&alerts)
            .output()
            .expect("python3 with cloudcoil-models-prometheus-operator (cargo xtask setup)")
    };
    let out = check(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text, "PrometheusRule ok\nServiceMonitor ok\n");
    // The check can fail: a field the Operator does not know, a rule
    // that alerts.yml does not have.
    let bad = tmp
        .write("bad.yaml", &objects.replace("  jobLabel:", "  jobLabels:"))
        .unwrap();
    assert!(!check(&bad).status.success());
    let bad = tmp
        .write(
            "bad.yaml",
            &objects.replace("alert: EgressdDown", "alert: EgressdGone"),
        )
        .unwrap();
    assert!(!check(&bad).status.success());
}

/// The admission policy that narrows egressd's `nodes: patch`, evaluated
/// as the API server would (its CEL expressions, with a CEL interpreter):
/// egressd's service account may remove its own taint from its own node,
/// and nothing else (ten changes it must not make are refused); anyone
/// else is not this policy's business.
#[test]
fn the_node_patch_policy_lets_egressd_remove_its_own_taint_only() {
    use serde::Deserialize;
    use serde_json::{json, Value};
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/kubernetes/node-patch-policy.yaml"),
    )
    .unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs[1]["spec"]["policyName"], docs[0]["metadata"]["name"]);
    let spec = docs[0]["spec"].clone();
    let eval = |ctx: &cel::Context, expr: &Value| -> Value {
        let program = cel::Program::compile(expr.as_str().unwrap()).unwrap();
        program.execute(ctx).unwrap().json().unwrap()
    };
    // Whether the API server admits `user` (on `node`, if its token names
    // one) changing `old` into `new`.
    let admitted = |user: &str, on: Option<&str>, old: &Value, new: &Value| -> bool {
        let mut extra = serde_json::Map::new();
        if let Some(n) = on {
            extra.insert("authentication.kubernetes.io/node-name".into(), json!([n]));
        }
        let mut ctx = cel::Context::default();
        ctx.add_variable(
            "request",
            json!({"userInfo": {"username": user, "extra": extra}}),
        )
        .unwrap();
        ctx.add_variable("object", new.clone()).unwrap();
        ctx.add_variable("oldObject", old.clone()).unwrap();
        let applies = spec["matchConditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| eval(&ctx, &m["expression"]) == json!(true));
        if !applies {
            return true;
        }
        let mut variables = serde_json::Map::new();
        for v in spec["variables"].as_array().unwrap() {
            ctx.add_variable("variables", Value::Object(variables.clone()))
                .unwrap();
            let value = eval(&ctx, &v["expression"]);
            variables.insert(v["name"].as_str().unwrap().to_string(), value);
        }
        ctx.add_variable("variables", Value::Object(variables))
            .unwrap();
        spec["validations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| eval(&ctx, &v["expression"]) == json!(true))
    };
    let node = |name: &str, taints: &[&str], labels: Value, unschedulable: bool| {
        let taints: Vec<Value> = taints
            .iter()
            .map(|k| json!({"key": k, "effect": "NoSchedule"}))
            .collect();
        let mut spec = json!({"taints": taints});
        if unschedulable {
            spec["unschedulable"] = json!(true);
        }
        json!({"metadata": {"name": name, "labels": labels,
                            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
               "spec": spec})
    };
    const SA: &str = "system:serviceaccount:egressd-system:egressd";
    const OURS: &str = "egressd.io/not-ready";
    const OTHER: &str = "node.kubernetes.io/unreachable";
    let labels = json!({"kubernetes.io/os": "linux"});
    let tainted = node("node-a", &[OTHER, OURS], labels.clone(), false);
    let untainted = node("node-a", &[OTHER], labels.clone(), false);
    // What egressd does: its own taint off its own node.
    assert!(admitted(SA, Some("node-a"), &tainted, &untainted));
    // Without the other taint at all.
    let only = node("node-a", &[OURS], labels.clone(), false);
    assert!(admitted(
        SA,
        Some("node-a"),
        &only,
        &node("node-a", &[], labels.clone(), false)
    ));
    // Another node, or a token that names none.
    assert!(!admitted(SA, Some("node-b"), &tainted, &untainted));
    assert!(!admitted(SA, None, &tainted, &untainted));
    // Another taint removed, its own added, a label, an annotation, the
    // node cordoned.
    assert!(!admitted(
        SA,
        Some("node-a"),
        &tainted,
        &node("node-a", &[OURS], labels.clone(), false)
    ));
    assert!(!admitted(SA, Some("node-a"), &untainted, &tainted));
    let relabelled = node(
        "node-a",
        &[OTHER],
        json!({"kubernetes.io/os": "linux", "x": "y"}),
        false,
    );
    assert!(!admitted(SA, Some("node-a"), &tainted, &relabelled));
    let mut annotated = untainted.clone();
    annotated["metadata"]["annotations"]["x"] = json!("y");
    assert!(!admitted(SA, Some("node-a"), &tainted, &annotated));
    let cordoned = node("node-a", &[OTHER], labels.clone(), true);
    assert!(!admitted(SA, Some("node-a"), &tainted, &cordoned));
    // Its own taint made NoExecute (evicting the node's pods), not removed.
    let mut evicting = tainted.clone();
    evicting["spec"]["taints"][1]["effect"] = json!("NoExecute");
    assert!(!admitted(SA, Some("node-a"), &tainted, &evicting));
    // An owner the garbage collector would delete the node for.
    let mut owned = untainted.clone();
    owned["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u"}]);
    assert!(!admitted(SA, Some("node-a"), &tainted, &owned));
    // Nothing changed at all (the taint gone already): admitted.
    assert!(admitted(SA, Some("node-a"), &untainted, &untainted));
    // Anyone else: not this policy's business.
    assert!(admitted("kubernetes-admin", None, &untainted, &relabelled));
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

/// Two policies whose pod selectors can select one pod are refused by
/// `check` (files, or their directory), and by `run` as it loads them.
#[test]
fn check_refuses_overlapping_pod_selectors() {
    let tmp = TempDir::new("k8s-overlap").unwrap();
    let a = tmp
        .write(
            "a.yaml",
            "name: a\npods:\n  - namespace: agents\n    labels: {app: x}\nallow: []\n",
        )
        .unwrap();
    let b = tmp
        .write(
            "b.yaml",
            "name: b\npods:\n  - namespace: \"*\"\n    matchExpressions: [{key: app, operator: In, values: [x, y]}]\nallow: []\n",
        )
        .unwrap();
    for args in [vec![a.clone(), b.clone()], vec![tmp.0.clone()]] {
        let out = Command::new(bin())
            .arg("check")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("b.yaml")
                && err.contains("can select the same pods as selector 1 of policy `a`"),
            "{err}"
        );
    }
    // Made exclusive: b no longer selects app=x in `agents`.
    tmp.write(
        "b.yaml",
        "name: b\npods:\n  - namespace: \"*\"\n    matchExpressions: [{key: app, operator: In, values: [y]}]\nallow: []\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("check")
        .arg(&tmp.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

mod governed_pods {
    use std::time::Duration;

    use egress_tests::{
        egressd::{Daemon, TempDir, TestCgroup},
        kube_api::{pod, ApiServer},
        listen::Listener,
        netns::Netns,
        require_root,
    };
    use serde_json::json;

    const PROBE: &str = env!("CARGO_BIN_EXE_probe");
    const TAINT: &str = "egressd.io/not-ready";

    /// The cgroup of a pod (kubelet's layout), and of one container in it
    /// (both removed on drop).
    fn start_pod(kube: &TestCgroup, rel: &str) -> (TestCgroup, TestCgroup) {
        let pod = kube.child_path(rel).unwrap();
        let container = pod.child("cri-containerd-0123.scope").unwrap();
        (container, pod)
    }

    fn systemd_burstable(uid: &str) -> String {
        format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        )
    }

    /// What a connect from `cg` to the listener gives: "ok" or "error: 1".
    fn probe(cg: &TestCgroup, ns: &Netns) -> String {
        String::from_utf8_lossy(
            &cg.run(ns, PROBE, &["tcp", "203.0.113.9:443"])
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string()
    }

    /// A refused probe from `cg`, and the policy the event names.
    fn refused_under(daemon: &Daemon, cg: &TestCgroup, ns: &Netns) -> String {
        let n = daemon.events().len();
        assert_eq!(probe(cg, ns), "error: 1");
        let events = daemon.wait_events(n + 1);
        events
            .get(n)
            .map(|e| e["policy"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// Probes until `want` (at most 10 s); the last answer.
    fn probe_until(cg: &TestCgroup, ns: &Netns, want: &str) -> String {
        let mut got = String::new();
        for _ in 0..100 {
            got = probe(cg, ns);
            if got == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        got
    }

    /// A node for a test: its network namespace, a listener on
    /// 203.0.113.9:443 (where pods connect), an API server on
    /// 127.0.0.1:16443 with `namespaces` and the node tainted, and the
    /// cgroup that holds the kubepods cgroups (made, empty).
    fn node(
        tag: &str,
        namespaces: &[(&str, serde_json::Value)],
    ) -> (Netns, Listener, ApiServer, TestCgroup) {
        let ns = Netns::new(tag).unwrap();
        let target = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
        let api = ApiServer::start(&ns, "127.0.0.1:16443", namespaces, Some(TAINT)).unwrap();
        let kube = TestCgroup::new(tag).unwrap();
        kube.cgroup.create().unwrap();
        (ns, target, api, kube)
    }

    /// egressd started with `--kubernetes` against a test API server.
    fn daemon(
        ns: &Netns,
        api: &ApiServer,
        tmp: &TempDir,
        kube: &TestCgroup,
        policy: &str,
    ) -> Daemon {
        api.kubeconfig(&tmp.0).unwrap();
        daemon_via_kubeconfig(ns, tmp, kube, policy)
    }

    /// egressd started with `--kubernetes` and `tmp`'s kubeconfig.
    fn daemon_via_kubeconfig(ns: &Netns, tmp: &TempDir, kube: &TestCgroup, policy: &str) -> Daemon {
        let policy = tmp.write("p.yaml", policy).unwrap();
        let mut args = kube_args(tmp, kube);
        args.extend(["--ready-taint".to_string(), TAINT.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start_with(ns, &policy, &args).unwrap()
    }

    /// `egressd run`'s Kubernetes arguments: `tmp`'s kubeconfig, and its
    /// `state` directory for what egressd remembers of the pods.
    fn kube_args(tmp: &TempDir, kube: &TestCgroup) -> Vec<String> {
        [
            "--kubernetes",
            "--kubeconfig",
            &tmp.0.join("kubeconfig").to_string_lossy(),
            "--node",
            "node-a",
            "--kubepods-root",
            &kube.rel_str(),
            "--state-dir",
            &tmp.0.join("state").to_string_lossy(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Waits (at most 10 s) for egressd to remove the taint: the node's
    /// pods were listed and governed.
    fn wait_untainted(api: &ApiServer) {
        for _ in 0..100 {
            if !api.patches().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let patches = api.patches();
        assert_eq!(
            patches.len(),
            1,
            "the taint was not removed: {:?}",
            api.requests()
        );
        assert_eq!(patches[0]["spec"]["taints"], json!([]), "{patches:?}");
        assert_eq!(patches[0]["metadata"]["resourceVersion"], "7");
    }

    /// Pods are watched through the API server (this node's only), selected
    /// by namespace labels and pod labels with matchExpressions, under both
    /// cgroup drivers. A pod whose cgroup kubelet creates while egressd runs
    /// is refused everything before egressd knows it (its first process's
    /// connect is refused, and the listener gets nothing), then governed by
    /// its policy or released. A watch that expires (410 Gone) is followed
    /// by a new list, which replaces what was known.
    #[test]
    fn pods_are_held_until_classified() {
        require_root();
        let (ns, target, api, kube) = node(
            "kube",
            &[("agents", json!({"team": "ai"})), ("default", json!({}))],
        );
        let agent = json!({"app": "doc-summarizer", "tier": "agent"});
        let uids = [
            "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            "aa11bb22-2222-4c3b-9a55-2b1c0d9e8f71",
            "bb11bb22-3333-4c3b-9a55-2b1c0d9e8f72",
            "cc11bb22-4444-4c3b-9a55-2b1c0d9e8f73",
            "dd11bb22-5555-4c3b-9a55-2b1c0d9e8f74",
            "ee11bb22-6666-4c3b-9a55-2b1c0d9e8f75",
        ];
        let summarizer = pod("summarizer", "agents", uids[0], agent.clone(), "Burstable");
        let web = pod("web", "default", uids[1], agent.clone(), "BestEffort");
        let debug = pod(
            "summarizer-debug",
            "agents",
            uids[2],
            json!({"app": "doc-summarizer", "tier": "debug"}),
            "Burstable",
        );
        api.add_pod(summarizer);
        api.add_pod(web.clone());
        api.add_pod(debug);
        let (a_cg, _a) = start_pod(&kube, &systemd_burstable(uids[0]));
        let (w_cg, _w) = start_pod(&kube, &format!("kubepods/besteffort/pod{}", uids[1]));
        let (g_cg, _g) = start_pod(&kube, &systemd_burstable(uids[2]));
        let tmp = TempDir::new("kube").unwrap();
        let daemon = daemon(&ns, &api, &tmp, &kube,
            "name: doc\npods:\n  - namespace: \"*\"\n    namespaceSelector: {matchLabels: {team: ai}}\n    labels: {app: doc-summarizer}\n    matchExpressions: [{key: tier, operator: NotIn, values: [debug]}]\nallow: []\n");
        wait_untainted(&api);
        assert!(
            api.requests()
                .iter()
                .any(|r| r.starts_with("GET /api/v1/pods?")
                    && r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
            "pods are listed for this node only: {:?}",
            api.requests()
        );
        assert_eq!(
            refused_under(&daemon, &a_cg, &ns),
            "doc",
            "a selected pod is governed by its policy"
        );
        // `status` says which pods each policy governs, and how many are released.
        let status = daemon.status();
        assert!(
            status.contains("governs pod /") && status.contains(&uids[0].replace('-', "_")),
            "{status}"
        );
        assert!(
            status.contains("pods released (no policy selects them): 2"),
            "{status}"
        );
        assert_eq!(
            probe(&w_cg, &ns),
            "ok",
            "a namespace without the label: released"
        );
        assert_eq!(
            probe(&g_cg, &ns),
            "ok",
            "excluded by matchExpressions: released"
        );

        // kubelet creates two pods' cgroups (Guaranteed, cgroupfs; Burstable,
        // systemd) before egressd has heard of the pods: their first
        // processes are refused, under kubernetes-pending.
        let late = pod("late", "agents", uids[3], agent.clone(), "Guaranteed");
        let other = pod(
            "other",
            "default",
            uids[4],
            json!({"app": "web"}),
            "Burstable",
        );
        let (l_cg, _l) = start_pod(&kube, &format!("kubepods/pod{}", uids[3]));
        let (o_cg, _o) = start_pod(&kube, &systemd_burstable(uids[4]));
        let n = daemon.events().len();
        assert_eq!(probe(&l_cg, &ns), "error: 1");
        assert_eq!(
            probe(&o_cg, &ns),
            "error: 1",
            "held until egressd knows the pod"
        );
        let pending = daemon.wait_events(n + 2);
        for uid in &uids[3..5] {
            assert!(
                pending
                    .iter()
                    .any(|e| e["policy"] == "kubernetes-pending" && e["pod_uid"] == *uid),
                "no pending event names pod {uid}: {pending:?}"
            );
        }
        api.add_pod(late);
        api.add_pod(other);
        assert_eq!(probe_until(&o_cg, &ns, "ok"), "ok", "released once known");
        assert!(
            daemon.wait_log(|l| l.contains("pod governed") && l.contains(uids[3])),
            "{:?}",
            daemon.log.lock().unwrap()
        );
        assert_eq!(probe(&l_cg, &ns), "error: 1", "governed once known");
        let n = daemon.events().len();
        assert_eq!(probe(&l_cg, &ns), "error: 1");
        let named = daemon.wait_events(n + 1);
        assert!(
            named[n..].iter().any(|e| e["policy"] == "doc"
                && e["pod"] == "agents/late"
                && e["pod_uid"] == uids[3]),
            "the event names the pod: {:?}",
            &named[n..]
        );

        // The agent takes its label off (whoever may patch its pod may):
        // no longer selected, it is held, not released.
        api.add_pod(pod(
            "summarizer",
            "agents",
            uids[0],
            json!({"tier": "agent"}),
            "Burstable",
        ));
        assert!(
            daemon.wait_log(
                |l| l.contains("no longer selected") && l.contains(&uids[0].replace('-', "_"))
            ),
            "{:?}",
            daemon.log.lock().unwrap()
        );
        assert_eq!(refused_under(&daemon, &a_cg, &ns), "kubernetes-pending");
        // A pod in a namespace egressd has not heard of (its labels could
        // select it) is held too.
        let stranger = "ab11bb22-7777-4c3b-9a55-2b1c0d9e8f77";
        let (s_cg, _s) = start_pod(&kube, &systemd_burstable(stranger));
        api.add_pod(pod("stranger", "new-ns", stranger, json!({}), "Burstable"));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(refused_under(&daemon, &s_cg, &ns), "kubernetes-pending");

        // The watch expires (410 Gone); meanwhile `web` was deleted and a
        // new pod listed, which egressd learns from its next list.
        let lists_before = api
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
            .count();
        let (n_cg, _n) = start_pod(&kube, &systemd_burstable(uids[5]));
        api.set_quietly(web, false);
        api.set_quietly(pod("new", "default", uids[5], json!({}), "Burstable"), true);
        api.expire_watches();
        assert_eq!(
            probe_until(&n_cg, &ns, "ok"),
            "ok",
            "a pod from the relist is released"
        );
        assert_eq!(
            probe_until(&w_cg, &ns, "error: 1"),
            "error: 1",
            "a pod gone from the relist is held again"
        );
        let lists = api
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
            .count();
        assert!(
            lists > lists_before,
            "no relist after 410: {:?}",
            api.requests()
        );
        // What reached the listener: the released pods' connects only.
        assert_eq!(target.count(), 4, "web, debug, other, new");

        // egressd restarts (an upgrade): the relabelled pod stays held.
        let instance = daemon.kill().unwrap();
        let args = kube_args(&tmp, &kube);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let again = Daemon::start_instance(&ns, &tmp.0.join("p.yaml"), &instance.0, &args).unwrap();
        assert!(
            again
                .wait_log(|l| l.contains("pod released") && l.contains(&uids[5].replace('-', "_"))),
            "{:?}",
            again.log.lock().unwrap()
        );
        assert_eq!(refused_under(&again, &a_cg, &ns), "kubernetes-pending");
        let status = again.status();
        assert!(
            status.contains("pod held") && status.contains(&uids[0].replace('-', "_")),
            "{status}"
        );
        drop(again);
        drop(instance);
    }
    /// kind's layout (the systemd driver under cgroupRoot `/kubelet`) and
    /// k3s's (cgroupfs under a cgroupRoot): the kubepods cgroup is found
    /// in the directory `--kubepods-root` names, pods are held until
    /// listed, then governed or released. Where there is none, egressd
    /// says what to do and exits.
    #[test]
    fn pods_are_governed_under_kind_and_k3s_layouts() {
        require_root();
        let uids = [
            "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            "aa11bb22-2222-4c3b-9a55-2b1c0d9e8f71",
            "bb11bb22-3333-4c3b-9a55-2b1c0d9e8f72",
        ];
        // Where the kubepods cgroup's holder is, its name, and where a
        // Burstable pod's cgroup is below the holder.
        type Layout = (&'static str, &'static str, fn(&str) -> String);
        let layouts: [Layout; 2] = [
            ("kubelet.slice", "kubelet-kubepods.slice", |uid| {
                format!(
                    "kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{}.slice",
                    uid.replace('-', "_")
                )
            }),
            ("k3s", "kubepods", |uid| {
                format!("kubepods/burstable/pod{uid}")
            }),
        ];
        for (holder, kubepods, burstable) in layouts {
            let ns = Netns::new("klayout").unwrap();
            let _target = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
            let api = ApiServer::start(
                &ns,
                "127.0.0.1:16443",
                &[("agents", json!({}))],
                Some(TAINT),
            )
            .unwrap();
            let root = TestCgroup::new("klayout").unwrap();
            let kube = root.child_path(holder).unwrap();
            let _kubepods = kube.child_path(kubepods).unwrap();
            let agent = json!({"app": "doc-summarizer"});
            api.add_pod(pod("summarizer", "agents", uids[0], agent, "Burstable"));
            api.add_pod(pod(
                "web",
                "agents",
                uids[1],
                json!({"app": "web"}),
                "Burstable",
            ));
            let (a_cg, _a) = start_pod(&kube, &burstable(uids[0]));
            let (w_cg, _w) = start_pod(&kube, &burstable(uids[1]));
            let tmp = TempDir::new("klayout").unwrap();
            let daemon = daemon(&ns, &api, &tmp, &kube,
                "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow: []\n");
            wait_untainted(&api);
            assert_eq!(refused_under(&daemon, &a_cg, &ns), "doc", "{holder}");
            assert_eq!(probe(&w_cg, &ns), "ok", "{holder}: released");
            let (l_cg, _l) = start_pod(&kube, &burstable(uids[2]));
            assert_eq!(
                refused_under(&daemon, &l_cg, &ns),
                "kubernetes-pending",
                "{holder}: a pod not listed yet"
            );
            drop(daemon);
            // No kubepods cgroup where --kubepods-root says.
            let empty = root.child_path("empty").unwrap();
            let args = kube_args(&tmp, &empty);
            let out = std::process::Command::new(egress_tests::egressd::bin())
                .arg("run")
                .arg("--policy")
                .arg(tmp.0.join("p.yaml"))
                .args([
                    "--no-metrics",
                    "--instance",
                    &format!("test-nokube-{}", std::process::id()),
                ])
                .args(&args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{err}");
            assert!(
                err.contains("no kubepods cgroup") && err.contains("--kubepods-root"),
                "{err}"
            );
        }
    }

    /// Day 2 with a ConfigMap: egressd starts with no policy at all (every
    /// pod released); policies added later govern their pods; a policy
    /// renamed governs its pods under its new name; a policy removed
    /// releases its pods (the operator's word, not a label an agent could
    /// change: not held); and with every policy gone, every pod is
    /// released again. Each change is a reload that succeeds.
    #[test]
    fn policies_are_added_renamed_and_removed_in_a_running_node() {
        require_root();
        let (ns, target, api, kube) = node("kday2", &[("agents", json!({}))]);
        let uids = [
            "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            "aa11bb22-2222-4c3b-9a55-2b1c0d9e8f71",
        ];
        api.add_pod(pod(
            "pa",
            "agents",
            uids[0],
            json!({"app": "a"}),
            "Burstable",
        ));
        api.add_pod(pod(
            "pb",
            "agents",
            uids[1],
            json!({"app": "b"}),
            "Burstable",
        ));
        let (a_cg, _a) = start_pod(&kube, &systemd_burstable(uids[0]));
        let (b_cg, _b) = start_pod(&kube, &systemd_burstable(uids[1]));
        let tmp = TempDir::new("kday2").unwrap();
        api.kubeconfig(&tmp.0).unwrap();
        let dir = tmp.0.join("policies");
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = kube_args(&tmp, &kube);
        args.extend(["--ready-taint".to_string(), TAINT.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start_with(&ns, &dir, &args).unwrap();
        wait_untainted(&api);
        assert_eq!(probe(&a_cg, &ns), "ok", "no policy: released");
        assert_eq!(probe(&b_cg, &ns), "ok", "no policy: released");
        let write = |file: &str, name: &str, app: &str| {
            std::fs::write(
                dir.join(file),
                format!("name: {name}\npods:\n  - namespace: agents\n    labels: {{app: {app}}}\nallow: []\n"),
            )
            .unwrap();
        };
        let reload = || {
            let out = std::process::Command::new(egress_tests::egressd::bin())
                .args(["reload", "--instance", &daemon.instance])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        write("a.yaml", "a", "a");
        write("b.yaml", "b", "b");
        reload();
        assert_eq!(refused_under(&daemon, &a_cg, &ns), "a");
        assert_eq!(refused_under(&daemon, &b_cg, &ns), "b");
        // Renamed: its pods go to the policy under its new name.
        write("a.yaml", "a2", "a");
        reload();
        assert_eq!(refused_under(&daemon, &a_cg, &ns), "a2");
        // Removed: its pods are released, not held.
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        reload();
        assert_eq!(probe(&b_cg, &ns), "ok", "its policy removed: released");
        assert_eq!(refused_under(&daemon, &a_cg, &ns), "a2");
        let status = daemon.status();
        assert!(
            !status.contains("policy b") && !status.contains("pod held"),
            "{status}"
        );
        // Every policy gone.
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        reload();
        assert_eq!(probe(&a_cg, &ns), "ok", "no policy left: released");
        assert_eq!(target.count(), 4, "what the released pods sent, only");
    }

    /// A client connecting every millisecond or so until file `argv[1]` exists; prints
    /// how many connects succeeded and failed.
    const CONNECT_LOOP: &str = r#"
import os, socket, sys, time
ok = failed = 0
while not os.path.exists(sys.argv[1]):
    try:
        socket.create_connection(("203.0.113.9", 443), timeout=2).close()
        ok += 1
    except OSError:
        failed += 1
    time.sleep(0.001)
print(ok, failed)
"#;

    /// egressd restarts (an upgrade, an OOM kill) while the API server does
    /// not answer: what the previous run decided for each pod holds from
    /// the new run's start. A released pod's client, connecting every
    /// 20 ms throughout, never fails; the governed pod stays governed; only
    /// a pod that kubelet started while egressd was down waits for the list.
    #[test]
    fn a_restart_keeps_each_pod_as_it_was_while_the_api_server_is_silent() {
        require_root();
        let (ns, target, api, kube) =
            node("krestart", &[("agents", json!({})), ("default", json!({}))]);
        let uids = [
            "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70",
            "aa11bb22-2222-4c3b-9a55-2b1c0d9e8f71",
            "bb11bb22-3333-4c3b-9a55-2b1c0d9e8f72",
        ];
        let agent = json!({"app": "doc-summarizer"});
        api.add_pod(pod("summarizer", "agents", uids[0], agent, "Burstable"));
        api.add_pod(pod(
            "web",
            "default",
            uids[1],
            json!({"app": "web"}),
            "BestEffort",
        ));
        let (a_cg, _a) = start_pod(&kube, &systemd_burstable(uids[0]));
        let (w_cg, _w) = start_pod(&kube, &format!("kubepods/besteffort/pod{}", uids[1]));
        let tmp = TempDir::new("krestart").unwrap();
        let daemon = daemon(&ns, &api, &tmp, &kube,
            "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow: []\n");
        wait_untainted(&api);
        assert_eq!(probe(&w_cg, &ns), "ok");
        let stop = tmp.0.join("stop");
        let client = w_cg
            .command(&ns, "python3")
            .args(["-c", CONNECT_LOOP, &stop.to_string_lossy()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));

        api.set_silent(true);
        let instance = daemon.kill().unwrap();
        // kubelet starts a pod while egressd is down.
        let (l_cg, _l) = start_pod(&kube, &systemd_burstable(uids[2]));
        api.set_quietly(
            pod("late", "default", uids[2], json!({}), "Burstable"),
            true,
        );
        let args = kube_args(&tmp, &kube);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let again = Daemon::start_instance(&ns, &tmp.0.join("p.yaml"), &instance.0, &args).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            refused_under(&again, &a_cg, &ns),
            "doc",
            "governed as before the restart"
        );
        assert_eq!(
            refused_under(&again, &l_cg, &ns),
            "kubernetes-pending",
            "started while egressd was down: held until listed"
        );
        assert_eq!(probe(&w_cg, &ns), "ok", "released as before the restart");
        // The metrics say so, and that the watch has not been heard.
        let pods = |state: &str| again.metric("egressd_pods", &[("state", state)]).unwrap();
        assert!(again.wait_metric("egressd_pods", &[("state", "pending")], 1.0));
        assert_eq!(
            [
                pods("pending"),
                pods("governed"),
                pods("released"),
                pods("held")
            ],
            [1.0, 1.0, 1.0, 0.0]
        );
        let heard = || {
            again
                .metric("egressd_pod_watch_last_event_timestamp_seconds", &[])
                .unwrap()
        };
        assert_eq!(heard(), 0.0, "the silent API server told nothing");
        api.set_silent(false);
        assert_eq!(probe_until(&l_cg, &ns, "ok"), "ok", "released once listed");
        assert!(again.wait_metric("egressd_pods", &[("state", "released")], 2.0));
        assert_eq!(pods("pending"), 0.0);
        assert!(heard() > 1.7e9, "{}", heard());
        std::fs::write(&stop, "").unwrap();
        let out = client.wait_with_output().unwrap();
        let counts = String::from_utf8_lossy(&out.stdout);
        let (ok, failed) = counts.trim().split_once(' ').unwrap();
        let (ok, failed): (u32, u32) = (ok.parse().unwrap(), failed.parse().unwrap());
        assert_eq!(
            failed, 0,
            "the released pod's connects failed during the restart ({ok} passed)"
        );
        assert!(ok >= 20, "{ok}");
        assert!(target.count() >= u64::from(ok));
        drop(again);
        drop(instance);
    }

    /// A pod held (its policy no longer selects it: it took its label off)
    /// stays held across a reboot, though egressd starts before kubelet
    /// makes the pod's cgroup again: the decision outlives the cgroup while
    /// the API server still lists the pod.
    #[test]
    fn a_held_pod_stays_held_after_a_reboot() {
        require_root();
        let (ns, target, api, kube) = node("kheld", &[("agents", json!({}))]);
        let uid = "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70";
        let labelled = json!({"app": "doc-summarizer"});
        api.add_pod(pod("summarizer", "agents", uid, labelled, "Burstable"));
        let (a_cg, a_pod) = start_pod(&kube, &systemd_burstable(uid));
        let tmp = TempDir::new("kheld").unwrap();
        let daemon = daemon(&ns, &api, &tmp, &kube,
            "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow: []\n");
        wait_untainted(&api);
        api.add_pod(pod("summarizer", "agents", uid, json!({}), "Burstable"));
        assert!(
            daemon.wait_log(|l| l.contains("no longer selected")),
            "{:?}",
            daemon.log.lock().unwrap()
        );
        // The node goes down: egressd and the pod's cgroups with it.
        let instance = daemon.kill().unwrap();
        drop((a_cg, a_pod));
        api.set_silent(true);
        let args = kube_args(&tmp, &kube);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let again = Daemon::start_instance(&ns, &tmp.0.join("p.yaml"), &instance.0, &args).unwrap();
        // kubelet makes the pod's cgroup again, then the API server answers.
        let (a_cg, _a_pod) = start_pod(&kube, &systemd_burstable(uid));
        api.set_silent(false);
        assert!(again.wait_metric("egressd_pods", &[("state", "held")], 1.0));
        assert_eq!(refused_under(&again, &a_cg, &ns), "kubernetes-pending");
        assert_eq!(target.count(), 0);
        drop(again);
        drop(instance);
    }

    /// A single control-plane node reboots: kubelet starts the static
    /// kube-apiserver pod before egressd, and egressd reaches the API server
    /// only through it (here a forwarder in a static pod's cgroup, named by
    /// a config hash, on a non-loopback address). Nothing is remembered
    /// (a fresh state directory): static pods are released until an API
    /// object claims them, so egressd gets its list, and the agent pod,
    /// which the API server made, is held until then and governed after.
    #[test]
    fn a_rebooted_control_plane_node_lists_its_pods_through_its_static_api_server() {
        require_root();
        let (ns, _target, api, kube) = node("kreboot", &[("agents", json!({}))]);
        let hash = "5f4dcc3b5aa765d61d8327deb882cf99";
        let (s_cg, _s) = start_pod(&kube, &format!("kubepods/burstable/pod{hash}"));
        let mut forwarder = s_cg
            .command(&ns, "python3")
            .args(["-c", FORWARDER])
            .spawn()
            .unwrap();
        let front: std::net::SocketAddr = "198.51.100.3:6443".parse().unwrap();
        let mut listening = false;
        for _ in 0..100 {
            if ns
                .run(move || Ok(std::net::TcpStream::connect(front)?))
                .is_ok()
            {
                listening = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(listening, "the forwarder did not listen");
        let uid = "0f2c5a1e-1111-4c3b-9a55-2b1c0d9e8f70";
        api.add_pod(pod(
            "summarizer",
            "agents",
            uid,
            json!({"app": "doc-summarizer"}),
            "Burstable",
        ));
        let (a_cg, _a) = start_pod(&kube, &systemd_burstable(uid));
        let tmp = TempDir::new("kreboot").unwrap();
        api.kubeconfig_via(&tmp.0, front).unwrap();
        let daemon = daemon_via_kubeconfig(&ns, &tmp, &kube,
            "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow: []\n");
        wait_untainted(&api);
        assert_eq!(probe(&s_cg, &ns), "ok", "the static pod is released");
        assert!(
            daemon.wait_log(|l| l.contains("pod governed") && l.contains(&uid.replace('-', "_"))),
            "{:?}",
            daemon.log.lock().unwrap()
        );
        assert_eq!(refused_under(&daemon, &a_cg, &ns), "doc");
        forwarder.kill().unwrap();
        forwarder.wait().unwrap();
    }

    /// A TCP forwarder from 198.51.100.3:6443 to the API server.
    const FORWARDER: &str = r#"
import socket, threading
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.51.100.3", 6443))
s.listen(64)
while True:
    c, _ = s.accept()
    try:
        u = socket.create_connection(("127.0.0.1", 16443))
    except OSError:
        c.close()
        continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"#;

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
        let api =
            ApiServer::start(&host, "127.0.0.1:16443", &[("agents", json!({}))], None).unwrap();
        let kube = TestCgroup::new("kubedns").unwrap();
        kube.cgroup.create().unwrap();
        let uid = "dd11bb22-5555-4c3b-9a55-2b1c0d9e8f74";
        let tmp = TempDir::new("kubedns").unwrap();
        api.add_pod(pod(
            "summarizer",
            "agents",
            uid,
            json!({"app": "doc-summarizer"}),
            "Burstable",
        ));
        let (container, _pod) = start_pod(&kube, &format!("kubepods/burstable/pod{uid}"));
        // The pod's sandbox: a process in the pod's cgroup and namespace.
        let mut sandbox = container
            .command(&podns, "sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let daemon = daemon(
            &host,
            &api,
            &tmp,
            &kube,
            "name: doc\npods:\n  - namespace: agents\n    labels: {app: doc-summarizer}\nallow:\n  - host: api.model.test\n    ports: [443]\ndns:\n  upstream: [198.51.100.53]\n",
        );
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
