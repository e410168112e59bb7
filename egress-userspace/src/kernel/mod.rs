//! The kernel programs: loading the embedded object, attaching its programs
//! to cgroups, pinning what was attached, and typed handles on its maps.
//!
//! Needs Linux 5.7 (bpf_link for cgroups), 5.8 (ring buffer); batched map
//! writes from 5.13 (one entry per syscall before); tested on 6.18.

pub mod cgroup;
pub mod counters;
pub mod diag;
pub mod governed;
pub mod link;
pub mod lsm;
pub mod mounts;
pub mod pins;
pub mod rules;
pub mod sockets;
pub mod sys;
pub mod tables;
pub mod trie;
pub mod unix;

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt},
    Ebpf,
};
use egress_common::{
    map_names, program_names, Budget, BudgetState, DnsAsker, NameKey, PolicyInfo, PortSet,
    RuleStats, UnixKey, V4Key, V6Key,
};
use link::attach_type;

use crate::kernel::cgroup::Cgroup;

/// The object built from `egress-ebpf`, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress.bpf.o"));

/// The kinds of program egressd attaches to cgroups.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    SockAddr,
    Sock,
    Sockopt,
    Skb,
}

/// Every program with its kind and attach type, in attach order: socket
/// creation and options first, so that no raw socket or source route can be
/// set up while the others are being attached.
const PROGRAMS: [(&str, Kind, u32); 14] = {
    use attach_type as a;
    use program_names as p;
    [
        (p::SOCK_CREATE, Kind::Sock, a::CGROUP_INET_SOCK_CREATE),
        (p::SETSOCKOPT, Kind::Sockopt, a::CGROUP_SETSOCKOPT),
        (p::PACKET_EGRESS, Kind::Skb, a::CGROUP_INET_EGRESS),
        (p::PACKET_INGRESS, Kind::Skb, a::CGROUP_INET_INGRESS),
        (p::BIND4, Kind::SockAddr, a::CGROUP_INET4_BIND),
        (p::BIND6, Kind::SockAddr, a::CGROUP_INET6_BIND),
        (p::CONNECT4, Kind::SockAddr, a::CGROUP_INET4_CONNECT),
        (p::CONNECT6, Kind::SockAddr, a::CGROUP_INET6_CONNECT),
        (p::SENDMSG4, Kind::SockAddr, a::CGROUP_UDP4_SENDMSG),
        (p::SENDMSG6, Kind::SockAddr, a::CGROUP_UDP6_SENDMSG),
        (p::RECVMSG4, Kind::SockAddr, a::CGROUP_UDP4_RECVMSG),
        (p::RECVMSG6, Kind::SockAddr, a::CGROUP_UDP6_RECVMSG),
        (p::GETPEERNAME4, Kind::SockAddr, a::CGROUP_INET4_GETPEERNAME),
        (p::GETPEERNAME6, Kind::SockAddr, a::CGROUP_INET6_GETPEERNAME),
    ]
};

/// Programs with a stand-in, loaded in their place (and pinned under their
/// name) where the kernel refuses them: (program, stand-in, what is lost).
const STAND_INS: [(&str, &str, &str); 1] = [(
    program_names::SETSOCKOPT,
    program_names::SETSOCKOPT_OWN_CGROUP,
    "this kernel refuses the cgroup ancestor walk to setsockopt programs (before Linux 6.1; seen on 5.10): a source-routing option set in a sub-cgroup of a governed cgroup is refused as no_policy, also in audit mode, and its events carry no pid or comm",
)];

/// The names of every program attached to a governed cgroup (and pinned).
pub fn program_names() -> impl Iterator<Item = &'static str> {
    PROGRAMS.iter().map(|p| p.0)
}

