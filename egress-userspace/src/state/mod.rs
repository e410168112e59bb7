//! The allowlist as it stands: each installed policy, its kernel table,
//! the addresses admitted for its host rules, and the cgroups it governs
//! (`allowlist`); admitted addresses and their deadlines (`addresses`).

pub mod addresses;
pub mod allowlist;
pub mod answers;
pub mod governance;
pub mod rule_slots;
pub mod view;
