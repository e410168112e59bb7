//! `cargo xtask deb`: a Debian package of egressd, made with dpkg-deb
//! alone (no debhelper): the static egressd binary (the image's), its
//! systemd units, a man page and shell completions generated from its
//! command line, the example policies and agent unit, and its licence.
//! The unit is installed, not enabled: it needs policies first.
//!
//! The package is then checked as a user would meet it: installed with
//! dpkg into a throwaway root, where the binary must say its version, the
//! man page and the completions must be where man and the shells look,
//! and the unit must name the installed binary.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use xtask::ebpf;

use crate::image;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const BIN: &str = "usr/sbin/egressd";

/// Builds the package; prints its path as the last line.
pub fn run(target_dir: &Path) -> Result<()> {
    for tool in ["dpkg-deb", "dpkg", "gzip"] {
        if !xtask::setup::on_path(tool) {
            bail!("`cargo xtask deb` needs {tool} (Debian's dpkg and gzip)");
        }
    }
    let bin = image::build_static(target_dir)?;
    let dir = target_dir.join("deb");
    let stage = dir.join(format!("egressd_{VERSION}_amd64"));
    let _ = fs::remove_dir_all(&stage);
    let repo = ebpf::workspace_root();
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = stage.join(rel);
        fs::create_dir_all(path.parent().expect("a file in a directory"))?;
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(BIN, &fs::read(&bin)?, 0o755)?;
    let egressd = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new(&bin).args(args).output()?;
        if !out.status.success() {
            bail!(
                "egressd {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    };
    put(
        "usr/share/man/man8/egressd.8.gz",
        &gzip(&egressd(&["manpage"])?)?,
        0o644,
    )?;
    for (shell, rel) in [
        ("bash", "usr/share/bash-completion/completions/egressd"),
        ("zsh", "usr/share/zsh/vendor-completions/_egressd"),
        ("fish", "usr/share/fish/vendor_completions.d/egressd.fish"),
    ] {
        put(rel, &egressd(&["completions", shell])?, 0o644)?;
    }
    // The units name the binary where the package puts it.
    let unit = |name: &str| -> Result<Vec<u8>> {
        let text = fs::read_to_string(repo.join("deploy/systemd").join(name))?;
        Ok(text
            .replace("/usr/local/bin/egressd", "/usr/sbin/egressd")
            .replace(
                "# Install: the binary at /usr/sbin/egressd, policies in\n# /etc/egressd/policies/*.yaml, this file in /etc/systemd/system/.",
                "# Installed by the egressd package. Put policies in\n# /etc/egressd/policies/*.yaml, then `systemctl enable --now egressd`.",
            )
            .into_bytes())
    };
    put(
        "lib/systemd/system/egressd.service",
        &unit("egressd.service")?,
        0o644,
    )?;
    put(
        "lib/systemd/system/agents.slice",
        &unit("agents.slice")?,
        0o644,
    )?;
    let doc = "usr/share/doc/egressd";
    put(
        &format!("{doc}/examples/doc-summarizer.service"),
        &unit("doc-summarizer.service")?,
        0o644,
    )?;
    for entry in fs::read_dir(repo.join("policies"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().expect("a file").to_string_lossy();
            put(
                &format!("{doc}/examples/policies/{name}"),
                &fs::read(&path)?,
                0o644,
            )?;
        }
    }
    for name in ["README.md", "SECURITY.md"] {
        put(&format!("{doc}/{name}"), &fs::read(repo.join(name))?, 0o644)?;
    }
    put(
        &format!("{doc}/changelog.gz"),
        &gzip(&fs::read(repo.join("CHANGELOG.md"))?)?,
        0o644,
    )?;
    put(
        &format!("{doc}/copyright"),
        copyright(&repo)?.as_bytes(),
        0o644,
    )?;
    // Where the unit reads policies from (empty: the package ships none).
    fs::create_dir_all(stage.join("etc/egressd/policies"))?;
    let size_kib = du_kib(&stage)?;
    put("DEBIAN/control", control(size_kib).as_bytes(), 0o644)?;
    // No enable, no start: the unit needs policies in /etc/egressd/policies.
    let reload = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n    systemctl daemon-reload || true\nfi\n";
    put("DEBIAN/postinst", reload.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", reload.as_bytes(), 0o755)?;
    let deb = dir.join(format!("egressd_{VERSION}_amd64.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("dpkg-deb --build failed ({status})");
    }
    check(&deb, &dir.join("installed"))?;
    eprintln!(
        "package: {}; install it with `apt install {}`",
        deb.display(),
        deb.display()
    );
    println!("{}", deb.display());
    Ok(())
}

fn control(size_kib: u64) -> String {
    format!(
        "Package: egressd
Version: {VERSION}
Architecture: amd64
Maintainer: The egressd authors <egressd@localhost>
Installed-Size: {size_kib}
Depends: systemd
Section: net
Priority: optional
Description: default-deny egress for AI agents, enforced in the Linux kernel
 egressd makes the outbound network path of an agent's processes a
 deliberate, enumerated decision: processes in a governed cgroup reach
 only what their policy allows (eBPF programs on the cgroup), every other
 attempt fails, is reported with the process that made it, and is counted
 as a Prometheus metric.
"
    )
}

/// The licence, in Debian's machine-readable copyright format.
fn copyright(repo: &Path) -> Result<String> {
    let mit = fs::read_to_string(repo.join("LICENSE-MIT"))?;
    let mit: String = mit
        .lines()
        .skip_while(|l| !l.starts_with("Permission"))
        .map(|l| {
            if l.is_empty() {
                " .\n".to_string()
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: egressd

Files: *
Copyright: 2026 The egressd authors
License: MIT or Apache-2.0

License: MIT
{mit}
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
"
    ))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

/// The size of the files under `dir`, in KiB (control's Installed-Size).
fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            } else {
                total += e.metadata()?.len();
            }
        }
    }
    Ok(total.div_ceil(1024))
}

/// Installs `deb` with dpkg into a throwaway root (`root`, emptied first)
/// and checks what a user would find there.
fn check(deb: &Path, root: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(root);
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::write(root.join("var/lib/dpkg/status"), "")?;
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-depends",
            "--force-script-chrootless",
            "--force-not-root",
            "--install",
        ])
        .arg(deb)
        .output()?;
    if !out.status.success() {
        bail!(
            "dpkg --install of {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let installed = |rel: &str| -> Result<PathBuf> {
        let p = root.join(rel);
        if !p.is_file() {
            bail!("the package installs no {rel}");
        }
        Ok(p)
    };
    let version = Command::new(installed(BIN)?).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.starts_with(&format!("egressd {VERSION} (commit ")) {
        bail!("the installed egressd says {version:?}");
    }
    let man = fs::read(installed("usr/share/man/man8/egressd.8.gz")?)?;
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(&man)?;
    let man = String::from_utf8(child.wait_with_output()?.stdout)?;
    if !man.contains(".TH egressd 8") || !man.contains("exec") {
        bail!(
            "the man page is not egressd(8): {}",
            &man[..man.len().min(200)]
        );
    }
    let unit = fs::read_to_string(installed("lib/systemd/system/egressd.service")?)?;
    if !unit.contains("ExecStart=/usr/sbin/egressd run") || unit.contains("/usr/local/bin") {
        bail!("the installed unit does not name /usr/sbin/egressd");
    }
    if !root.join("etc/egressd/policies").is_dir() {
        bail!("the package makes no /etc/egressd/policies");
    }
    for rel in [
        "usr/share/bash-completion/completions/egressd",
        "usr/share/zsh/vendor-completions/_egressd",
        "usr/share/fish/vendor_completions.d/egressd.fish",
        "usr/share/doc/egressd/copyright",
        "usr/share/doc/egressd/examples/policies/doc-summarizer.yaml",
    ] {
        installed(rel)?;
    }
    Ok(())
}