/// Errors from the kernel side, naming the program, map or cgroup.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this egressd was built without its eBPF object (no eBPF toolchain at build time): run `cargo xtask setup`, then build again")]
    NoObject,
    #[error("loading the eBPF object (are you root, with BPF and cgroup v2 support?)")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("loading program `{name}` into the kernel")]
    Load {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching program `{name}` to cgroup {cgroup} (Linux 5.7 or later is needed)")]
    Attach {
        name: &'static str,
        cgroup: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the UNIX socket programs (this kernel has their hooks): {0}")]
    Unix(String),
    #[error("BPF LSM runs here, but its program did not load: {0}")]
    Lsm(String),
    #[error("{0}")]
    Sockets(String),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Typed handles on the maps; see `egress-ebpf/src/maps.rs` for what each holds.
pub struct Maps {
    pub cgroup_policy: HashMap<MapData, u64, u32>,
    pub policies: Array<MapData, PolicyInfo>,
    pub allow_v4: LpmTrie<MapData, V4Key, u32>,
    pub allow_v6: LpmTrie<MapData, V6Key, u32>,
    pub portsets: Array<MapData, PortSet>,
    pub counters: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, u64>,
    pub dns_askers: HashMap<MapData, u32, DnsAsker>,
    pub unix_allow: LpmTrie<MapData, UnixKey, u32>,
    pub rule_stats: PerCpuArray<MapData, RuleStats>,
    pub budgets: Array<MapData, Budget>,
    pub budget_state: Array<MapData, BudgetState>,
    pub names: HashMap<MapData, NameKey, u32>,
}

/// The loaded programs and their maps.
pub struct Kernel {
    ebpf: Ebpf,
    /// (program, the stand-in loaded for it).
    stand_ins: Vec<(&'static str, &'static str)>,
    /// The UNIX programs, or why this kernel cannot run them.
    unix: Result<unix::Loaded, String>,
    /// Whether the BPF LSM program is loaded, or why not.
    lsm: Result<(), String>,
}

/// Links attached for one cgroup, one per program; dropping one detaches it
/// unless it was pinned.
pub struct Attachment {
    pub links: Vec<(&'static str, OwnedFd)>,
}

impl Kernel {
    /// Loads the object and its programs into the kernel (attaching nothing),
    /// with an events ring buffer of `ring_bytes` (default
    /// `egress_common::EVENTS_BYTES`; a power of two, a multiple of the page size).
    pub fn load(ring_bytes: Option<u32>) -> Result<Kernel, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NoObject);
        }
        let sockets = sockets::Pinned::new().map_err(|e| KernelError::Sockets(format!("{e:#}")))?;
        let mut loader = aya::EbpfLoader::new();
        if let Some(bytes) = ring_bytes {
            loader.map_max_entries(map_names::EVENTS, bytes);
        }
        loader.map_pin_path(map_names::SOCKETS, sockets.path.as_path());
        // For whoever changes the programs: the verifier's whole account
        // of each instruction, in the error of a program it refuses.
        if std::env::var_os("EGRESSD_VERIFIER_LOG").is_some() {
            loader
                .verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
        }
        let mut ebpf = loader.load(OBJECT).map_err(KernelError::Object)?;
        drop(sockets);
        let mut stand_ins = Vec::new();
        for (name, kind, _) in PROGRAMS {
            let loaded = load_program(&mut ebpf, name, kind);
            let stand_in = STAND_INS.iter().find(|s| s.0 == name);
            match (loaded, stand_in) {
                (Ok(()), _) => {}
                (Err(e), Some(&(_, other, lost))) => {
                    if let Err(e2) = load_program(&mut ebpf, other, kind) {
                        tracing::error!(
                            "its stand-in failed as well: {:#}",
                            anyhow::Error::from(e2)
                        );
                        return Err(e);
                    }
                    tracing::warn!("program `{name}`: {lost}");
                    stand_ins.push((name, other));
                }
                (Err(e), None) => return Err(e),
            }
        }
        let unix = if unix::supported() {
            Ok(unix::load(&ebpf, OBJECT).map_err(|e| KernelError::Unix(format!("{e:#}")))?)
        } else {
            Err(unix::UNSUPPORTED.to_string())
        };
        let lsm = lsm::load(&mut ebpf);
        // BPF LSM is listed and the kernel has cgroup BPF LSM, but the
        // verifier rejected the program: fail closed, as for the UNIX
        // programs. (EPERM is the kernel refusing BPF LSM programs at all,
        // as some builds do although `bpf` is listed: not judged, said.)
        if let Err(why) = &lsm {
            if why.starts_with("loading program")
                && !why.contains("Operation not permitted")
                && !lsm::lacks_lsm_cgroup()
            {
                return Err(KernelError::Lsm(why.clone()));
            }
        }
        Ok(Kernel {
            ebpf,
            stand_ins,
            unix,
            lsm,
        })
    }

    /// Whether sockets of every family are judged (BPF LSM): `Err` says
    /// why not.
    pub fn families(&self) -> Result<(), &str> {
        self.lsm.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Whether UNIX sockets are judged: `Err` says why not.
    pub fn unix(&self) -> Result<(), &str> {
        self.unix.as_ref().map(drop).map_err(String::as_str)
    }

    fn take<T>(&mut self, name: &'static str) -> Result<T, KernelError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(KernelError::MissingMap(name))?;
        T::try_from(map).map_err(|source| KernelError::Map { name, source })
    }

    /// Takes the maps out of the object (once).
    pub fn take_maps(&mut self) -> Result<(Maps, RingBuf<MapData>), KernelError> {
        let maps = Maps {
            cgroup_policy: self.take(map_names::CGROUP_POLICY)?,
            policies: self.take(map_names::POLICIES)?,
            allow_v4: self.take(map_names::ALLOW_V4)?,
            allow_v6: self.take(map_names::ALLOW_V6)?,
            portsets: self.take(map_names::PORTSETS)?,
            counters: self.take(map_names::COUNTERS)?,
            config: self.take(map_names::CONFIG)?,
            dns_askers: self.take(map_names::DNS_ASKERS)?,
            unix_allow: self.take(map_names::UNIX_ALLOW)?,
            rule_stats: self.take(map_names::RULE_STATS)?,
            budgets: self.take(map_names::BUDGETS)?,
            budget_state: self.take(map_names::BUDGET_STATE)?,
            names: self.take(map_names::NAMES)?,
        };
        let events = self.take(map_names::EVENTS)?;
        Ok((maps, events))
    }

    /// Attaches every program to `cgroup` with a bpf_link (see `link`),
    /// beside any other programs there: the object's (a stand-in where one
    /// was loaded), then the BPF LSM and UNIX programs where this kernel
    /// runs them.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<Attachment> {
        let fd = cgroup.open()?;
        let mut wanted: Vec<(&'static str, &'static str, u32)> = PROGRAMS
            .iter()
            .map(|&(name, _, attach_type)| {
                let loaded = self
                    .stand_ins
                    .iter()
                    .find(|s| s.0 == name)
                    .map_or(name, |s| s.1);
                (name, loaded, attach_type)
            })
            .collect();
        if self.lsm.is_ok() {
            let (name, _, attach_type) = lsm::PROGRAM;
            wanted.push((name, name, attach_type));
        }
        let mut links = Vec::new();
        let link_one = |name: &'static str, prog: BorrowedFd<'_>, attach_type: u32| {
            link::create(prog, fd.as_fd(), attach_type).map_err(|e| KernelError::Attach {
                name,
                cgroup: cgroup.path.display().to_string(),
                source: e,
            })
        };
        for (name, loaded, attach_type) in wanted {
            let prog = self
                .ebpf
                .program(loaded)
                .ok_or(KernelError::MissingProgram(loaded))?;
            let prog_fd = prog
                .fd()
                .map_err(|source| KernelError::Load { name, source })?;
            links.push((name, link_one(name, prog_fd.as_fd(), attach_type)?));
        }
        if let Ok(unix) = &self.unix {
            for (name, attach_type, prog_fd) in unix.iter() {
                links.push((name, link_one(name, prog_fd, attach_type)?));
            }
        }
        Ok(Attachment { links })
    }
}

