//! One attempt, as every hook concludes it: who made it (`Caller`), under
//! which policy, through which hook, with which protocol, to where. Each
//! hook decides why (a `reason`, `reason::NONE` when allowed); `conclude`
//! then counts it by (policy, verdict, class, reason), reports it unless it
//! was allowed, and gives the program's return value: the same three steps
//! for the sock_addr hooks, the socket and family hooks, setsockopt, bind,
//! UNIX sockets and the packet backstop.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid};
use egress_common::{
    counter_index, lost_index, reason, verdict, Event, NameEvent, EVENT_NAME_LEN, NAME_LEN,
};

use crate::{
    dest::Dest,
    governing::Caller,
    maps::{bump, EVENTS},
};

pub const RET_REFUSE: i32 = 0;
pub const RET_ALLOW: i32 = 1;

#[derive(Clone, Copy)]
pub struct Attempt {
    pub caller: Caller,
    /// The governing policy's id (0: none).
    pub policy: u32,
    pub hook: u8,
    /// The IP protocol as the socket has it (0 where there is none).
    pub protocol: u8,
    /// `proto_class` for the counters.
    pub class: u8,
    pub dest: Dest,
}

impl Attempt {
    /// Counts the attempt and, unless `why` is `reason::NONE`, reports it;
    /// returns the program's return value (1 allow, 0 refuse; audit mode
    /// allows).
    #[inline(always)]
    pub fn conclude(&self, audit: bool, why: u8) -> i32 {
        let v = tally(self.policy, audit, why, self.class);
        if let Some(v) = v {
            emit(&self.event(v, why));
        }
        returned(v)
    }

    /// The attempt's event, with verdict `v` and reason `why` (a packet may
    /// be sent outside its task's context: then no pid, uid or comm).
    #[inline(always)]
    pub fn event(&self, v: u8, why: u8) -> Event {
        let (pid_tgid, uid_gid, comm) = match self.caller {
            Caller::Task => (
                bpf_get_current_pid_tgid(),
                bpf_get_current_uid_gid(),
                bpf_get_current_comm().unwrap_or([0; 16]),
            ),
            // Where the ancestor walk is refused (setsockopt on Linux 5.10),
            // so are the pid and comm helpers: the uid is all there is.
            Caller::TaskOwnCgroup => (0, bpf_get_current_uid_gid(), [0; 16]),
            Caller::Packet(_) => (0, 0, [0; 16]),
        };
        Event {
            cgroup_id: self.caller.cgroup_id(),
            pid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            policy_id: self.policy,
            port: self.dest.port,
            family: self.dest.family,
            protocol: self.protocol,
            addr: self.dest.addr,
            comm,
            reason: why,
            verdict: v,
            hook: self.hook,
            _pad: [0; 5],
        }
    }
}

/// Counts an attempt by (policy, verdict, class, reason): `None` when it
/// is allowed, else the verdict to report it under (audited or denied).
#[inline(always)]
pub fn tally(policy: u32, audit: bool, why: u8, class: u8) -> Option<u8> {
    let v = if why == reason::NONE {
        verdict::ALLOWED
    } else if audit {
        verdict::AUDITED
    } else {
        verdict::DENIED
    };
    bump(counter_index(policy, v, class, why));
    (v != verdict::ALLOWED).then_some(v)
}

/// A program's return value for what `tally` said: 1 lets the call go on
/// (allowed, or audit mode), 0 refuses it.
#[inline(always)]
pub fn returned(v: Option<u8>) -> i32 {
    match v {
        Some(verdict::DENIED) => RET_REFUSE,
        _ => RET_ALLOW,
    }
}

/// Counts and reports, at its first datagram, a UDP connect that waited
/// (see `udp`); returns the backstop's verdict.
#[inline(always)]
pub fn conclude_deferred(mut e: Event, audit: bool) -> i32 {
    let v = tally(
        e.policy_id,
        audit,
        e.reason,
        egress_common::proto_class::UDP,
    );
    if let Some(v) = v {
        e.verdict = v;
        emit(&e);
    }
    returned(v)
}

/// Puts an event on the ring buffer (or counts it lost).
#[inline(always)]
pub fn emit(e: &Event) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(lost_index(e.policy_id));
        return;
    };
    entry.write(*e);
    entry.submit(0);
}

/// Puts a name refusal on the ring buffer (or counts it lost): `e`, with
/// the first `len` bytes of `name` (`cut`: the name was longer) and what
/// was presented.
#[inline(always)]
pub fn emit_name(e: &Event, name: &[u8; NAME_LEN], len: u8, cut: u8, presented: u8, cookie: u64) {
    let Some(mut entry) = EVENTS.reserve::<NameEvent>(0) else {
        bump(lost_index(e.policy_id));
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: the reserved entry is ours and large enough; every field
    // is written.
    unsafe {
        (*p).event = *e;
        let from = name.as_ptr() as *const u64;
        let to = core::ptr::addr_of_mut!((*p).name) as *mut u64;
        let mut i = 0;
        while i < EVENT_NAME_LEN / 8 {
            core::ptr::write_unaligned(to.add(i), core::ptr::read_unaligned(from.add(i)));
            i += 1;
        }
        (*p).len = len;
        (*p).cut = cut;
        (*p).presented = presented;
        (*p)._pad = [0; 5];
        (*p).cookie = cookie;
    }
    entry.submit(0);
}
