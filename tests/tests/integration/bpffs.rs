//! What egressd trusts in bpffs: nothing it did not make. bpffs is often
//! writable by every user; a link or a directory planted there before
//! egressd runs must make it refuse, never follow, delete or unpin.

use std::{os::unix::fs::symlink, path::PathBuf, process::Command};

use egress_tests::{
    egressd::{bin, TempDir},
    netns::Netns,
    require_root,
};

/// Removes a planted path on drop (a link, or a directory tree).
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.0) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(&self.0);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&self.0);
            }
            Err(_) => {}
        }
    }
}

fn victim() -> (TempDir, PathBuf) {
    let dir = TempDir::new("victim").unwrap();
    let file = dir.write("precious", "keep me").unwrap();
    (dir, file)
}

/// Runs `egressd detach ARGS`, which must fail; returns its stderr.
fn detach_refused(args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("detach")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "detach {args:?} followed a planted link: {stderr}"
    );
    stderr
}

/// `detach` never deletes through a link planted in the pin tree: not one
/// in place of an instance directory, nor one below a real one.
#[test]
fn detach_refuses_a_planted_link() {
    require_root();
    let root = egressd::kernel::pins::root().unwrap();
    let (victim_dir, precious) = victim();
    let instance = format!("test-plant-{}", std::process::id());
    let planted = Planted(root.join(&instance));
    symlink(&victim_dir.0, &planted.0).unwrap();
    let stderr = detach_refused(&["--instance", &instance]);
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert!(
        precious.exists(),
        "detach deleted a file through a planted link"
    );
    drop(planted);

    // A real instance directory whose generation is a link.
    let planted = Planted(root.join(&instance));
    std::fs::create_dir(&planted.0).unwrap();
    symlink(&victim_dir.0, planted.0.join("gen-1")).unwrap();
    detach_refused(&["--instance", &instance]);
    assert!(
        precious.exists(),
        "detach deleted a file through a planted link"
    );
    detach_refused(&["--instance", &instance, "--policy", "p"]);
    assert!(
        precious.exists(),
        "detach --policy deleted through a planted link"
    );
}

/// In a mount namespace of its own with a world-writable bpffs (as many
/// systems mount it), an unprivileged user makes `<bpffs>/egressd` first:
/// as a link to a directory of theirs, or as their own directory. egressd
/// refuses to start, and says what to remove.
#[test]
fn a_planted_pin_root_is_refused() {
    require_root();
    let ns = Netns::new("plant").unwrap();
    let (victim_dir, _) = victim();
    std::fs::set_permissions(
        &victim_dir.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    for (plant, expect) in [
        (
            format!("ln -s {} /sys/fs/bpf/egressd", victim_dir.0.display()),
            "symbolic link",
        ),
        (
            "mkdir /sys/fs/bpf/egressd".to_string(),
            "owned by uid 65534",
        ),
    ] {
        let script = format!(
            "set -e
             for m in $(awk '$9 == \"bpf\" {{ print $5 }}' /proc/self/mountinfo); do umount -l \"$m\"; done
             mount -t bpf -o mode=1777 bpf /sys/fs/bpf
             setpriv --reuid=65534 --regid=65534 --clear-groups {plant}
             exec {} exec --allow 198.51.100.1:443 -- true",
            bin().display()
        );
        let child = ns
            .command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{plant}: egressd used a planted pin root: {stderr}"
        );
        assert!(stderr.contains(expect), "{plant}: {stderr}");
        assert_eq!(
            std::fs::read_dir(&victim_dir.0).unwrap().count(),
            1,
            "{plant}: egressd wrote into the planted directory"
        );
        // unshare and sh exec in turn: egressd has the child's pid.
        let cgroup = egressd::kernel::mounts::cgroup2_root()
            .unwrap()
            .join("egressd.exec")
            .join(format!("exec-{pid}"));
        assert!(!cgroup.exists(), "{plant}: a refused exec left its cgroup");
    }
}
