//! Judging one lane's run and printing it, and the closing summary whose
//! last line names each kernel and lane with pass or fail.

use std::{fs, path::Path, time::Duration};

use anyhow::Result;

use super::{
    kernels::Kernel,
    plan::Lane,
    qemu::{Accel, Outcome},
    results::{failure_excerpt, VmResults},
};

#[derive(Debug)]
pub enum Verdict {
    Pass,
    /// How many tests (or test binaries that crashed or hung) failed.
    Fail(usize),
    /// Not run, and why.
    Skipped(String),
}

/// One kernel in one lane.
pub struct LaneReport {
    label: String,
    release: String,
    lane: Lane,
    accel: Option<Accel>,
    secs: f64,
    pub verdict: Verdict,
    passed: u64,
    ignored: u64,
    /// What to print under the headline: timings, failures, notes.
    details: Vec<String>,
}

impl LaneReport {
    pub fn skipped(label: &str, lane: Lane, why: String) -> LaneReport {
        let release = if label == "host" {
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|r| r.trim().to_string())
                .unwrap_or_else(|_| label.to_string())
        } else {
            label.to_string()
        };
        LaneReport {
            label: label.into(),
            release,
            lane,
            accel: None,
            secs: 0.0,
            verdict: Verdict::Skipped(why),
            passed: 0,
            ignored: 0,
            details: Vec::new(),
        }
    }

    /// The lane could not be run at all (no image, qemu missing, ...).
    pub fn error(kernel: &Kernel, lane: Lane, why: String) -> LaneReport {
        LaneReport {
            label: kernel.label.clone(),
            release: kernel.release.clone(),
            lane,
            accel: None,
            secs: 0.0,
            verdict: Verdict::Fail(1),
            passed: 0,
            ignored: 0,
            details: vec![format!("error: {why}")],
        }
    }

    fn failed_count(&self) -> usize {
        match self.verdict {
            Verdict::Fail(n) => n,
            _ => 0,
        }
    }

    /// The headline and the details.
    pub fn print(&self) {
        let verdict = match &self.verdict {
            Verdict::Pass => "PASS".to_string(),
            Verdict::Fail(n) => format!("FAIL ({n})"),
            Verdict::Skipped(why) => format!("SKIPPED: {why}"),
        };
        println!(
            "\n== {} ({}), {} lane, {}: {verdict}; {} passed, {} ignored, {:.0} s ==",
            self.release,
            self.label,
            self.lane,
            self.accel.map(|a| a.to_string()).unwrap_or("-".into()),
            self.passed,
            self.ignored,
            self.secs
        );
        for d in &self.details {
            println!("{d}");
        }
    }

    /// `6.1.0-57-cloud-amd64 direct tcg pass`, as the last line has it.
    fn short(&self) -> String {
        let accel = self.accel.map(|a| format!(" {a}")).unwrap_or_default();
        let verdict = match &self.verdict {
            Verdict::Pass => "pass".to_string(),
            Verdict::Fail(n) => format!("FAIL({n})"),
            Verdict::Skipped(_) => "SKIPPED".to_string(),
        };
        format!("{} {}{accel} {verdict}", self.release, self.lane)
    }
}

fn console_tail(console: &Path, n: usize) -> Vec<String> {
    let text = fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect()
}

/// Lines of egressd's that say why the kernel refused a program.
fn verifier_lines(log: &str) -> Vec<String> {
    let mut out: Vec<String> = log
        .lines()
        .filter(|l| {
            l.contains("unknown func")
                || l.contains("loading program")
                || l.contains("invalid func")
                || l.contains("not supported")
                || l.contains("program of this type cannot use helper")
        })
        .map(|l| l.trim().chars().take(300).collect())
        .collect();
    out.sort();
    out.dedup();
    out.truncate(6);
    out
}

/// "egressd could not load `PROG`" when that is why a test failed.
fn load_failure(excerpt: &[String]) -> Option<String> {
    excerpt.iter().find_map(|l| {
        let i = l.find("loading program `")?;
        let rest = &l[i + "loading program `".len()..];
        let prog = &rest[..rest.find('`')?];
        Some(format!("egressd could not load `{prog}`"))
    })
}

