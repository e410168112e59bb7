//! A throwaway network namespace with documentation addresses on its
//! loopback and no route out: whatever a broken build lets through has
//! nowhere to go.

use std::{
    fs::File,
    os::fd::{AsRawFd, RawFd},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

/// Addresses every test namespace has (all on `lo`).
pub const ADDRS: &[&str] = &[
    "198.51.100.1/32",
    "198.51.100.2/32",
    "198.51.100.3/32",
    "198.51.100.53/32",
    "203.0.113.1/32",
    "203.0.113.7/32",
    "203.0.113.9/32",
    "2001:db8::1/128",
    "2001:db8::2/128",
    "2001:db8::53/128",
];

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
    file: File,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns> {
        let name = format!(
            "egt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            file: File::open(format!("/run/netns/{name}")).context("opening the netns")?,
            name,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        for a in ADDRS {
            // nodad: an IPv6 address is usable at once, never "tentative"
            // (a listener bound in that moment failed with EADDRNOTAVAIL).
            let nodad: &[&str] = if a.contains(':') { &["nodad"] } else { &[] };
            let mut args = vec!["-n", &ns.name, "addr", "add", a, "dev", "lo"];
            args.extend_from_slice(nodad);
            ip(&args)?;
        }
        Ok(ns)
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> Result<()> {
        // SAFETY: setns on a valid namespace fd affects only this thread.
        if unsafe { libc::setns(self.fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let fd = self.fd();
        std::thread::spawn(move || {
            // SAFETY: as in `enter`.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))?
    }

    /// A command that will run inside the namespace (network only: mounts,
    /// including cgroup2 and bpffs, stay the host's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        let fd = self.fd();
        // SAFETY: only setns(2), async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
