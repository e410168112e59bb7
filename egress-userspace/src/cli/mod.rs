//! The commands, one module each. `main.rs` parses the command line and
//! calls one of these.

pub mod check;
pub mod exec;
pub mod governed;
pub mod learn;
pub mod run;
pub mod usage;
