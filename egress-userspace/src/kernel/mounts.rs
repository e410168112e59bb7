//! Finding (and when missing, mounting) the cgroup2 and bpf filesystems.
//!
//! Never hard-coded: cgroup2 may be at /sys/fs/cgroup, /sys/fs/cgroup/unified
//! (hybrid layout), or nowhere at all inside `ip netns exec`, which remounts
//! /sys privately.

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// Where egressd mounts bpffs when none is mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// Where egressd mounts cgroup2 when none is mounted.
pub const FALLBACK_CGROUP2: &str = "/run/egressd/cgroup2";

/// Mount points of a filesystem type, from /proc/self/mountinfo.
pub fn mount_points(fstype: &str) -> Result<Vec<PathBuf>> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info, fstype))
}

fn unescape(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(field.len());
    let mut it = field.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            let code: String = it.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Mount points of `fstype` in mountinfo text.
pub fn parse_mountinfo(info: &str, fstype: &str) -> Vec<PathBuf> {
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

fn mount(fstype: &str, target: &Path, data: &str) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let src = CString::new(fstype).expect("no NUL");
    let tgt = CString::new(target.as_os_str().as_bytes()).context("mount path has a NUL")?;
    let data = CString::new(data).expect("no NUL");
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting {fstype} at {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The cgroup2 mount point, mounting cgroup2 if none is mounted.
pub fn cgroup2_root() -> Result<PathBuf> {
    if let Some(p) = mount_points("cgroup2")?.into_iter().next() {
        return Ok(p);
    }
    let target = Path::new(FALLBACK_CGROUP2);
    mount("cgroup2", target, "").context(
        "no cgroup2 filesystem is mounted, and mounting one failed (egressd needs cgroup v2)",
    )?;
    Ok(target.to_path_buf())
}

/// The bpffs mount point, mounting bpffs (mode 0700) at /sys/fs/bpf if none
/// is mounted.
pub fn bpffs_root() -> Result<PathBuf> {
    if let Some(p) = mount_points("bpf")?.into_iter().next() {
        return Ok(p);
    }
    let target = Path::new(DEFAULT_BPFFS);
    // Only root may create pins in it (bpffs' own default is 1777).
    mount("bpf", target, "mode=0700")
        .context("no bpf filesystem is mounted, and mounting one failed")?;
    Ok(target.to_path_buf())
}

/// The kernel's active LSMs (`lsm` in securityfs), mounting securityfs at
/// /sys/kernel/security if none is mounted.
pub fn active_lsms() -> Result<Vec<String>> {
    let root = match mount_points("securityfs")?.into_iter().next() {
        Some(p) => p,
        None => {
            let target = Path::new("/sys/kernel/security");
            mount("securityfs", target, "")
                .context("no securityfs is mounted, and mounting one failed")?;
            target.to_path_buf()
        }
    };
    let list = fs::read_to_string(root.join("lsm"))
        .with_context(|| format!("reading {}", root.join("lsm").display()))?;
    Ok(list.trim().split(',').map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
24 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs ro,mode=755
35 30 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 24 0:33 / /sys/fs/bpf rw shared:12 - bpf bpf rw,mode=700
41 24 0:34 / /mnt/with\\040space rw - cgroup2 none rw
";

    #[test]
    fn finds_mounts_by_type() {
        assert_eq!(
            parse_mountinfo(INFO, "cgroup2"),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space")
            ]
        );
        assert_eq!(
            parse_mountinfo(INFO, "bpf"),
            vec![PathBuf::from("/sys/fs/bpf")]
        );
        assert!(parse_mountinfo(INFO, "nfs").is_empty());
    }
}
