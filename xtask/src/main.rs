//! `cargo xtask <task>`: see `usage()`.

mod demo;

use std::{
    env,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use xtask::{ebpf, setup};

fn usage() -> &'static str {
    "usage: cargo xtask <task>
tasks:
  setup   install what the build and the tests need (Debian, as root)
  build   build the eBPF object and the egressd binary
  test    unit tests, then the root integration tests (needs root)
  demo    play the prompt-injection scenario in a throwaway namespace (needs root)"
}

fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(ebpf::workspace_root())
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ebpf::workspace_root().join("target"))
}

/// Builds everything and returns the path of the egressd binary.
fn build() -> Result<PathBuf> {
    setup::ensure()?;
    cargo(&["build", "--package", "egress-userspace", "--bin", "egressd"])?;
    Ok(target_dir().join("debug/egressd"))
}

fn require_root(task: &str) -> Result<()> {
    if !setup::is_root() {
        bail!("`cargo xtask {task}` loads BPF programs and creates cgroups and network namespaces: run it as root");
    }
    Ok(())
}

fn test() -> Result<()> {
    require_root("test")?;
    let bin = build()?;
    cargo(&[
        "test",
        "--package",
        "egress-common",
        "--package",
        "egress-userspace",
        "--package",
        "xtask",
    ])?;
    env::set_var("EGRESSD_BIN", &bin);
    cargo(&[
        "test",
        "--package",
        "egress-tests",
        "--",
        "--test-threads=1",
    ])
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::ensure(),
        Some("build") => build().map(|bin| println!("{}", bin.display())),
        Some("test") => test(),
        Some("demo") => require_root("demo").and_then(|_| demo::run(&build()?)),
        _ => {
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
