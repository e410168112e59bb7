//! Installing what the build, the tests and the demo need, on a fresh
//! Debian machine. Nothing is installed that is already there.

use std::{env, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::ebpf;

/// Commands the tests and the demo run, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("python3", "python3"),
    // The test front door's certificate, and a ClientHello without a name.
    ("openssl", "openssl"),
    ("dig", "dnsutils"),
    ("nft", "nftables"),
    ("ping", "iputils-ping"),
    ("systemd-analyze", "systemd"),
    ("promtool", "prometheus"),
    // musl's resolver, as Alpine-based agent images have it.
    ("musl-gcc", "musl-tools"),
    // `kubectl kustomize deploy/kubernetes`, checked by a test.
    ("kubectl", "kubectl"),
];

/// True if `cmd` is an executable on PATH.
pub fn on_path(cmd: &str) -> bool {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Installs the eBPF toolchain and the test tools that are missing.
pub fn ensure() -> Result<()> {
    let mut packages: Vec<&str> = Vec::new();
    if ebpf::detect_toolchain().is_none() {
        packages.extend(["rustc-web", "rust-web-src"]);
    }
    let need_linker = ebpf::find_bpf_linker().is_none();
    if need_linker && !Path::new("/usr/lib/llvm-22/bin/llvm-config").is_file() {
        packages.push("llvm-22-dev");
    }
    for (cmd, pkg) in TOOLS {
        if !on_path(cmd) && !Path::new("/usr/sbin").join(cmd).is_file() {
            packages.push(pkg);
        }
    }
    if !on_path("kubernetes-validate") {
        // Validates the Kubernetes manifests against the API's schemas.
        let pip = if on_path("pip3") { "pip3" } else { "pip" };
        eprintln!("xtask: installing kubernetes-validate (PyPI)");
        run(Command::new(pip).args(["install", "--quiet", "kubernetes-validate"]))?;
    }
    let python_has = |module: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !python_has("cloudcoil.models.prometheus_operator") {
        // The Prometheus Operator's models (from its CRDs), to validate the
        // monitoring component's objects against.
        eprintln!("xtask: installing cloudcoil-models-prometheus-operator (PyPI)");
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "cloudcoil-models-prometheus-operator",
        ]))?;
    }
    if !packages.is_empty() {
        if !is_root() || !on_path("apt-get") {
            bail!(
                "missing packages: {}. Install them (Debian: apt-get install {}), then retry.",
                packages.join(" "),
                packages.join(" ")
            );
        }
        eprintln!("xtask: installing {}", packages.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages))?;
    }
    if need_linker {
        eprintln!("xtask: building bpf-linker against Debian's LLVM 22");
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .env("PATH", path)
            .args(["install", "bpf-linker", "--locked", "--no-default-features"])
            .args(["--features", "llvm-22"]))?;
    }
    Ok(())
}
