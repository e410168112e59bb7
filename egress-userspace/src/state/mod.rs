//! The allowlist as it stands: each installed policy, its kernel table,
//! the addresses learned for its host rules, and the cgroups it governs
//! (`allowlist`); learned addresses and their deadlines (`addresses`).

pub mod addresses;
pub mod allowlist;
pub mod learn;
pub mod rule_slots;
pub mod view;
