//! Reading what a VM wrote onto its results disk (a tar of test logs, the
//! kernel log, ...) and judging it.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Result};

use super::archive::run;

/// One test binary's run.
#[derive(Debug, Default)]
pub struct FileRun {
    pub name: String,
    /// The binary's exit status (124: killed by `timeout`).
    pub rc: Option<i32>,
    pub secs: f64,
    pub passed: u64,
    pub failed: Vec<String>,
    pub ignored: u64,
    pub log: String,
}

impl FileRun {
    /// Failed: a failing test, or an exit status no test accounts for
    /// (a crash, a timeout).
    pub fn ok(&self) -> bool {
        self.rc == Some(0) && self.failed.is_empty()
    }
}

/// Everything one VM reported.
#[derive(Debug, Default)]
pub struct VmResults {
    pub uname: String,
    /// `uname -v`: Debian's upstream version is in it.
    pub version: String,
    pub lsm: String,
    pub tools_missing: Vec<String>,
    /// Guest uptime when the tests started and ended.
    pub uptime_start: f64,
    pub uptime_end: f64,
    pub files: Vec<FileRun>,
    pub dmesg: String,
}

/// Untars `image` into `dir` and reads it; `expected` are the test modules
/// the VM should have run (one it did not run is a failure).
pub fn read(image: &Path, dir: &Path, expected: &[String]) -> Result<VmResults> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    run(Command::new("tar").arg("-xf").arg(image).arg("-C").arg(dir))?;
    let text = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
    let num = |f: &str| text(f).trim().parse::<f64>().unwrap_or(0.0);
    if !dir.join("uname").is_file() {
        bail!("the results disk holds no results");
    }
    let mut r = VmResults {
        uname: text("uname").trim().to_string(),
        version: text("version").trim().to_string(),
        lsm: text("lsm").trim().to_string(),
        tools_missing: text("tools-missing")
            .split_whitespace()
            .map(String::from)
            .collect(),
        uptime_start: num("uptime-start"),
        uptime_end: num("uptime-end"),
        dmesg: text("dmesg.txt"),
        files: Vec::new(),
    };
    for name in expected {
        let log = text(&format!("tests/{name}.log"));
        let rc = text(&format!("tests/{name}.rc")).trim().parse().ok();
        let times: Vec<f64> = text(&format!("tests/{name}.time"))
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        let mut f = FileRun {
            name: name.clone(),
            rc,
            secs: match times.as_slice() {
                [a, b] => b - a,
                _ => 0.0,
            },
            ..Default::default()
        };
        count(&log, &mut f);
        f.log = log;
        r.files.push(f);
    }
    Ok(r)
}

/// The counts from libtest's closing line (`test result: ok. 3 passed; 1
/// failed; 2 ignored; ...`), and the failed tests' names from the
/// `failures:` list just before it: a test that prints while it runs
/// breaks its own `test NAME ... ok` line, never these.
fn count(log: &str, f: &mut FileRun) {
    let mut names: Vec<String> = Vec::new();
    let mut in_list = false;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => f.passed += n,
                    "ignored" => f.ignored += n,
                    _ => {}
                }
            }
            f.failed.append(&mut names);
            in_list = false;
        } else if line == "failures:" {
            // The last such list (the names) wins over the first (outputs).
            names.clear();
            in_list = true;
        } else if let Some(name) = line.strip_prefix("    ").filter(|_| in_list) {
            if !name.is_empty() && !name.contains(' ') {
                names.push(name.to_string());
            }
        }
    }
}

/// A frame of a backtrace (`  12: std::...`, `at /rustc/...`).
fn is_backtrace(line: &str) -> bool {
    let t = line.trim_start();
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    (digits > 0 && t[digits..].starts_with(": ")) || t.starts_with("at ") || t.starts_with("note: ")
}

/// The `---- NAME stdout ----` section of a failed test without its
/// backtrace: its first `max` lines (the panic and its message), then the
/// lines further down that say why the kernel refused something.
pub fn failure_excerpt(log: &str, test: &str, max: usize) -> Vec<String> {
    let head = format!("---- {test} stdout ----");
    let Some(start) = log.find(&head) else {
        return Vec::new();
    };
    let section: Vec<String> = log[start + head.len()..]
        .lines()
        .take_while(|l| !l.starts_with("---- ") && !l.starts_with("failures:"))
        .filter(|l| !l.trim().is_empty() && !is_backtrace(l) && l.trim() != "stack backtrace:")
        .map(|l| l.trim().chars().take(400).collect())
        .collect();
    let decisive = |l: &String| {
        let l = l.to_ascii_lowercase();
        ["unknown func", "invalid argument", "verifier", "error"]
            .iter()
            .any(|k| l.contains(k))
    };
    let mut out: Vec<String> = section.iter().take(max).cloned().collect();
    for l in section.iter().skip(max).filter(|l| decisive(l)).take(max) {
        if !out.contains(l) {
            out.push(l.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_the_summary_and_the_failures_list() {
        let log = "running 3 tests\n\
            \x20   indented_before_any_failure\n\
            test a ... bench: printing while it runs\n\
            ok\n\
            test b ... FAILED\n\
            test c ... ignored\n\n\
            failures:\n\n\
            ---- b stdout ----\n\
            thread 'b' panicked at x.rs:1:1:\n\
            \x20   indented_output\n\n\
            failures:\n\
            \x20   b\n\n\
            test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s\n";
        let mut f = FileRun::default();
        count(log, &mut f);
        assert_eq!((f.passed, f.ignored), (1, 1));
        assert_eq!(f.failed, vec!["b".to_string()]);
    }
}
