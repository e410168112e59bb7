//! Building the eBPF object from `egress-ebpf`.
//!
//! Two toolchains can build it (see docs/development.md, "Building"):
//! 1. the usual aya way: a rustup `nightly` with `rust-src`, and `bpf-linker`;
//! 2. Debian's `rustc-web` with its source (`rust-web-src`) and `bpf-linker`
//!    built against Debian's LLVM, with `RUSTC_BOOTSTRAP=1`.
//!
//! The first is preferred when present. When neither is, the error says what
//! to install (`cargo xtask setup` installs the second on Debian).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Name of the eBPF crate's binary, i.e. of the object it produces.
pub const OBJECT_NAME: &str = "egress";
const TARGET: &str = "bpfel-unknown-none";
/// Debian's rustc-web compiler.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// A compiler able to build `core` for the BPF target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// `rustup run nightly` with the `rust-src` component.
    RustupNightly,
    /// Debian's rustc-web and rust-web-src.
    DebianRustcWeb,
}

/// The workspace root (the directory holding `egress-ebpf`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn has_core_source(rustc: &mut Command) -> bool {
    let Ok(out) = rustc.arg("--print").arg("sysroot").output() else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

/// Finds `bpf-linker` on PATH or in cargo's bin directory.
pub fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// Which toolchain can build the object here, if any (bpf-linker aside).
pub fn detect_toolchain() -> Option<Toolchain> {
    let mut nightly = Command::new("rustup");
    nightly.args(["run", "nightly", "rustc"]);
    clean_env(&mut nightly);
    if has_core_source(&mut nightly) {
        return Some(Toolchain::RustupNightly);
    }
    if Path::new(DEBIAN_RUSTC).is_file() && has_core_source(&mut Command::new(DEBIAN_RUSTC)) {
        return Some(Toolchain::DebianRustcWeb);
    }
    None
}

/// What to install when no toolchain is found.
pub const INSTALL_HINT: &str = "\
no compiler here can build the eBPF object. Either
  - rustup toolchain install nightly --component rust-src, then
    cargo install bpf-linker
or, on Debian 12 and later,
  - apt-get install rustc-web rust-web-src llvm-22-dev, then
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --locked \\
        --no-default-features --features llvm-22
(`cargo xtask setup` does the second as root). Or set EGRESSD_EBPF_OBJECT to
a prebuilt object.";

/// Removes what an outer cargo (a build script's, or `cargo run`'s) set, so
/// that the nested build is configured only by what we pass.
fn clean_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTUP_TOOLCHAIN"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "CARGO"
            );
        if outer {
            cmd.env_remove(key);
        }
    }
}

/// Builds the eBPF object into `target_dir` and returns its path.
pub fn build(target_dir: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let crate_dir = root.join("egress-ebpf");
    let toolchain = detect_toolchain().with_context(|| INSTALL_HINT.to_string())?;
    let linker = find_bpf_linker()
        .with_context(|| format!("bpf-linker is not installed.\n{INSTALL_HINT}"))?;
    let mut cmd = match toolchain {
        Toolchain::RustupNightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
        Toolchain::DebianRustcWeb => {
            let mut c = Command::new("cargo");
            c.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            c
        }
    };
    clean_env(&mut cmd);
    if let Toolchain::DebianRustcWeb = toolchain {
        cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
    }
    // bpf-linker is found through PATH by rustc.
    let mut path = vec![linker.parent().unwrap().to_path_buf()];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    cmd.env("PATH", env::join_paths(path)?);
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir);
    let status = cmd
        .status()
        .with_context(|| format!("running cargo for {} ({toolchain:?})", crate_dir.display()))?;
    if !status.success() {
        bail!("building the eBPF object with {toolchain:?} failed ({status})");
    }
    let object = target_dir.join(TARGET).join("release").join(OBJECT_NAME);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}

/// Source paths the object depends on (for `cargo:rerun-if-changed`).
pub fn sources() -> Vec<PathBuf> {
    let root = workspace_root();
    vec![
        root.join("egress-ebpf/src"),
        root.join("egress-ebpf/Cargo.toml"),
        root.join("egress-ebpf/Cargo.lock"),
        root.join("egress-common/src"),
        root.join("egress-common/Cargo.toml"),
    ]
}