/// Loads one program of the object into the kernel.
fn load_program(ebpf: &mut Ebpf, name: &'static str, kind: Kind) -> Result<(), KernelError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?;
    let loaded = match kind {
        Kind::SockAddr => <&mut CgroupSockAddr>::try_from(prog).and_then(|p| p.load()),
        Kind::Sock => <&mut CgroupSock>::try_from(prog).and_then(|p| p.load()),
        Kind::Sockopt => <&mut CgroupSockopt>::try_from(prog).and_then(|p| p.load()),
        Kind::Skb => <&mut CgroupSkb>::try_from(prog).and_then(|p| p.load()),
    };
    loaded.map_err(|source| KernelError::Load { name, source })
}

impl Attachment {
    /// Pins each link as `dir/<program>`, so it outlives this process.
    pub fn pin(self, dir: &Path) -> Result<()> {
        pins::make_dirs(dir)?;
        for (name, link) in self.links {
            let path = dir.join(name);
            link::pin(link.as_fd(), &path)
                .with_context(|| format!("pinning link of `{name}` at {}", path.display()))?;
        }
        Ok(())
    }
}

/// The cookie of the calling thread's network namespace (Linux 5.14).
pub fn netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain syscalls on a socket we own; the option value is a u64.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(cookie)
    }
}
