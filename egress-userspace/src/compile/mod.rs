//! Compiling a policy (and the addresses its hostnames resolved to) into
//! allow-trie entries: prefix -> the port ranges allowed there.
//!
//! The kernel does one longest-prefix lookup, so each entry must carry the
//! ports of every shorter prefix that covers it as well as its own: a /24
//! allowing port 80 and a /32 inside it allowing 443 give the /32 both.
//!
//! `plan` is where a policy becomes map entries: its prefix rules once,
//! its hostnames' addresses on each answer. `ports` turns the rules that
//! allow one prefix into the kernel's port ranges. `load` is how every
//! command reads a policy file: validated, then compiled once.

pub mod load;
pub mod plan;
pub mod ports;

use egress_common::PortRange as KernelRange;

/// The ports one prefix allows, normalised (sorted, merged), ready for the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec(pub Vec<KernelRange>);

/// One allow-trie entry: a prefix (address bits in host order, and length)
/// and the index of its ports in `Compiled::specs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry<A> {
    pub addr: A,
    pub len: u8,
    pub spec: u32,
}

/// What a policy compiles to: entries sorted by prefix, each prefix once.
/// Entries with the same ports share one spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub v4: Vec<Entry<u32>>,
    pub v6: Vec<Entry<u128>>,
    pub specs: Vec<PortSpec>,
}

/// The entry for `addr/len`, if there is one.
pub(super) fn find<A: Ord + Copy>(v: &[Entry<A>], addr: A, len: u8) -> Option<&Entry<A>> {
    v.binary_search_by(|e| (e.addr, e.len).cmp(&(addr, len)))
        .ok()
        .map(|i| &v[i])
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("policy `{policy}`: {prefix} would need {count} port ranges (with those of the prefixes covering it), more than the {max} one destination can carry; merge ports into ranges")]
    TooManyPortRanges {
        policy: String,
        prefix: String,
        count: usize,
        max: usize,
    },
}
