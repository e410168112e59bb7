//! `cargo xtask vm-test`: the integration tests on the kernels people run
//! (Debian's 5.10, 6.1 and 6.12, and this host's if its image is on disk),
//! each booted under qemu with no network device, in two lanes: a shell
//! script as PID 1 ("direct"), and systemd as PID 1 ("systemd").
//!
//! See `usage` for the options. Everything it downloads or makes is kept
//! under target/vm/.

mod archive;
mod binaries;
mod image;
mod kernels;
mod plan;
mod qemu;
mod report;
mod results;
mod rootfs;

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xtask::setup;

use self::{
    kernels::Kernel,
    plan::{Lane, Plan},
    qemu::{Accel, Outcome},
    report::{LaneReport, Verdict},
};

pub const USAGE: &str = "usage: cargo xtask vm-test [options]
  --kernel K      5.10, 6.1, 6.12 or host; repeat or comma-separate (default: all)
  --lane L        direct or systemd; repeat or comma-separate (default: both)
  --filter TEXT   run only tests whose name contains TEXT
  --files F       only the test modules tests/tests/integration/F.rs; repeat
                  or comma-separate
  --accel A       auto (KVM if it boots the kernel, else TCG), kvm or tcg
  --timeout MIN   minutes one VM may take before it is killed (default 90)
  --no-build      use the binaries of the last vm-test build";

/// Parsed options.
struct Options {
    kernels: Vec<String>,
    lanes: Vec<Lane>,
    filter: Option<String>,
    files: Vec<String>,
    accel: Option<Accel>,
    timeout: Duration,
    build: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        kernels: Vec::new(),
        lanes: Vec::new(),
        filter: None,
        files: Vec::new(),
        accel: None,
        timeout: Duration::from_secs(90 * 60),
        build: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => o
                .kernels
                .extend(value()?.split(',').map(|k| k.trim().to_string())),
            "--lane" => {
                for l in value()?.split(',') {
                    o.lanes.push(match l.trim() {
                        "direct" => Lane::Direct,
                        "systemd" => Lane::Systemd,
                        other => bail!("unknown lane {other:?} (direct or systemd)"),
                    });
                }
            }
            "--filter" => o.filter = Some(value()?.clone()),
            "--files" => o
                .files
                .extend(value()?.split(',').map(|f| f.trim().to_string())),
            "--accel" => {
                o.accel = match value()?.as_str() {
                    "auto" => None,
                    "kvm" => Some(Accel::Kvm),
                    "tcg" => Some(Accel::Tcg),
                    other => bail!("unknown accel {other:?} (auto, kvm or tcg)"),
                }
            }
            "--timeout" => {
                let min: u64 = value()?.parse().context("--timeout takes minutes")?;
                o.timeout = Duration::from_secs(min * 60);
            }
            "--no-build" => o.build = false,
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let known = ["5.10", "6.1", "6.12", "host"];
    if let Some(k) = o.kernels.iter().find(|k| !known.contains(&k.as_str())) {
        bail!("unknown kernel {k:?} (one of {})", known.join(", "));
    }
    if o.kernels.is_empty() {
        o.kernels = known.iter().map(|k| k.to_string()).collect();
    }
    if o.lanes.is_empty() {
        o.lanes = vec![Lane::Direct, Lane::Systemd];
    }
    Ok(o)
}

/// Host commands vm-test runs, and the Debian package of each.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("dpkg-deb", "dpkg"),
    ("depmod", "kmod"),
    ("tar", "tar"),
];

fn ensure_host_tools() -> Result<()> {
    let missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(cmd, _)| !setup::on_path(cmd) && !Path::new("/usr/sbin").join(cmd).is_file())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("vm-test: installing {}", missing.join(" "));
    archive::run(Command::new("apt-get").args(["update", "-qq"]))?;
    archive::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    if !setup::is_root() {
        bail!("`cargo xtask vm-test` runs debootstrap and mkfs: run it as root");
    }
    ensure_host_tools()?;
    let vm_dir = crate::target_dir().join("vm");
    fs::create_dir_all(&vm_dir)?;
    let list = vm_dir.join("binaries");
    let bins = if o.build {
        setup::ensure()?;
        let b = binaries::build()?;
        binaries::save(&b, &list)?;
        b
    } else {
        binaries::load(&list)?
    };
    if let Some(f) = o
        .files
        .iter()
        .find(|f| !bins.tests.iter().any(|(n, _)| n == *f))
    {
        let known: Vec<&str> = bins.tests.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "--files: no test module {f:?} (one of {})",
            known.join(", ")
        );
    }
    let plan = Plan {
        filter: o.filter.clone(),
        files: o.files.clone(),
        test_timeout: Duration::from_secs(20 * 60),
    };
    for e in plan::EXCLUDED {
        println!(
            "vm-test: excluded {}{}: {}",
            e.file,
            e.test.map(|t| format!("::{t}")).unwrap_or_default(),
            e.why
        );
    }
    let mirror = archive::host_mirror()?;
    let rootfs = rootfs::ensure(&mirror, &vm_dir)?;

    let mut reports = Vec::new();
    for label in &o.kernels {
        let kernel = match fetch_kernel(label, &mirror, &vm_dir) {
            Ok(k) => k,
            Err(e) => {
                println!("vm-test: SKIPPED kernel {label}: {e:#}");
                for &lane in &o.lanes {
                    reports.push(LaneReport::skipped(label, lane, format!("{e:#}")));
                }
                continue;
            }
        };
        for &lane in &o.lanes {
            let r = run_lane(&kernel, lane, &bins, &plan, &rootfs, &vm_dir, &o)
                .unwrap_or_else(|e| LaneReport::error(&kernel, lane, format!("{e:#}")));
            r.print();
            reports.push(r);
        }
    }
    report::summary(&reports);
    if reports
        .iter()
        .any(|r| matches!(r.verdict, Verdict::Fail(_)))
    {
        bail!("vm-test failed");
    }
    Ok(())
}

