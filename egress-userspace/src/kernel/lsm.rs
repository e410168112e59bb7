//! The BPF LSM program (`lsm_cgroup/socket_create`, Linux 6.0), where the
//! kernel runs BPF LSM (`bpf` among its active LSMs, as in Debian's own
//! kernels): socket() of a family no cgroup hook sees (AF_VSOCK,
//! AF_PACKET, ...) is refused unless the policy names the family. Where
//! BPF LSM does not run, a loaded program would never be called, so it is
//! not loaded, and egressd says so (`unavailable`).

use anyhow::{anyhow, Context, Result};
use aya::{programs::LsmCgroup, Btf, Ebpf};
use egress_common::program_names as p;

/// The program, its hook and `BPF_LSM_CGROUP`.
pub const PROGRAM: (&str, &str, u32) = (p::SOCKET_FAMILY, "socket_create", 43);

/// Loads the program, or says why this kernel cannot run it.
pub fn load(ebpf: &mut Ebpf) -> Result<(), String> {
    let lsms = crate::kernel::mounts::active_lsms().map_err(|e| {
        format!("the kernel's active LSMs cannot be read ({e:#}), so BPF LSM is not used")
    })?;
    if !lsms.iter().any(|l| l == "bpf") {
        return Err(format!(
            "BPF LSM is not active in this kernel (active: {}; add `bpf` to the kernel's `lsm=` list)",
            lsms.join(",")
        ));
    }
    load_active(ebpf).map_err(|e| format!("{e:#}"))
}

/// Whether a load failure is this kernel's lack of cgroup BPF LSM (before
/// Linux 6.0) rather than a broken program, which must stop egressd: BPF
/// LSM runs, and socket families would go unjudged.
pub fn lacks_lsm_cgroup() -> bool {
    !super::sys::release_at_least(6, 0)
}

fn load_active(ebpf: &mut Ebpf) -> Result<()> {
    let (name, hook, _) = PROGRAM;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let prog: &mut LsmCgroup = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program `{name}`"))?
        .try_into()?;
    prog.load(hook, &btf)
        .with_context(|| format!("loading program `{name}` (BPF_LSM_CGROUP, Linux 6.0)"))
}
