//! The kernels a VM boots: Debian's cloud kernels (the newest build of each
//! series at run time, downloaded with `apt-get download` and unpacked with
//! `dpkg-deb -x`, cached under target/vm/kernels/), and this host's own.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::archive::{run, Mirror, Suite};

/// A kernel series to test, and where Debian ships it.
pub struct Series {
    /// What `--kernel` matches, e.g. "6.1".
    pub label: &'static str,
    pub suite: &'static str,
    /// The meta-package whose first dependency is the newest build.
    meta: &'static str,
    /// The start of that build's package name.
    prefix: &'static str,
}

/// Debian 11's 5.10, Debian 12's 6.1, and the 6.12 that bookworm carries.
pub const DEBIAN: &[Series] = &[
    Series {
        label: "5.10",
        suite: "bullseye",
        meta: "linux-image-cloud-amd64",
        prefix: "linux-image-5.10.",
    },
    Series {
        label: "6.1",
        suite: "bookworm",
        meta: "linux-image-cloud-amd64",
        prefix: "linux-image-6.1.",
    },
    Series {
        label: "6.12",
        suite: "bookworm",
        meta: "linux-image-6.12-cloud-amd64",
        prefix: "linux-image-6.12.",
    },
];

/// A bootable kernel and its modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// "5.10", "6.1", "6.12" or "host".
    pub label: String,
    /// `uname -r` inside the VM, e.g. "6.1.0-57-cloud-amd64".
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The `lib/modules/<release>` directory, if there is one.
    pub modules: Option<PathBuf>,
}

/// Lists older than this are refreshed before a kernel is picked.
const LISTS_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// Fetches (or finds in the cache) the newest build of `series`.
pub fn fetch(series: &Series, mirror: &Mirror, vm_dir: &Path) -> Result<Kernel> {
    let cache = vm_dir.join("kernels");
    let suite = Suite::new(series.suite, mirror, &vm_dir.join("apt"))?;
    let pkg = match suite
        .update(LISTS_MAX_AGE)
        .and_then(|_| suite.resolve_meta(series.meta, series.prefix))
    {
        Ok(pkg) => pkg,
        Err(e) => {
            // Offline: the newest build already unpacked, if any.
            let cached = newest_cached(&cache, series.prefix).with_context(|| {
                format!(
                    "no {}* in {} and none cached: {e:#}",
                    series.prefix, series.suite
                )
            })?;
            eprintln!("vm-test: could not ask the archive ({e:#}); using the cached {cached}");
            cached
        }
    };
    let release = pkg
        .strip_prefix("linux-image-")
        .context("a kernel package name")?
        .to_string();
    let dir = cache.join(&pkg);
    if !dir
        .join("boot")
        .join(format!("vmlinuz-{release}"))
        .is_file()
    {
        let deb = suite.download(&pkg, &vm_dir.join("debs"))?;
        let partial = cache.join(format!("{pkg}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        let moddir = modules_dir(&partial, &release)
            .with_context(|| format!("{} has no lib/modules/{release}", deb.display()))?;
        let base = moddir
            .ancestors()
            .nth(3)
            .context("modules directory depth")?
            .to_path_buf();
        run(Command::new("depmod").arg("-b").arg(&base).arg(&release))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&partial, &dir)?;
    }
    Ok(Kernel {
        label: series.label.to_string(),
        vmlinuz: dir.join("boot").join(format!("vmlinuz-{release}")),
        modules: modules_dir(&dir, &release),
        release,
    })
}

/// `lib/modules/<release>` or `usr/lib/modules/<release>` under `root`.
fn modules_dir(root: &Path, release: &str) -> Option<PathBuf> {
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(release))
        .find(|p| p.is_dir())
}

fn newest_cached(cache: &Path, prefix: &str) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && !n.ends_with(".partial"))
        .collect();
    names.sort_by_key(|n| version_key(n));
    names.pop()
}

/// Numbers in a package name, for ordering 6.1.0-9 before 6.1.0-10.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// This host's kernel, if its image is on disk.
pub fn host() -> Result<Kernel> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let candidates = [
        PathBuf::from(format!("/boot/vmlinuz-{release}")),
        PathBuf::from(format!("/lib/modules/{release}/vmlinuz")),
        PathBuf::from(format!("/usr/lib/modules/{release}/vmlinuz")),
    ];
    let Some(vmlinuz) = candidates.iter().find(|p| p.is_file()) else {
        bail!(
            "no image of the host's kernel {release} ({} do not exist)",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    Ok(Kernel {
        label: "host".into(),
        vmlinuz: vmlinuz.clone(),
        modules: modules_dir(Path::new("/"), &release),
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn builds_order_by_their_numbers() {
        let mut v = [
            "linux-image-6.1.0-10-cloud-amd64",
            "linux-image-6.1.0-9-cloud-amd64",
        ];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v[1], "linux-image-6.1.0-10-cloud-amd64");
    }
}
