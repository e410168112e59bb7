//! Test harness for egressd's root-only integration tests: network
//! namespaces with documentation addresses (`netns`), listeners that count
//! what reaches them (`listen`), a DNS server for `.test` names (`dns`), and
//! the real egressd binary run as `exec` or as a daemon (`egressd`), and
//! programs outside any governed cgroup (`outside`), and a Kubernetes API
//! server that replays what a test sets (`kube_api`).
//!
//! Nothing here sends a packet outside a namespace the test created.
pub mod dns;
pub mod egressd;
pub mod front_door;
pub mod kube_api;
pub mod listen;
pub mod netns;
pub mod outside;

/// Skips a test loudly (it is reported on stderr, never counted as a pass
/// by a reader of the output) when not running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("these tests need root (BPF, cgroups, network namespaces): run `cargo xtask test` as root");
    }
}

/// Whether the running kernel is `major.minor` or later: tests of a hook
/// newer than the kernel assert what egressd says instead (that the
/// channel is not closed).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    ::egressd::kernel::sys::release_at_least(major, minor)
}

/// The unit files of deploy/systemd, sorted.
pub fn systemd_units() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("deploy/systemd")
        .map(|e| e.expect("deploy/systemd entry").path())
        .collect();
    v.sort();
    v
}
