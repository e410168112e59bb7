//! A Kubernetes API server for tests: it answers the requests egressd
//! makes (list and watch pods and namespaces, get and patch a node) from a
//! state the test sets, over plain HTTP inside a test network namespace.
//! Watches stream what the test does next (`add_pod`, `delete_pod`), and
//! `expire_watches` ends them as an API server does when their resource
//! version is too old (an ERROR event with a 410 Gone status), after which
//! a client must list again.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        mpsc::{channel, Receiver, RecvTimeoutError, Sender},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use anyhow::Result;
use serde_json::{json, Value};

use crate::netns::Netns;

#[derive(Default)]
struct State {
    /// Pods by uid.
    pods: BTreeMap<String, Value>,
    namespaces: Vec<Value>,
    node: Value,
    version: u64,
    pod_watches: Vec<Sender<String>>,
    /// Every request line received ("GET /api/v1/pods?...").
    requests: Vec<String>,
    /// Bodies of the PATCH requests.
    patches: Vec<Value>,
    /// Requests wait while set (an API server that does not answer).
    silent: bool,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// A pod object as the API server returns it.
pub fn pod(name: &str, namespace: &str, uid: &str, labels: Value, qos: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels,
                     "resourceVersion": "1"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "agent"}]},
        "status": {"qosClass": qos, "phase": "Running"},
    })
}

impl ApiServer {
    /// Serves on `addr` inside `ns`: namespaces `namespaces` (name, labels),
    /// and node `node-a` with the taint `taint` (if any).
    pub fn start(
        ns: &Netns,
        addr: &str,
        namespaces: &[(&str, Value)],
        taint: Option<&str>,
    ) -> Result<ApiServer> {
        let addr: SocketAddr = addr.parse()?;
        let listener = ns.run(move || Ok(TcpListener::bind(addr)?))?;
        let taints: Vec<Value> = taint
            .map(|k| json!({"key": k, "effect": "NoSchedule"}))
            .into_iter()
            .collect();
        let state = Arc::new(Mutex::new(State {
            namespaces: namespaces
                .iter()
                .map(|(n, labels)| {
                    json!({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": n, "labels": labels, "resourceVersion": "1"}})
                })
                .collect(),
            node: json!({"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": "node-a", "resourceVersion": "7"},
                         "spec": {"taints": taints}}),
            version: 100,
            ..State::default()
        }));
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Ok(ApiServer { addr, state })
    }

    /// A kubeconfig file in `dir` that points at this server.
    pub fn kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        self.kubeconfig_via(dir, self.addr)
    }

    /// A kubeconfig file in `dir` that points at `server` (a proxy to
    /// this server).
    pub fn kubeconfig_via(&self, dir: &Path, server: SocketAddr) -> Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{server}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            ),
        )?;
        Ok(path)
    }

    /// Adds (or changes) a pod, told to the watches as it happens.
    pub fn add_pod(&self, pod: Value) {
        self.change(pod, "ADDED", false);
    }

    /// Makes requests wait (the connection is accepted, nothing is
    /// answered) until `silent` is false again.
    pub fn set_silent(&self, silent: bool) {
        self.state.lock().unwrap().silent = silent;
    }

    /// Deletes a pod, told to the watches.
    pub fn delete_pod(&self, pod: Value) {
        self.change(pod, "DELETED", true);
    }

    /// Adds or deletes a pod without telling the watches: what a client
    /// whose watch expired has missed, and learns from its next list.
    pub fn set_quietly(&self, pod: Value, present: bool) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        if present {
            s.pods.insert(uid, pod);
        } else {
            s.pods.remove(&uid);
        }
    }

    fn change(&self, mut pod: Value, kind: &str, delete: bool) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        pod["metadata"]["resourceVersion"] = json!(s.version.to_string());
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        if delete {
            s.pods.remove(&uid);
        } else {
            s.pods.insert(uid, pod.clone());
        }
        let line = json!({"type": kind, "object": pod}).to_string();
        s.pod_watches.retain(|w| w.send(line.clone()).is_ok());
    }

    /// Ends every pod watch with 410 Gone (resource version too old).
    pub fn expire_watches(&self) {
        let mut s = self.state.lock().unwrap();
        let gone = json!({"type": "ERROR", "object": {
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}})
        .to_string();
        for w in s.pod_watches.drain(..) {
            let _ = w.send(gone.clone());
        }
    }

    /// The request lines received so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The bodies of the PATCH requests received so far.
    pub fn patches(&self) -> Vec<Value> {
        self.state.lock().unwrap().patches.clone()
    }
}

/// Answers one request (the connection is closed after it).
fn serve(conn: TcpStream, state: &Mutex<State>) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    while state.lock().unwrap().silent {
        thread::sleep(Duration::from_millis(50));
    }
    let request = line.trim().to_string();
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let watch = query
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1");
    let mut s = state.lock().unwrap();
    s.requests.push(request.clone());
    let list = |kind: &str, items: Vec<Value>, version: u64| {
        json!({"apiVersion": "v1", "kind": kind,
               "metadata": {"resourceVersion": version.to_string()}, "items": items})
    };
    match (method, path, watch) {
        ("GET", "/api/v1/pods", false) => {
            let items = s.pods.values().cloned().collect();
            let body = list("PodList", items, s.version);
            drop(s);
            respond(conn, 200, &body)
        }
        ("GET", "/api/v1/pods", true) => {
            let (tx, rx) = channel();
            s.pod_watches.push(tx);
            drop(s);
            stream(conn, rx)
        }
        ("GET", "/api/v1/namespaces", false) => {
            let body = list("NamespaceList", s.namespaces.clone(), s.version);
            drop(s);
            respond(conn, 200, &body)
        }
        ("GET", "/api/v1/namespaces", true) => {
            // Held open, with nothing to tell.
            drop(s);
            let (tx, rx) = channel::<String>();
            let r = stream(conn, rx);
            drop(tx);
            r
        }
        ("GET", "/api/v1/nodes/node-a", _) => {
            let node = s.node.clone();
            drop(s);
            respond(conn, 200, &node)
        }
        ("PATCH", "/api/v1/nodes/node-a", _) => {
            let patch: Value = serde_json::from_slice(&body)?;
            s.patches.push(patch.clone());
            if let Some(t) = patch["spec"].get("taints") {
                s.node["spec"]["taints"] = t.clone();
            }
            let node = s.node.clone();
            drop(s);
            respond(conn, 200, &node)
        }
        _ => {
            drop(s);
            respond(conn, 404, &json!({"kind": "Status", "code": 404}))
        }
    }
}

fn respond(mut conn: TcpStream, code: u16, body: &Value) -> Result<()> {
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// A watch: one chunk per event line, until the sender is gone or a
/// minute has passed without one (then the stream ends, as a watch that
/// times out does).
fn stream(mut conn: TcpStream, events: Receiver<String>) -> Result<()> {
    let mut idle = 0;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    loop {
        match events.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                idle = 0;
                let chunk = format!("{line}\n");
                write!(conn, "{:x}\r\n{chunk}\r\n", chunk.len())?;
                if line.contains("\"ERROR\"") {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                idle += 1;
                if idle >= 60 {
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    conn.write_all(b"0\r\n\r\n")?;
    Ok(())
}
