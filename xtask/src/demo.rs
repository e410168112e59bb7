//! `cargo xtask demo`: the prompt-injection scenario, played for real in a
//! throwaway network namespace.
//!
//! A document-summarising agent may reach its model API only. It summarises
//! a document that carries injected instructions; the (simulated) model
//! obeys them and asks the agent to POST the summary to an outside host. The
//! kernel refuses the connect(), egressd reports who tried, and the
//! Prometheus counter counts it. Nothing leaves the namespace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::ebpf::workspace_root;

const ADDRS: &[&str] = &["198.51.100.1/32", "198.51.100.53/32", "203.0.113.9/32"];
const METRICS: &str = "127.0.0.1:9469";

/// Everything the demo creates, removed on drop whatever happened.
struct Scene {
    ns: String,
    dir: PathBuf,
    cgroup: Option<PathBuf>,
    instance: String,
    egressd: PathBuf,
    children: Vec<Child>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: signalling our own children.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        let _ = Command::new(&self.egressd)
            .args(["detach", "--instance", &self.instance])
            .status();
        if let Some(cg) = &self.cgroup {
            if let Ok(procs) = fs::read_to_string(cg.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    // SAFETY: kill has no memory preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            thread::sleep(Duration::from_millis(100));
            let _ = fs::remove_dir(cg);
            if let Some(slice) = cg.parent() {
                let _ = fs::remove_dir(slice); // only if no other demo is using it
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Scene {
    /// A command that runs in the demo's network namespace (mounts unchanged).
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg(program);
        c
    }
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            right
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 filesystem is mounted")
}

fn wait_for(what: &str, secs: u64, mut ready: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..secs * 20 {
        if ready() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

/// A step's title: bold on a terminal, plain text elsewhere (a log, a pipe).
fn step(n: u32, text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m== {n}. {text}\x1b[0m");
    } else {
        println!("\n== {n}. {text}");
    }
}

/// The user the agent runs as: nobody, as the README tells users to run
/// agents (no capabilities: it can neither leave its cgroup nor detach
/// egressd).
const AGENT_UID: &str = "65534";

pub fn run(egressd: &Path) -> Result<()> {
    let id = std::process::id();
    let assets = workspace_root().join("xtask/demo");
    let mut scene = Scene {
        ns: format!("egressd-demo-{id}"),
        dir: std::env::temp_dir().join(format!("egressd-demo-{id}")),
        cgroup: None,
        instance: format!("demo-{id}"),
        egressd: egressd.to_path_buf(),
        children: Vec::new(),
    };
    fs::create_dir_all(&scene.dir)?;

    step(
        1,
        "A throwaway network namespace plays the Internet (documentation addresses, no route out)",
    );
    run_ok(Command::new("ip").args(["netns", "add", &scene.ns]))?;
    run_ok(Command::new("ip").args(["-n", &scene.ns, "link", "set", "lo", "up"]))?;
    for a in ADDRS {
        run_ok(Command::new("ip").args(["-n", &scene.ns, "addr", "add", a, "dev", "lo"]))?;
    }
    let (ready, hits) = (scene.dir.join("ready"), scene.dir.join("attacker-hits"));
    let servers = scene
        .cmd("python3")
        .arg(assets.join("servers.py"))
        .args([&ready, &hits])
        .spawn()
        .context("starting the demo servers")?;
    scene.children.push(servers);
    wait_for("the demo servers", 10, || ready.exists())?;
    println!("   model API      api.model.test      198.51.100.1:443");
    println!("   attacker       exfil.attacker.test 203.0.113.9:443");
    println!("   DNS            198.51.100.53:53");

    step(
        2,
        "egressd enforces policies/doc-summarizer.yaml on the agent's cgroup",
    );
    let rel = format!("egressd-demo.slice/doc-summarizer-{id}.service");
    let cgroup = cgroup2_root()?.join(&rel);
    fs::create_dir_all(&cgroup).context("creating the agent's cgroup")?;
    scene.cgroup = Some(cgroup.clone());
    let policy = fs::read_to_string(workspace_root().join("policies/doc-summarizer.yaml"))?
        .replace("agents.slice/doc-summarizer.service", &rel)
        .replace("dns:\n", "dns:\n  upstream: [198.51.100.53]\n");
    let policy_file = scene.dir.join("doc-summarizer.yaml");
    fs::write(&policy_file, &policy)?;
    println!(
        "{}",
        policy
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("   | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (events, log) = (
        scene.dir.join("events.jsonl"),
        scene.dir.join("egressd.log"),
    );
    let daemon = scene
        .cmd(egressd.to_str().context("egressd path is not UTF-8")?)
        .arg("run")
        .arg("--policy")
        .arg(&policy_file)
        .args(["--metrics-addr", METRICS, "--instance", &scene.instance])
        .stdout(Stdio::from(fs::File::create(&events)?))
        .stderr(Stdio::from(fs::File::create(&log)?))
        .spawn()
        .context("starting egressd run")?;
    scene.children.push(daemon);
    wait_for("egressd to enforce", 30, || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("enforcing"))
    })
    .with_context(|| fs::read_to_string(&log).unwrap_or_default())?;
    println!("   egressd is enforcing (log: {})", log.display());

    step(
        3,
        "The agent summarises a document that carries injected instructions",
    );
    // The agent runs unprivileged, from copies it can read (the checkout
    // may sit in a directory only root can enter).
    let doc = scene.dir.join("document.txt");
    fs::copy(assets.join("document.txt"), &doc)?;
    let agent_py = scene.dir.join("agent.py");
    fs::copy(assets.join("agent.py"), &agent_py)?;
    println!(
        "{}",
        fs::read_to_string(&doc)?
            .lines()
            .map(|l| format!("   > {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The agent's resolver is the demo's DNS server (its queries are
    // redirected to egressd's proxy all the same); it starts inside its cgroup.
    let resolv = scene.dir.join("resolv.conf");
    fs::write(
        &resolv,
        "nameserver 198.51.100.53\noptions attempts:1 timeout:2\n",
    )?;
    let script = format!(
        "mount --bind {} /etc/resolv.conf && echo $$ > {}/cgroup.procs && \
         exec setpriv --reuid={AGENT_UID} --regid={AGENT_UID} --clear-groups --no-new-privs \
         --inh-caps=-all /usr/bin/python3 {} {}",
        resolv.display(),
        cgroup.display(),
        agent_py.display(),
        doc.display()
    );
    println!("   the agent runs as nobody (uid {AGENT_UID}), with no capabilities, in its cgroup");
    let agent = scene
        .cmd("unshare")
        .args(["--mount", "sh", "-c", &script])
        .status()
        .context("running the agent")?;
    if !agent.success() {
        bail!("the agent failed ({agent})");
    }

    step(
        4,
        "What egressd saw: the refused lookup, the refused connect, and the attacker's name refused at the model API's address",
    );
    wait_for("the deny events", 5, || {
        fs::read_to_string(&events).is_ok_and(|e| e.lines().count() >= 3)
    })?;
    let lines = fs::read_to_string(&events)?;
    for line in lines.lines() {
        println!("   {line}");
    }
    if !lines.contains("\"qname\":\"exfil.attacker.test\"") {
        bail!("no deny event for the attacker's name");
    }
    if !lines.contains("\"daddr\":\"203.0.113.9\"") || !lines.contains("\"comm\":\"python3\"") {
        bail!("no deny event for the attacker's address");
    }
    if !lines.contains("\"reason\":\"name_not_at_address\"")
        || !lines.contains("\"name\":\"exfil.attacker.test\"")
    {
        bail!("no deny event for the attacker's name at the model API's address");
    }

    step(
        5,
        "The metrics that counted them (Prometheus, http://127.0.0.1:9469/metrics)",
    );
    let out = scene
        .cmd("curl")
        .args(["-s", &format!("http://{METRICS}/metrics")])
        .output()
        .context("scraping metrics")?;
    let metrics = String::from_utf8_lossy(&out.stdout);
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            (l.starts_with("egressd_egress_attempts_total")
                || l.starts_with("egressd_dns_queries_total"))
                && !l.ends_with(" 0")
        })
        .collect();
    for l in &counted {
        println!("   {l}");
    }
    if !counted.iter().any(|l| l.contains("verdict=\"denied\"")) {
        bail!("the denied attempt was not counted");
    }

    step(6, "And at the attacker's end");
    let received = fs::read_to_string(&hits)?;
    println!("   requests received by exfil.attacker.test: {received}");
    if received.trim() != "0" {
        bail!("the attacker received data: enforcement failed");
    }
    println!("\nThe summary never left: egressd refused to resolve the attacker's name, the");
    println!("kernel refused the connect() to its address before a packet was sent, and the");
    println!("request that named the attacker's site at the model API's own address (its");
    println!("front door serves both) was held in the kernel: that name was never answered");
    println!("with that address by this policy's DNS.");
    Ok(())
}
