//! A front door as a CDN runs one: one address serving several names,
//! routing each connection by its TLS server_name (port 443) or its HTTP
//! Host (port 80), with a certificate for every name it serves. It writes
//! one line per connection with the bytes that reached it and the name
//! they presented: a refused connection is proven here, by bytes 0.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{egressd::TempDir, netns::Netns};

/// The server: peeks at each connection's first bytes (up to 3 s),
/// reports them, then answers `hello <name>` over TLS or plain HTTP.
const SERVER: &str = r#"
import json, socket, ssl, sys, threading, time
log, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
addrs = sys.argv[4:]
lock = threading.Lock()

def sni_of(d):
    try:
        if d[0] != 0x16 or len(d) < 9: return None
        end = 9 + int.from_bytes(d[6:9], 'big')
        p = 9 + 2 + 32
        p += 1 + d[p]
        p += 2 + int.from_bytes(d[p:p+2], 'big')
        p += 1 + d[p]
        ext_end = p + 2 + int.from_bytes(d[p:p+2], 'big'); p += 2
        while p + 4 <= ext_end:
            t = int.from_bytes(d[p:p+2], 'big'); l = int.from_bytes(d[p+2:p+4], 'big'); p += 4
            if t == 0:
                n = int.from_bytes(d[p+3:p+5], 'big')
                return d[p+5:p+5+n].decode()
            p += l
    except Exception:
        return None
    return None

def host_of(d):
    for line in d.split(b'\r\n')[1:]:
        if line.lower().startswith(b'host:'):
            return line[5:].strip().split(b':')[0].decode()
    return None

def complete(d):
    if d[:1] == b'\x16':
        return len(d) >= 5 and len(d) >= 5 + int.from_bytes(d[3:5], 'big')
    return b'\r\n\r\n' in d

def serve(conn, port):
    conn.settimeout(3)
    data = b''
    deadline = time.time() + 3
    while time.time() < deadline:
        try:
            data = conn.recv(65536, socket.MSG_PEEK)
        except Exception:
            break
        if not data or complete(data):
            break
        time.sleep(0.02)
    sni, host = sni_of(data), (host_of(data) if data[:1] != b'\x16' else None)
    with lock:
        with open(log, 'a') as f:
            f.write(json.dumps({'port': port, 'bytes': len(data), 'sni': sni, 'host': host}) + '\n')
    try:
        if data[:1] == b'\x16':
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            conn = ctx.wrap_socket(conn, server_side=True)
            conn.recv(65536)
            name = sni
        else:
            conn.recv(65536)
            name = host
        body = ('hello %s' % name).encode()
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
    except Exception:
        pass
    try: conn.close()
    except Exception: pass

def listen(addr, port):
    family = socket.AF_INET6 if ':' in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c, port), daemon=True).start()

for a in addrs:
    for port in (80, 443):
        threading.Thread(target=listen, args=(a, port), daemon=True).start()
open(log + '.ready', 'w').close()
threading.Event().wait()
"#;

pub struct FrontDoor {
    child: Child,
    log: PathBuf,
    /// The certificate clients trust (one for every name served).
    pub cert: PathBuf,
    _dir: TempDir,
}

impl FrontDoor {
    /// Serves `names` on `addrs` (ports 80 and 443) inside `ns`.
    pub fn start(ns: &Netns, addrs: &[&str], names: &[&str]) -> Result<FrontDoor> {
        let dir = TempDir::new("front-door")?;
        let cert = dir.0.join("cert.pem");
        let key = dir.0.join("key.pem");
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=front-door"])
            .arg("-addext")
            .arg(format!("subjectAltName={}", san.join(",")))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl")?;
        if !ok.success() {
            bail!("openssl could not make the front door's certificate");
        }
        let log = dir.0.join("connections.jsonl");
        let child = ns
            .command("python3")
            .arg("-c")
            .arg(SERVER)
            .arg(&log)
            .arg(&cert)
            .arg(&key)
            .args(addrs)
            .stdin(Stdio::null())
            .spawn()
            .context("starting the front door")?;
        let ready = log.with_extension("jsonl.ready");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if Instant::now() > deadline {
                bail!("the front door did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The listeners bind in threads: give them a moment.
        std::thread::sleep(Duration::from_millis(200));
        Ok(FrontDoor {
            child,
            log,
            cert,
            _dir: dir,
        })
    }

    /// One line per connection so far (each written once its first bytes
    /// were read, or 3 s passed without them).
    pub fn connections(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("the front door writes JSON lines"))
            .collect()
    }

    /// Waits until `n` connections are reported (at most 10 s).
    pub fn wait(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.connections();
            if c.len() >= n || Instant::now() > deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
