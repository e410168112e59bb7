//! `testrun CGROUP_DIR HEX_FRAME...`: runs egressd's egress backstop
//! (`egress_packet`, the cgroup_skb egress program attached to
//! CGROUP_DIR) on each crafted frame with BPF_PROG_TEST_RUN, and prints
//! its return value, one line a frame (1: passed, 0: dropped).
//!
//! Run it inside the governed cgroup: the kernel gives the test run's
//! socket the caller's cgroup, so the program judges the frame as one a
//! process of that cgroup sent. A frame is an Ethernet header and an IP
//! packet (the kernel takes the Ethernet header off first).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::ExitCode,
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const PROGRAM: &str = "egress_packet";

/// A `union bpf_attr`, zeroed, written field by field at their byte
/// offsets (x86_64, little-endian), and passed to egressd's own `bpf()`.
struct Attr([u64; 16]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 16])
    }

    fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        let shift = (off % 8) * 8;
        let word = &mut self.0[off / 8];
        *word = (*word & !(0xffff_ffff_u64 << shift)) | (u64::from(v) << shift);
        self
    }

    fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off / 8] = v;
        self
    }

    fn get_u32(&self, off: usize) -> u32 {
        (self.0[off / 8] >> ((off % 8) * 8)) as u32
    }

    fn bpf(&mut self, cmd: libc::c_long) -> io::Result<i64> {
        egressd::kernel::sys::bpf(cmd, &mut self.0)
    }
}

/// The fd of the program named `PROGRAM` attached to `cgroup` for egress.
fn program(cgroup: &str) -> io::Result<OwnedFd> {
    let dir = std::fs::File::open(cgroup)?;
    let mut ids = [0u32; 64];
    let mut q = Attr::new();
    q.u32(0, dir.as_raw_fd() as u32)
        .u32(4, BPF_CGROUP_INET_EGRESS)
        .u64(16, ids.as_mut_ptr() as u64)
        .u32(24, ids.len() as u32);
    q.bpf(BPF_PROG_QUERY)?;
    let count = q.get_u32(24) as usize;
    for &id in &ids[..count.min(ids.len())] {
        let fd = Attr::new().u32(0, id).bpf(BPF_PROG_GET_FD_BY_ID)?;
        // SAFETY: a new fd the kernel just returned, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut info = [0u8; 256];
        Attr::new()
            .u32(0, fd.as_raw_fd() as u32)
            .u32(4, info.len() as u32)
            .u64(8, info.as_mut_ptr() as u64)
            .bpf(BPF_OBJ_GET_INFO_BY_FD)?;
        // `name` is at offset 64 of bpf_prog_info, 16 bytes, NUL-padded.
        let name: Vec<u8> = info[64..80]
            .iter()
            .copied()
            .take_while(|b| *b != 0)
            .collect();
        if name == PROGRAM.as_bytes() {
            return Ok(fd);
        }
    }
    Err(io::Error::other(format!(
        "no {PROGRAM} attached to {cgroup} for egress"
    )))
}

/// The program's return value on `frame`.
fn run(prog: &OwnedFd, frame: &[u8]) -> io::Result<u32> {
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(8, frame.len() as u32)
        .u64(16, frame.as_ptr() as u64)
        .u32(32, 1);
    a.bpf(BPF_PROG_TEST_RUN)?;
    Ok(a.get_u32(4))
}

fn hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cgroup, frames)) = args.split_first() else {
        eprintln!("usage: testrun CGROUP_DIR HEX_FRAME...");
        return ExitCode::from(2);
    };
    let prog = match program(cgroup) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("testrun: {e}");
            return ExitCode::FAILURE;
        }
    };
    for f in frames {
        let Some(frame) = hex(f) else {
            eprintln!("testrun: not hex: {f}");
            return ExitCode::from(2);
        };
        match run(&prog, &frame) {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("testrun: BPF_PROG_TEST_RUN: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
