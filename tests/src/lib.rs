//! Test harness for egressd's root-only integration tests: network
//! namespaces with documentation addresses (`netns`), listeners that count
//! what reaches them (`listen`), a DNS server for `.test` names (`dns`), and
//! the real egressd binary run as `exec` or as a daemon (`egressd`).
//!
//! Nothing here sends a packet outside a namespace the test created.
pub mod dns;
pub mod egressd;
pub mod listen;
pub mod netns;

/// Skips a test loudly (it is reported on stderr, never counted as a pass
/// by a reader of the output) when not running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("these tests need root (BPF, cgroups, network namespaces): run `cargo xtask test` as root");
    }
}
