//! `cargo xtask <task>`: see `usage()`.

mod deb;
mod demo;
mod image;
mod layers;
mod vm;

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
  lint    module layers (ARCHITECTURE.md), rustfmt and clippy (warnings are
          errors), host crates and eBPF crate
  test    unit tests, then the root integration tests (needs root)
  demo    play the prompt-injection scenario in a throwaway namespace (needs root)
  image   egressd's container image (a static binary on an empty base), built
          with buildah without pulling anything; prints its OCI archive's
          path (needs root)
  deb     a Debian package (the static binary, systemd units, man page,
          completions, examples), checked by installing it into a
          throwaway root; prints its path
  bench   measure egressd against no enforcement and nftables; writes
          BENCHMARKS.md and bench-results.json (needs root; --smoke: tiny sizes)
  vm-test the integration tests in VMs on Debian's 5.10, 6.1 and 6.12 kernels
          (and the host's), with a shell or systemd as PID 1 (needs root;
          `cargo xtask vm-test --help` for its options)"
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

/// Totals of the `test result:` lines cargo test printed.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test ARGS`, echoing its output and adding up its results.
fn cargo_test(args: &[&str], totals: &mut Totals) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(ebpf::workspace_root())
        .arg("test")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let out = child.stdout.take().expect("piped");
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        // "ok. 3 passed; 0 failed; ..." or "FAILED. 3 passed; 1 failed; ..."
        let line = line.replacen("ok. ", "", 1).replacen("FAILED. ", "", 1);
        totals.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Where cargo writes what it builds (`CARGO_TARGET_DIR`, or `target`).
pub(crate) fn target_dir() -> PathBuf {
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

/// rustfmt and clippy with warnings as errors. The eBPF crate is linted for
/// the host target: clippy reads the same code, and no clippy exists for
/// the Debian compiler that builds it for BPF.
fn lint() -> Result<()> {
    setup::ensure()?;
    layers::check(&ebpf::workspace_root())?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "fmt",
        "--manifest-path",
        "egress-ebpf/Cargo.toml",
        "--check",
    ])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    let target = target_dir().join("ebpf-clippy");
    cargo(&[
        "clippy",
        "--manifest-path",
        "egress-ebpf/Cargo.toml",
        "--target-dir",
        target.to_str().context("target dir is not UTF-8")?,
        "--",
        "-D",
        "warnings",
    ])
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
    let mut totals = Totals::default();
    let unit = [
        "--package",
        "egress-common",
        "--package",
        "egress-userspace",
        "--package",
        "xtask",
    ];
    // The benchmark is a package of its own; bench_smoke runs it at tiny sizes.
    cargo(&["build", "--package", "egress-bench"])?;
    let result = cargo_test(&unit, &mut totals).and_then(|_| {
        env::set_var("EGRESSD_BIN", &bin);
        cargo_test(
            &[
                "--no-fail-fast",
                "--package",
                "egress-tests",
                "--",
                "--test-threads=1",
            ],
            &mut totals,
        )
    });
    // One closing line for the whole run (the plain form CI reads).
    println!(
        "\ntests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    result
}

/// Builds release binaries and runs the benchmark, writing its results to
/// the workspace root (or, with --smoke, to target/bench-smoke).
fn bench(smoke: bool) -> Result<()> {
    setup::ensure()?;
    cargo(&[
        "build",
        "--release",
        "--package",
        "egress-userspace",
        "--bin",
        "egressd",
    ])?;
    cargo(&["build", "--release", "--package", "egress-bench"])?;
    let out = if smoke {
        target_dir().join("bench-smoke")
    } else {
        ebpf::workspace_root()
    };
    let mut cmd = Command::new(target_dir().join("release/egress-bench"));
    cmd.env("EGRESSD_BIN", target_dir().join("release/egressd"))
        .arg("run")
        .arg("--out")
        .arg(&out);
    if smoke {
        cmd.arg("--smoke");
    }
    let status = cmd.status().context("running egress-bench")?;
    if !status.success() {
        bail!("egress-bench failed ({status})");
    }
    println!("results: {}", out.join("BENCHMARKS.md").display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::ensure(),
        Some("build") => build().map(|bin| println!("{}", bin.display())),
        Some("test") => test(),
        Some("lint") => lint(),
        Some("demo") => require_root("demo").and_then(|_| demo::run(&build()?)),
        Some("vm-test") if args.iter().any(|a| a == "--help" || a == "-h") => {
            println!("{}", vm::USAGE);
            Ok(())
        }
        Some("vm-test") => vm::run(&args[1..]),
        Some("image") => image::run(&target_dir()),
        Some("deb") => deb::run(&target_dir()),
        Some("bench") => {
            require_root("bench").and_then(|_| bench(args.iter().any(|a| a == "--smoke")))
        }
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
