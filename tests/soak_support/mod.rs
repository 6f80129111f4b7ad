//! Shared parts of the fault soak (`tests/soak.rs`): nodes in child processes, the
//! well-behaved and hostile clients, and the bookkeeping of what every call came to.

#![allow(dead_code, unreachable_pub)]

pub mod hostile;
pub mod node;
pub mod polite;
pub mod tally;
