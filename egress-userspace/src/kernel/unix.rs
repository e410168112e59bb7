//! The UNIX socket programs (`cgroup/connect_unix` and
//! `cgroup/sendmsg_unix`, Linux 6.7), which aya 0.14 cannot load: it knows
//! neither attach type. The object carries them in sections aya can parse
//! (it never loads them); here their instructions are relocated against
//! the maps aya created and loaded with bpf(2), with the right expected
//! attach type. On an older kernel the load fails, and egressd governs
//! without them, saying so (`unavailable`).

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{maps::Map, Ebpf};
use egress_common::program_names as p;

use super::{
    link::attach_type as a,
    sys::{bpf, BPF_PROG_LOAD},
};

/// The programs, with their attach types.
pub const PROGRAMS: [(&str, u32); 2] = [
    (p::CONNECT_UNIX, a::CGROUP_UNIX_CONNECT),
    (p::SENDMSG_UNIX, a::CGROUP_UNIX_SENDMSG),
];

/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// Loaded UNIX programs, by name.
pub struct Loaded {
    pub programs: Vec<(&'static str, u32, OwnedFd)>,
}

/// Loads both programs from `object`, whose maps `ebpf` has created.
pub fn load(ebpf: &Ebpf, object: &[u8]) -> Result<Loaded> {
    let mut obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let maps = obj.maps.clone();
    let mut fds = Vec::new();
    for (name, map) in &maps {
        let created = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the loaded object has no map `{name}`"))?;
        fds.push((name.as_str(), map_fd(created)?.as_raw_fd(), map));
    }
    let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(fds.into_iter(), &text)
        .map_err(|e| anyhow!("relocating maps: {e}"))?;
    obj.relocate_calls(&text)
        .map_err(|e| anyhow!("relocating calls: {e}"))?;
    let mut programs = Vec::new();
    for (name, attach) in PROGRAMS {
        let prog = obj
            .programs
            .get(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program `{name}`"))?;
        let insns = &obj.functions[&prog.function_key()].instructions;
        let fd = load_program(name, insns, &prog.license, attach)
            .with_context(|| format!("loading program `{name}` into the kernel"))?;
        programs.push((name, attach, fd));
    }
    Ok(Loaded { programs })
}

/// The descriptor of a map aya created, for the kinds the object has.
fn map_fd(map: &Map) -> Result<BorrowedFd<'_>> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::SkStorage(d) => d,
        _ => bail!("a map of a kind the UNIX programs' loader does not know"),
    };
    Ok(data.fd().as_fd())
}

/// BPF_PROG_LOAD of a cgroup sock_addr program; on failure, loads again
/// with the verifier's log and returns its end.
fn load_program(
    name: &str,
    insns: &[aya_obj::generated::bpf_insn],
    license: &std::ffi::CStr,
    attach: u32,
) -> Result<OwnedFd> {
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = [0u64; 16];
        // struct { u32 prog_type; u32 insn_cnt; u64 insns; u64 license;
        //   u32 log_level; u32 log_size; u64 log_buf; u32 kern_version;
        //   u32 prog_flags; char prog_name[16]; u32 prog_ifindex;
        //   u32 expected_attach_type; ... }
        attr[0] = u64::from(PROG_TYPE_CGROUP_SOCK_ADDR) | ((insns.len() as u64) << 32);
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        if let Some(log) = log {
            attr[3] = 1 | ((log.len() as u64) << 32);
            attr[4] = log.as_mut_ptr() as u64;
        }
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name[..15].iter_mut().zip(name.bytes()) {
            *d = s;
        }
        attr[6] = u64::from_ne_bytes(prog_name[..8].try_into().expect("8 bytes"));
        attr[7] = u64::from_ne_bytes(prog_name[8..].try_into().expect("8 bytes"));
        attr[8] = u64::from(attach) << 32;
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match attempt(None) {
        // SAFETY: the kernel returned a new file descriptor that we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let mut log = vec![0u8; 1 << 20];
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(anyhow!("{e}\n{}", tail.join("\n")))
        }
    }
}

impl Loaded {
    /// The program descriptors, to attach.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u32, BorrowedFd<'_>)> {
        self.programs.iter().map(|(n, a, fd)| (*n, *a, fd.as_fd()))
    }
}

/// Why UNIX sockets are not judged on a kernel without the hooks.
pub const UNSUPPORTED: &str =
    "this kernel has no cgroup UNIX socket hooks (Linux 6.7 and later have them)";

/// Whether the kernel knows the `cgroup/connect_unix` attach type: it
/// loads a program that allows everything with it (and drops it).
pub fn supported() -> bool {
    // r0 = 1; exit
    let allow = [
        aya_obj::generated::bpf_insn {
            code: 0xb7,
            _bitfield_align_1: [],
            _bitfield_1: aya_obj::generated::bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm: 1,
        },
        aya_obj::generated::bpf_insn {
            code: 0x95,
            _bitfield_align_1: [],
            _bitfield_1: aya_obj::generated::bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm: 0,
        },
    ];
    load_program("egress_probe", &allow, c"GPL", a::CGROUP_UNIX_CONNECT).is_ok()
}
