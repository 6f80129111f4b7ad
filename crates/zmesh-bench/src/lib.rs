//! Benchmark support shared by zmesh's criterion benches (`benches/`), `zmesh bench` and the
//! peer comparison (`tools/peer-compare`), so each measures the same way:
//!
//! - [`child`]: a server in a child process that announces its endpoint on stdout
//!   (`READY <endpoint>`), waited for within a limit and killed on drop; and the child's
//!   side of that (announce, then run until stdin closes).
//! - [`thread`]: a server on its own thread and runtime, stopped and joined on drop.
//! - [`raw`]: the raw `zeromq` ROUTER echo every mode is compared with.
//! - [`affinity`]: pinning threads to CPUs.
//! - [`schedule`]: the alternating blocks scheduler: the modes under comparison take turns
//!   block by block, so a change in the machine's state weighs on every mode alike.
//! - [`drive`]: timing the calls of one block, concurrent or pipelined in order.
//! - [`latency`]: [`Latencies`], every call's latency in an HDR histogram, its percentiles
//!   and ratios.
//! - [`report`]: [`Figures`], the JSON shape of one measured mode, and [`Flavour`], the
//!   tokio runtime flavour of client and servers.

pub mod affinity;
pub mod args;
pub mod child;
pub mod drive;
pub mod latency;
pub mod raw;
pub mod report;
pub mod schedule;
pub mod thread;

pub use child::{ServerChild, SpawnError};
pub use drive::{Block, InOrder, Measured};
pub use latency::{Latencies, micros, ratio};
pub use report::{Figures, Flavour, MULTI_THREAD_WORKERS, VsBaseline};
pub use schedule::{Order, Schedule, Turn};
pub use thread::{ServerThread, ThreadError};
