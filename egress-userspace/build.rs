//! Builds the eBPF object (through xtask's library, so that `cargo build`
//! and `cargo xtask` build it the same way) and leaves it in OUT_DIR for
//! `include_bytes_aligned!`. Set EGRESSD_EBPF_OBJECT to use a prebuilt one.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=EGRESSD_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = match env::var_os("EGRESSD_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            for src in xtask::ebpf::sources() {
                println!("cargo:rerun-if-changed={}", src.display());
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
