//! `cargo xtask image`: egressd's container image, built here without
//! pulling anything: the egressd binary linked statically (glibc's static
//! library, `crt-static`) on an empty base, as the Containerfile's final
//! stage makes it, committed by buildah (Debian's package) into an OCI
//! archive. buildah keeps its storage under the target directory, so the
//! machine's own container storage is not touched.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use xtask::{ebpf, setup};

const TARGET: &str = "x86_64-unknown-linux-gnu";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the image; prints the archive's path as the last line.
pub fn run(target_dir: &Path) -> Result<()> {
    if !setup::is_root() {
        bail!("`cargo xtask image` runs buildah, which needs root here");
    }
    ensure_buildah()?;
    let bin = build_static(target_dir)?;
    let dir = target_dir.join("image");
    fs::create_dir_all(&dir)?;
    let archive = dir.join(format!("egressd-{VERSION}.oci.tar"));
    let _ = fs::remove_file(&archive);
    let storage = dir.join("storage");
    let buildah = |args: &[&str]| -> Result<String> {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .context("running buildah")?;
        if !out.status.success() {
            bail!(
                "buildah {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let container = buildah(&["from", "scratch"])?;
    let result = (|| {
        let bin = bin.to_str().context("a UTF-8 target path")?;
        buildah(&[
            "copy",
            "--chmod",
            "0755",
            &container,
            bin,
            "/usr/local/bin/egressd",
        ])?;
        let revision = git_revision().unwrap_or_default();
        buildah(&[
            "config",
            "--entrypoint",
            r#"["/usr/local/bin/egressd"]"#,
            "--cmd",
            "",
            "--env",
            "PATH=/usr/local/bin",
            "--label",
            "org.opencontainers.image.title=egressd",
            "--label",
            &format!("org.opencontainers.image.version={VERSION}"),
            "--label",
            &format!("org.opencontainers.image.revision={revision}"),
            "--label",
            "org.opencontainers.image.licenses=MIT OR Apache-2.0",
            &container,
        ])?;
        // Named with a registry (`localhost`, which no runtime pulls from):
        // a short name would resolve to a public default registry.
        let dest = format!(
            "oci-archive:{}:localhost/egressd:{VERSION}",
            archive.display()
        );
        buildah(&["commit", "--format", "oci", "--rm", &container, &dest])
    })();
    if result.is_err() {
        let _ = buildah(&["rm", &container]);
    }
    result?;
    let size = fs::metadata(&archive)
        .with_context(|| format!("buildah wrote no {}", archive.display()))?
        .len();
    eprintln!(
        "image: localhost/egressd:{VERSION}, {:.1} MiB; load it with `podman load -i {}` or `kind load image-archive {}`",
        size as f64 / 1048576.0,
        archive.display(),
        archive.display()
    );
    println!("{}", archive.display());
    Ok(())
}

/// Installs buildah (Debian's package) if it is missing.
fn ensure_buildah() -> Result<()> {
    if setup::on_path("buildah") {
        return Ok(());
    }
    eprintln!("xtask: installing buildah");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "--no-install-recommends", "buildah"][..],
    ] {
        let status = Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

/// The egressd binary, linked statically; checked to have no program
/// interpreter (a dynamic binary would not start on an empty base).
pub fn build_static(target_dir: &Path) -> Result<PathBuf> {
    let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(ebpf::workspace_root())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // No debug information or symbols: a tenth of the size.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .args(["build", "--release", "--target", TARGET])
        .args(["--package", "egress-userspace", "--bin", "egressd"])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the static egressd failed ({status})");
    }
    let bin = target_dir.join(TARGET).join("release/egressd");
    if has_interpreter(&fs::read(&bin)?)? {
        bail!("{} is linked dynamically", bin.display());
    }
    Ok(bin)
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    Ok((0..count).any(|i| {
        let o = phoff + i * size;
        elf.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) == PT_INTERP)
    }))
}

fn git_revision() -> Option<String> {
    let out = Command::new("git")
        .current_dir(ebpf::workspace_root())
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic() {
        // This test binary is linked dynamically (the default).
        let me = fs::read(env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me).unwrap());
        assert!(
            has_interpreter(b"not an elf file at all, not at all, no no no no no no no no no")
                .is_err()
        );
    }
}
