//! The VM's root filesystem: a minimal Debian 12 made by debootstrap with
//! the tools the integration tests run, cached under target/vm/ and keyed
//! by a hash of what went into it.

use std::{fs, path::Path, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result};

use super::archive::{run, Mirror};

const SUITE: &str = "bookworm";

/// Packages on top of minbase, and why. (xtask/src/setup.rs installs the
/// same tools on a host; promtool and kubernetes-validate are left out: the
/// tests that need them only check files, see `super::plan`.)
pub const PACKAGES: &[&str] = &[
    "iproute2",     // ip: namespaces, veth pairs, addresses
    "curl",         // an agent's HTTP client
    "python3",      // agents, raw and ping sockets
    "openssl",      // the front door's certificate, s_client (names.rs)
    "dnsutils",     // dig
    "nftables",     // nft, for the comparisons and the bench
    "iputils-ping", // ping
    "systemd",      // systemd-analyze, and PID 1 in the systemd lane
    "systemd-sysv", // /sbin/init and friends
    "procps",       // ps, sysctl
    "util-linux",   // unshare, mount
    "kmod",         // modprobe (veth, nf_tables and virtio are modules)
    "nodejs",       // a client in dns.rs
    "podman",       // runs egressd's image beside a container (container.rs)
    "crun",         // podman's runtime
    "netavark", // containers-common's container-network-stack (virtual: debootstrap names a real one)
];

/// Commands the init script checks for and reports when missing.
pub const TOOLS: &[&str] = &[
    "ip",
    "curl",
    "python3",
    "openssl",
    "dig",
    "nft",
    "ping",
    "systemd-analyze",
    "modprobe",
    "unshare",
    "tar",
    "timeout",
    "node",
    "getent",
    "podman",
];

/// FNV-1a, 64 bits: a stable key (std's hasher may change between Rust
/// releases).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cached root filesystem directory, made first if missing.
pub fn ensure(mirror: &Mirror, vm_dir: &Path) -> Result<PathBuf> {
    let key = fnv1a(format!("{SUITE} minbase {}", PACKAGES.join(",")).as_bytes());
    let dir = vm_dir.join(format!("rootfs-{SUITE}-{key:016x}"));
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    let partial = vm_dir.join(format!("rootfs-{SUITE}-{key:016x}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(vm_dir)?;
    eprintln!(
        "vm-test: debootstrap {SUITE} (minbase + {}) into {}",
        PACKAGES.join(","),
        dir.display()
    );
    let started = Instant::now();
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", "--merged-usr"])
        .arg(format!("--include={}", PACKAGES.join(",")));
    if let Some(k) = &mirror.signed_by {
        cmd.arg(format!("--keyring={k}"));
    }
    cmd.arg(SUITE).arg(&partial).arg(&mirror.archive);
    run(&mut cmd).context("debootstrap (Debian package debootstrap)")?;
    // What the image needs no copy of.
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for e in fs::read_dir(partial.join(d))?.flatten() {
            if e.path().is_file() {
                fs::remove_file(e.path())?;
            }
        }
    }
    fs::write(partial.join("etc/hostname"), "egressd-vm\n")?;
    fs::write(partial.join(".complete"), PACKAGES.join("\n"))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)?;
    // Root filesystems of other package lists are stale now.
    for e in fs::read_dir(vm_dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("rootfs-{SUITE}-")) && e.path() != dir {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    eprintln!(
        "vm-test: root filesystem made in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}
