//! Build and test tasks for egressd, as a library so that the userspace
//! crate's build script can build the eBPF object the same way.
pub mod ebpf;
pub mod setup;
