//! Booting one VM with qemu: no network device (`-nic none`), no vsock,
//! the root filesystem on an emulated NVMe disk (built into Debian's cloud
//! kernels, so no initramfs), results on a raw virtio disk. KVM where it
//! can boot the kernel, TCG otherwise; a hung VM is killed.

use std::{
    fmt,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::kernels::Kernel;

/// How the guest CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The guest's init script prints this first thing.
const USERSPACE_UP: &str = "egressd-vm: userspace up";
/// What qemu prints when KVM cannot run the guest's code.
const KVM_FAILURES: &[&str] = &["KVM internal error", "emulation failure", "kvm run failed"];
/// Time a KVM guest gets to reach userspace before TCG is tried instead.
const KVM_PROBE: Duration = Duration::from_secs(60);

/// How a boot ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest powered off (its results may be on the results disk).
    PoweredOff,
    /// KVM could not run this kernel (the reason, from qemu or the clock).
    KvmFailed(String),
    /// Killed after the time limit.
    TimedOut,
    /// qemu failed (its exit status).
    QemuFailed(String),
}

pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub root_image: &'a Path,
    pub results_image: &'a Path,
    /// `init=` and anything else the lane adds to the command line.
    pub extra_cmdline: &'a str,
    pub timeout: Duration,
    pub console_log: &'a Path,
}

/// True if /dev/kvm can be opened (whether it can boot a kernel is
/// another question, answered by trying).
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn command(b: &Boot, accel: Accel) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    cmd.args(["-m", "2048", "-smp", "2", "-nographic", "-no-reboot"])
        .args(["-nic", "none", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&b.kernel.vmlinuz)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 root=/dev/nvme0n1 rw rootwait panic=-1 {}",
            b.extra_cmdline
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=root,snapshot=on",
            b.root_image.display()
        ))
        .args(["-device", "nvme,drive=root,serial=egressdroot"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=results",
            b.results_image.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=results"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

enum Event {
    Line(String),
    Closed,
}

fn forward(r: impl Read + Send + 'static, tx: mpsc::Sender<Event>) {
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(Event::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots once with `accel`, echoing the guest's progress lines.
pub fn boot(b: &Boot, accel: Accel) -> Result<Outcome> {
    let mut log = File::options()
        .create(true)
        .append(true)
        .open(b.console_log)
        .with_context(|| format!("opening {}", b.console_log.display()))?;
    writeln!(log, "==== qemu, {accel} ====")?;
    let mut child = command(b, accel)
        .spawn()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel();
    forward(child.stdout.take().expect("piped"), tx.clone());
    forward(child.stderr.take().expect("piped"), tx);
    let started = Instant::now();
    let mut up = false;
    let mut last = String::new();
    let mut open = 2;
    while open > 0 {
        let waited = started.elapsed();
        if waited > b.timeout {
            kill(&mut child);
            writeln!(log, "==== killed after {} s ====", waited.as_secs())?;
            return Ok(Outcome::TimedOut);
        }
        if accel == Accel::Kvm && !up && waited > KVM_PROBE {
            kill(&mut child);
            return Ok(Outcome::KvmFailed(format!(
                "no userspace after {} s",
                KVM_PROBE.as_secs()
            )));
        }
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Event::Line(line)) => {
                // Serial lines end in \r\n.
                let line = line.trim_end_matches('\r');
                writeln!(log, "{line}")?;
                if let Some(i) = line.find("egressd-vm: ") {
                    println!("  [{:>5.0} s] {}", waited.as_secs_f64(), &line[i..]);
                }
                if line.contains(USERSPACE_UP) {
                    up = true;
                }
                last = line.to_string();
                if accel == Accel::Kvm && !up {
                    if let Some(f) = KVM_FAILURES.iter().find(|f| line.contains(**f)) {
                        kill(&mut child);
                        return Ok(Outcome::KvmFailed(format!("qemu: {f}")));
                    }
                }
            }
            Ok(Event::Closed) => open -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    if accel == Accel::Kvm && !up {
        // Under a hypervisor that cannot run it, qemu may also abort
        // (an MSR it cannot set) or the guest stop before userspace.
        return Ok(Outcome::KvmFailed(format!("qemu ended ({status}): {last}")));
    }
    if status.success() {
        Ok(Outcome::PoweredOff)
    } else {
        Ok(Outcome::QemuFailed(status.to_string()))
    }
}