fn fetch_kernel(label: &str, mirror: &archive::Mirror, vm_dir: &Path) -> Result<Kernel> {
    if label == "host" {
        return kernels::host();
    }
    let series = kernels::DEBIAN
        .iter()
        .find(|s| s.label == label)
        .context("known kernel")?;
    kernels::fetch(series, mirror, vm_dir)
}

/// The accelerators to try, in order: KVM first, unless KVM failed to boot
/// this kernel before on this machine (`memo`, a file under target/vm
/// holding qemu's reason).
fn accels(o: &Options, memo: &Path) -> Vec<Accel> {
    match o.accel {
        Some(a) => vec![a],
        None if qemu::kvm_available() => match fs::read_to_string(memo) {
            Ok(why) => {
                println!(
                    "vm-test: KVM could not boot this kernel before ({}; {}): TCG",
                    why.trim(),
                    memo.display()
                );
                vec![Accel::Tcg]
            }
            Err(_) => vec![Accel::Kvm, Accel::Tcg],
        },
        None => vec![Accel::Tcg],
    }
}

fn run_lane(
    kernel: &Kernel,
    lane: Lane,
    bins: &binaries::Binaries,
    plan: &Plan,
    rootfs: &Path,
    vm_dir: &Path,
    o: &Options,
) -> Result<LaneReport> {
    let out = vm_dir
        .join("results")
        .join(format!("{}-{lane}", kernel.label));
    fs::create_dir_all(&out)?;
    let work = vm_dir.join("run");
    let root_image = work.join("root.img");
    let results_image = work.join("results.img");
    let console = out.join("console.log");
    let _ = fs::remove_file(&console);
    println!(
        "\nvm-test: {} ({}), {lane} lane: making the image",
        kernel.label, kernel.release
    );
    let t = Instant::now();
    image::make(rootfs, kernel, bins, plan, lane, &work, &root_image)?;
    println!("vm-test: image made in {:.0} s", t.elapsed().as_secs_f64());
    let cmdline = match lane {
        Lane::Direct => "quiet init=/egressd-vm/init".to_string(),
        Lane::Systemd => {
            "init=/lib/systemd/systemd systemd.unit=multi-user.target systemd.show_status=1"
                .to_string()
        }
    };
    let expected: Vec<String> = plan
        .files(lane, bins)
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let boot = qemu::Boot {
        kernel,
        root_image: &root_image,
        results_image: &results_image,
        extra_cmdline: &cmdline,
        timeout: o.timeout,
        console_log: &console,
    };
    let mut used = None;
    let mut outcome = None;
    let started = Instant::now();
    let memo = vm_dir.join(format!("kvm-failed-{}", kernel.release));
    for accel in accels(o, &memo) {
        // A fresh results disk: no stale tar can pass for this boot's.
        let f = fs::File::create(&results_image)?;
        f.set_len(256 << 20)?;
        drop(f);
        println!("vm-test: booting {} with {accel}", kernel.release);
        let t = Instant::now();
        let r = qemu::boot(&boot, accel)?;
        if let Outcome::KvmFailed(why) = &r {
            println!(
                "vm-test: KVM cannot boot {} ({why}): falling back to TCG",
                kernel.release
            );
            // Remembered: the next boot of this kernel goes straight to TCG
            // (probing costs up to a minute each time).
            fs::write(&memo, why)?;
            continue;
        }
        used = Some((accel, t.elapsed()));
        outcome = Some(r);
        break;
    }
    let (accel, took) = used.context("no accelerator could boot the kernel")?;
    let outcome = outcome.expect("set with used");
    println!(
        "vm-test: {} {lane} lane ran {:.0} s with {accel} ({:.0} s with probing)",
        kernel.release,
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let res = results::read(&results_image, &out.join("guest"), &expected);
    Ok(report::judge(
        kernel, lane, accel, took, outcome, res, &console,
    ))
}
