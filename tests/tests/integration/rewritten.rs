//! A connection whose destination a program in an ancestor cgroup rewrites
//! after egressd's connect hook allowed it (as Cilium's kube-proxy
//! replacement turns a ClusterIP into a backend): the socket's record
//! carries the verdict, so the backstop does not refuse its segments for
//! going to the backend. A connect egressd refuses never reaches the
//! rewriting program.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use egress_tests::{
    egressd::{Daemon, TempDir, TestCgroup},
    listen::Listener,
    netns::Netns,
    require_root,
};
use egressd::kernel::{link, sys};

/// Loads a `cgroup/connect4` program that rewrites every destination
/// address to `to` and lets the connect go on.
fn rewriter(to: [u8; 4]) -> OwnedFd {
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u64 = 18;
    // r2 = to; *(u32 *)(r1 + 4) = r2 (bpf_sock_addr.user_ip4); r0 = 1; exit
    let ip = u32::from_ne_bytes(to);
    let insns: [u64; 4] = [
        0xb7 | (2 << 8) | (u64::from(ip) << 32),
        0x63 | (1 << 8) | (2 << 12) | (4 << 16),
        0xb7 | (1 << 32),
        0x95,
    ];
    let license = b"GPL\0";
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_CGROUP_SOCK_ADDR | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // expected_attach_type (offset 68)
    attr[8] = u64::from(link::attach_type::CGROUP_INET4_CONNECT) << 32;
    let fd = sys::bpf(sys::BPF_PROG_LOAD, &mut attr).expect("loading the rewriter");
    // SAFETY: the kernel returned a new descriptor that we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[test]
fn a_destination_rewritten_above_egressd_passes_on_its_verdict() {
    require_root();
    let ns = Netns::new("rewrite").unwrap();
    let tmp = TempDir::new("rewrite").unwrap();
    let outer = TestCgroup::new("rewrite").unwrap();
    outer.cgroup.create().unwrap();
    let agent = outer.child("agent").unwrap();
    // The "service" address the policy allows, and its backend, which
    // the policy does not name: the listener is on the backend.
    let backend = Listener::tcp(&ns, "198.51.100.2:443").unwrap();
    let denied = Listener::tcp(&ns, "203.0.113.9:443").unwrap();
    let policy = tmp
        .write(
            "svc.yaml",
            &format!(
                "name: svc\ncgroups: [{}]\nallow:\n  - ip: 198.51.100.1\n    ports: [443]\n",
                agent.rel_str()
            ),
        )
        .unwrap();
    let _d = Daemon::start(&ns, &policy).unwrap();
    let prog = rewriter([198, 51, 100, 2]);
    let cg = outer.cgroup.open().unwrap();
    let _link = link::create(
        prog.as_fd(),
        cg.as_fd(),
        link::attach_type::CGROUP_INET4_CONNECT,
    )
    .expect("attaching the rewriter above the governed cgroup");
    const CLIENT: &str = r#"
import socket, sys
for host in ("198.51.100.1", "203.0.113.9"):
    try:
        s = socket.create_connection((host, 443), timeout=3)
        s.sendall(b"hello")
        s.close()
        print(host, "sent", flush=True)
    except OSError as e:
        print(host, "refused", e.errno, flush=True)
"#;
    let out = agent.run(&ns, "python3", &["-c", CLIENT]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("198.51.100.1 sent"), "{out:?}");
    assert!(said.contains("203.0.113.9 refused 1"), "{out:?}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!((backend.count(), backend.bytes()), (1, 5), "{out:?}");
    assert_eq!(denied.count(), 0);
}