pub fn judge(
    kernel: &Kernel,
    lane: Lane,
    accel: Accel,
    took: Duration,
    outcome: Outcome,
    res: Result<VmResults>,
    console: &Path,
) -> LaneReport {
    let mut r = LaneReport {
        label: kernel.label.clone(),
        release: kernel.release.clone(),
        lane,
        accel: Some(accel),
        secs: took.as_secs_f64(),
        verdict: Verdict::Pass,
        passed: 0,
        ignored: 0,
        details: Vec::new(),
    };
    let res = match (outcome, res) {
        (Outcome::PoweredOff, Ok(res)) => res,
        (outcome, res) => {
            let why = match outcome {
                Outcome::TimedOut => format!("the VM was killed after {:.0} s", r.secs),
                Outcome::QemuFailed(s) => format!("qemu failed ({s})"),
                Outcome::KvmFailed(s) => format!("KVM failed ({s})"),
                Outcome::PoweredOff => "the VM powered off".into(),
            };
            let res_why = res.err().map(|e| format!(": {e:#}")).unwrap_or_default();
            r.verdict = Verdict::Fail(1);
            r.details.push(format!(
                "  {why}{res_why}; console ({}):",
                console.display()
            ));
            r.details.extend(console_tail(console, 25));
            return r;
        }
    };
    let mut failed = 0;
    let mut causes: Vec<String> = Vec::new();
    let mut shown: Vec<String> = Vec::new();
    r.details.push(format!(
        "  kernel {} {} (LSMs: {}); tests began at {:.1} s of guest uptime, ended at {:.0} s",
        res.uname,
        res.version,
        if res.lsm.is_empty() { "?" } else { &res.lsm },
        res.uptime_start,
        res.uptime_end
    ));
    if !res.tools_missing.is_empty() {
        r.details.push(format!(
            "  tools missing in the VM: {} (tests that need them fail)",
            res.tools_missing.join(" ")
        ));
    }
    for f in &res.files {
        r.passed += f.passed;
        r.ignored += f.ignored;
        let state = match f.rc {
            None => "did not run".to_string(),
            Some(124) | Some(137) => "TIMED OUT".to_string(),
            Some(0) => "ok".to_string(),
            Some(rc) => format!("exit {rc}"),
        };
        r.details.push(format!(
            "  {:<16} {:>7.1} s  {:>3} passed {:>3} failed  {state}",
            f.name,
            f.secs,
            f.passed,
            f.failed.len()
        ));
    }
    for f in res.files.iter().filter(|f| !f.ok()) {
        if f.failed.is_empty() {
            failed += 1;
            r.details.push(format!(
                "  FAILED {} (the binary, exit {:?}); its last lines:",
                f.name, f.rc
            ));
            let lines: Vec<&str> = f.log.lines().collect();
            for l in &lines[lines.len().saturating_sub(12)..] {
                r.details.push(format!("    | {l}"));
            }
        }
        for t in &f.failed {
            failed += 1;
            let excerpt = failure_excerpt(&f.log, t, 10);
            // Many tests fail for one reason (a program the kernel
            // refuses): its lines are printed once.
            let cause = load_failure(&excerpt);
            if let Some(c) = cause.as_ref().filter(|c| causes.contains(*c)) {
                r.details
                    .push(format!("  FAILED {}::{t} (as above: {c})", f.name));
                continue;
            }
            r.details.push(format!("  FAILED {}::{t}", f.name));
            for l in excerpt {
                r.details.push(format!("    | {l}"));
            }
            causes.extend(cause);
        }
        for l in verifier_lines(&f.log) {
            if !shown.contains(&l) {
                r.details
                    .push(format!("    {} verifier/loader: {l}", f.name));
                shown.push(l);
            }
        }
    }
    let alarms: Vec<&str> = res
        .dmesg
        .lines()
        .filter(|l| {
            ["BUG:", "WARNING:", "Oops", "Kernel panic"]
                .iter()
                .any(|k| l.contains(k))
        })
        .take(8)
        .collect();
    for l in alarms {
        r.details.push(format!("  kernel log: {l}"));
    }
    if failed > 0 {
        r.verdict = Verdict::Fail(failed);
    }
    r
}

/// The closing summary; its last line names every kernel and lane.
pub fn summary(reports: &[LaneReport]) {
    println!("\nvm-test summary:");
    for r in reports {
        let time = if r.accel.is_some() {
            format!(" in {:.0} s", r.secs)
        } else {
            String::new()
        };
        let why = match &r.verdict {
            Verdict::Skipped(w) => format!(" ({w})"),
            _ => String::new(),
        };
        println!("  {}{time}{why}", r.short());
    }
    let failed: usize = reports.iter().map(LaneReport::failed_count).sum();
    let passed: u64 = reports.iter().map(|r| r.passed).sum();
    let ignored: u64 = reports.iter().map(|r| r.ignored).sum();
    println!("vm-test: {passed} passed, {failed} failed, {ignored} skipped");
    let line: Vec<String> = reports.iter().map(LaneReport::short).collect();
    println!("vm-test: {}", line.join(" · "));
}
