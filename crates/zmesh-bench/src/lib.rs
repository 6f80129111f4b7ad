//! Benchmark support shared by zmesh's criterion benches (`benches/`), `zmesh bench` and the
//! peer comparison (`tools/peer-compare`), so each measures the same way:
//!
//! - [`child`]: a server in a child process that announces its endpoint on stdout
//!   (`READY <endpoint>`), waited for within a limit and killed on drop; and the child's
//!   side of that (announce, then run until stdin closes).
//! - [`affinity`]: pinning threads to CPUs.
//! - [`schedule`]: the alternating blocks scheduler: the modes under comparison take turns
//!   block by block, so a change in the machine's state weighs on every mode alike.
//! - [`drive`]: timing the calls of one block, concurrent or pipelined in order.
//! - [`latency`]: [`Latencies`], every call's latency in an HDR histogram, its percentiles
//!   and ratios.
//! - [`report`]: [`Figures`], the JSON shape of one measured mode, and [`Flavour`], the
//!   tokio runtime flavour of client and servers.

pub mod affinity;
pub mod child;
pub mod drive;
pub mod latency;
pub mod report;
pub mod schedule;

pub use child::{ServerChild, SpawnError};
pub use drive::{Block, InOrder, Measured};
pub use latency::{Latencies, micros, ratio};
pub use report::{Figures, Flavour, VsBaseline};
pub use schedule::{Order, Schedule, Turn};
