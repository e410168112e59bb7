//! Builds the eBPF object (through xtask's library, so that `cargo build`
//! and `cargo xtask` build it the same way) and leaves it in OUT_DIR for
//! `include_bytes_aligned!`. Set EGRESSD_EBPF_OBJECT to use a prebuilt one.
//!
//! Where no eBPF toolchain is installed, it leaves an empty object and a
//! warning instead, so that `cargo check` and `cargo clippy` run anywhere;
//! such an egressd refuses to start (`KernelError::NoObject`), and the next
//! build looks for the toolchain again.
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    commit();
    println!("cargo:rerun-if-env-changed=EGRESSD_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = match env::var_os("EGRESSD_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            for src in xtask::ebpf::sources() {
                println!("cargo:rerun-if-changed={}", src.display());
            }
            if xtask::ebpf::detect_toolchain().is_none() || xtask::ebpf::find_bpf_linker().is_none()
            {
                println!(
                    "cargo:warning=no eBPF toolchain: egressd is built without its kernel programs \
                     and will refuse to start (`cargo xtask setup`, then build again)"
                );
                // A path that never exists: cargo runs this script again on
                // every build, so an installed toolchain is found.
                println!(
                    "cargo:rerun-if-changed={}",
                    out.join("toolchain-found").display()
                );
                fs::write(out.join("egress.bpf.o"), b"").expect("writing to OUT_DIR");
                return;
            }
            // A target directory of its own: the outer cargo holds the lock on ours.
            let target = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| xtask::ebpf::workspace_root().join("target"))
                .join("ebpf");
            match xtask::ebpf::build(&target) {
                Ok(object) => object,
                Err(e) => panic!("cannot build the eBPF object: {e:#}"),
            }
        }
    };
    fs::copy(&object, out.join("egress.bpf.o"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}

/// The commit egressd is built from, for `egressd --version` and
/// `egressd_build_info` (EGRESSD_COMMIT; `unknown` outside a git checkout).
/// Built again when HEAD moves.
fn commit() {
    let root = xtask::ebpf::workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EGRESSD_COMMIT={commit}");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("packed-refs").display()
        );
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", dir.join(head).display());
        }
    }
}
