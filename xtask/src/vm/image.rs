//! The disk a VM boots from, made for each boot: the cached root
//! filesystem, the kernel's modules, the workspace's sources and freshly
//! built binaries at the paths they were built for (the test binaries
//! name them by absolute path), and the scripts that run the tests.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use xtask::ebpf;

use super::{
    archive::run,
    binaries::Binaries,
    kernels::Kernel,
    plan::{Lane, Plan},
    rootfs,
};

const INIT: &str = include_str!("../../vm/init.sh");
const RUN_TESTS: &str = include_str!("../../vm/run-tests.sh");
const TESTS_UNIT: &str = include_str!("../../vm/egressd-vm-tests.service");
const UNIT_NAME: &str = "egressd-vm-tests.service";

/// Where the host's files go in the image: under this directory, at their
/// host paths. run-tests bind-mounts each of `binds` back at its own path
/// once the VM is up: placed there directly, a checkout under /tmp was
/// wiped at boot (systemd-tmpfiles empties /tmp; the direct lane mounts a
/// tmpfs on it).
const HOST: &str = "egressd-vm/host";

/// Where the host's `abs` lies in the stage.
fn inside(stage: &Path, abs: &Path) -> PathBuf {
    stage.join(HOST).join(abs.strip_prefix("/").unwrap_or(abs))
}

/// The host directories run-tests mounts back at their own paths: the
/// workspace, and the directory of each binary outside it.
fn binds(bins: &Binaries) -> Vec<PathBuf> {
    let root = ebpf::workspace_root();
    let mut dirs = vec![root.clone()];
    let files = std::iter::once(&bins.egressd)
        .chain(&bins.helpers)
        .chain(bins.tests.iter().map(|(_, t)| t));
    for f in files {
        let dir = f.parent().unwrap_or(Path::new("/")).to_path_buf();
        if !dirs.iter().any(|d| dir.starts_with(d)) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Writes a new file (never into a file shared with the cached rootfs:
/// the stage is a tree of hard links to it).
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let _ = fs::remove_file(path);
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Puts `src` at its own absolute path inside the stage (a hard link
/// when it can, a copy otherwise).
fn place(stage: &Path, src: &Path) -> Result<()> {
    let dst = inside(stage, src);
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir)?;
    }
    let _ = fs::remove_file(&dst);
    if fs::hard_link(src, &dst).is_err() {
        fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}

/// The workspace's tracked files (policies, deploy/, the tests' sources).
fn place_sources(stage: &Path) -> Result<()> {
    let root = ebpf::workspace_root();
    let out = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["ls-files", "-z"])
        .output()
        .context("git ls-files")?;
    for rel in out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let src = root.join(String::from_utf8_lossy(rel).as_ref());
        if src.is_file() {
            place(stage, &src)?;
        }
    }
    Ok(())
}

/// The OCI archive `cargo xtask image` writes, if it is there.
fn container_image() -> Option<PathBuf> {
    let dir = crate::target_dir().join("image");
    let archive = dir.join(format!("egressd-{}.oci.tar", env!("CARGO_PKG_VERSION")));
    archive.is_file().then_some(archive)
}

/// The Debian package `cargo xtask deb` writes, if it is there.
fn package() -> Option<PathBuf> {
    let deb = crate::target_dir()
        .join("deb")
        .join(format!("egressd_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    deb.is_file().then_some(deb)
}

/// Single-quotes a word for sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Makes `image` for one boot of `kernel` in `lane`.
pub fn make(
    rootfs_dir: &Path,
    kernel: &Kernel,
    bins: &Binaries,
    plan: &Plan,
    lane: Lane,
    work: &Path,
    image: &Path,
) -> Result<()> {
    let stage = work.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(work)?;
    // Hard links: a second or two, however big the rootfs.
    run(Command::new("cp").arg("-al").arg(rootfs_dir).arg(&stage))?;
    if let Some(m) = &kernel.modules {
        let dst = stage.join("usr/lib/modules");
        fs::create_dir_all(&dst)?;
        run(Command::new("cp")
            .arg("-al")
            .arg(m)
            .arg(dst.join(&kernel.release)))?;
    }
    place_sources(&stage)?;
    place(&stage, &bins.egressd)?;
    for h in &bins.helpers {
        place(&stage, h)?;
    }
    for (_, t) in &bins.tests {
        place(&stage, t)?;
    }
    let vm = stage.join("egressd-vm");
    write_new(&vm.join("init"), INIT, 0o755)?;
    write_new(&vm.join("run-tests"), RUN_TESTS, 0o755)?;
    // The container image, if `cargo xtask image` wrote it (container.rs).
    let archive = container_image();
    if let Some(a) = &archive {
        place(&stage, a)?;
    }
    // The package, if `cargo xtask deb` made it (systemd_live.rs).
    let deb = package();
    if let Some(d) = &deb {
        place(&stage, d)?;
    }
    let env = format!(
        "EGRESSD_BIN={}\nWORKSPACE={}\nTEST_TIMEOUT={}\nTOOLS={}\nEGRESSD_IMAGE={}\nEGRESSD_DEB={}\n",
        sh_quote(&bins.egressd.to_string_lossy()),
        sh_quote(&ebpf::workspace_root().to_string_lossy()),
        plan.test_timeout.as_secs(),
        sh_quote(&rootfs::TOOLS.join(" ")),
        sh_quote(
            &archive
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        sh_quote(
            &deb.map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    );
    write_new(&vm.join("env"), &env, 0o644)?;
    let binds: String = binds(bins)
        .iter()
        .map(|d| format!("{}\n", d.display()))
        .collect();
    write_new(&vm.join("binds"), &binds, 0o644)?;
    write_new(&vm.join("tests.sh"), &plan.script(lane, bins), 0o644)?;
    if lane == Lane::Systemd {
        let units = stage.join("etc/systemd/system");
        write_new(&units.join(UNIT_NAME), TESTS_UNIT, 0o644)?;
        let wants = units.join("multi-user.target.wants");
        fs::create_dir_all(&wants)?;
        let _ = fs::remove_file(wants.join(UNIT_NAME));
        symlink(format!("../{UNIT_NAME}"), wants.join(UNIT_NAME))?;
        // No udev in minbase: a getty on the serial port waits 90 s for
        // its device.
        let getty = units.join("serial-getty@ttyS0.service");
        let _ = fs::remove_file(&getty);
        symlink("/dev/null", getty)?;
    }
    let used_mb = du_mb(&stage)?;
    let size_mb = used_mb + used_mb / 4 + 512;
    let _ = fs::remove_file(image);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "egressd-root", "-d"])
        .arg(&stage)
        .arg(image)
        .arg(format!("{size_mb}M"))
        .stdout(std::process::Stdio::null()))
    .context("mkfs.ext4 -d (e2fsprogs 1.43 or later)")?;
    fs::remove_dir_all(&stage)?;
    Ok(())
}

fn du_mb(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-sm", "--apparent-size"])
        .arg(dir)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du -sm")
}
