//! The binaries a VM runs: egressd, the integration test binary (found
//! from cargo's JSON messages) with the tests it holds, module by module,
//! and the helper binaries the tests start. The list of the last build is
//! kept in target/vm/binaries so that `--no-build` can run them again
//! without cargo.

use std::{
    env, fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use xtask::ebpf;

/// What one build produced.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub egressd: PathBuf,
    /// Helper binaries (egress-tests' probe, egress-bench): the tests name
    /// them by the absolute path cargo built them at.
    pub helpers: Vec<PathBuf>,
    /// The integration test binary's modules: (module name, binary).
    pub tests: Vec<(String, PathBuf)>,
    /// Every test the binary holds, by its full name (`module::test`).
    pub cases: Vec<String>,
}

/// The tests `binary` holds (`--list`: it runs none), by full name.
fn list_cases(binary: &Path) -> Result<Vec<String>> {
    let out = Command::new(binary)
        .args(["--list", "--format", "terse"])
        .output()
        .with_context(|| format!("listing the tests of {}", binary.display()))?;
    if !out.status.success() {
        bail!("{} --list failed ({})", binary.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(String::from)
        .collect())
}

/// One (module, binary) pair per module that holds a test.
fn modules(binary: &Path, cases: &[String]) -> Vec<(String, PathBuf)> {
    let mut names: Vec<&str> = cases
        .iter()
        .filter_map(|c| c.split_once("::"))
        .map(|(m, _)| m)
        .collect();
    names.dedup();
    names
        .into_iter()
        .map(|m| (m.to_string(), binary.to_path_buf()))
        .collect()
}

/// Runs cargo with `--message-format=json`; returns the executables of
/// the artifacts whose target kind is `kind` as (target name, path).
fn cargo_executables(args: &[&str], kind: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut child = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(ebpf::workspace_root())
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let mut found = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let msg: serde_json::Value = match serde_json::from_str(&line?) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let kinds = msg["target"]["kind"].as_array();
        if !kinds.is_some_and(|k| k.iter().any(|x| x == kind)) {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(found)
}

/// Builds egressd (debug), egress-tests' binaries and its test binaries.
pub fn build() -> Result<Binaries> {
    let egressd = cargo_executables(
        &["build", "--package", "egress-userspace", "--bin", "egressd"],
        "bin",
    )?
    .into_iter()
    .find(|(n, _)| n == "egressd")
    .context("cargo built no egressd")?
    .1;
    let helpers = cargo_executables(
        &[
            "build",
            "--package",
            "egress-tests",
            "--package",
            "egress-bench",
            "--bins",
        ],
        "bin",
    )?
    .into_iter()
    .map(|(_, p)| p)
    .collect();
    let binary = cargo_executables(
        &["test", "--package", "egress-tests", "--tests", "--no-run"],
        "test",
    )?
    .into_iter()
    .find(|(n, _)| n == "integration")
    .context("cargo test --no-run built no integration test binary")?
    .1;
    let cases = list_cases(&binary)?;
    Ok(Binaries {
        egressd,
        helpers,
        tests: modules(&binary, &cases),
        cases,
    })
}

/// Writes the list: `egressd PATH`, `helper PATH`, `test NAME PATH`.
pub fn save(b: &Binaries, file: &Path) -> Result<()> {
    let mut text = format!("egressd\t{}\n", b.egressd.display());
    for h in &b.helpers {
        text.push_str(&format!("helper\t{}\n", h.display()));
    }
    for (n, p) in &b.tests {
        text.push_str(&format!("test\t{n}\t{}\n", p.display()));
    }
    fs::write(file, text).with_context(|| format!("writing {}", file.display()))
}

/// Reads a list `save` wrote, checking that every binary is still there.
pub fn load(file: &Path) -> Result<Binaries> {
    let text = fs::read_to_string(file)
        .with_context(|| format!("{} (run once without --no-build)", file.display()))?;
    let mut b = Binaries {
        egressd: PathBuf::new(),
        helpers: Vec::new(),
        tests: Vec::new(),
        cases: Vec::new(),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["egressd", p] => b.egressd = PathBuf::from(p),
            ["helper", p] => b.helpers.push(PathBuf::from(p)),
            ["test", n, p] => b.tests.push((n.to_string(), PathBuf::from(p))),
            _ => bail!("{}: unexpected line {line:?}", file.display()),
        }
    }
    let all = std::iter::once(&b.egressd)
        .chain(&b.helpers)
        .chain(b.tests.iter().map(|(_, p)| p));
    for p in all {
        if !p.is_file() {
            bail!("{} is gone: build again (drop --no-build)", p.display());
        }
    }
    let binary = b
        .tests
        .first()
        .context("no integration test binary listed")?
        .1
        .clone();
    b.cases = list_cases(&binary)?;
    Ok(b)
}
