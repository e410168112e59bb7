//! `PORTSETS`: the ports an allowed prefix (or a policy's `listen` rules)
//! allow, shared by every entry with the same rules.

/// `Array<PortSet>` indexed by portset id.
pub const PORTSETS: &str = "PORTSETS";

/// Port ranges one destination prefix may carry.
pub const MAX_PORT_RANGES: usize = 16;
/// Distinct port sets, over all policies of one daemon.
pub const MAX_PORTSETS: u32 = 16384;

/// Protocol bits in [`PortRange::protos`].
pub const PROTO_BIT_TCP: u8 = 1;
pub const PROTO_BIT_UDP: u8 = 2;

/// One range of destination ports, inclusive, for the protocols in
/// `protos`, allowed by the rule in slot `rule` (see [`crate::rules`];
/// 0: not counted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    pub protos: u8,
    /// `crate::names::RANGE_NAMED` for a host rule's range that checks
    /// the name a connection presents; 0 otherwise.
    pub flags: u8,
    pub rule: u16,
}

/// The ports a prefix allows: `ranges[..count]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub count: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet {
            count: 0,
            ranges: [PortRange::default(); MAX_PORT_RANGES],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::PortRange {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortSet {}
}

const _: () = assert!(core::mem::size_of::<PortRange>() == 8);
const _: () = assert!(core::mem::size_of::<PortSet>() == 4 + 8 * MAX_PORT_RANGES);
