//! Writes the CLI's results to stdout without ever panicking: a reader that went away
//! (`zmesh sub ... | head`) ends the command quietly, any other write error (a full disk)
//! is a clear error with the documented exit code.
//!
//! `println!` panics on both. Every result line goes through [`outln!`] instead, which
//! returns [`OutputError`] to the command, so a command streaming results stops at the
//! first line nobody can read.

use std::io::Write;

/// Why a result line could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutputError {
    /// The reader closed the pipe: not a failure, the command just ends (exit 0).
    #[error("standard output was closed")]
    Closed,
    /// Any other write error.
    #[error("cannot write to standard output: {0}")]
    Failed(#[source] std::io::Error),
}

/// Writes one line (and flushes it, so a reader sees each result as it comes).
pub(crate) fn write_line(line: std::fmt::Arguments<'_>) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => OutputError::Closed,
            _ => OutputError::Failed(e),
        })
}

/// Writes bytes as they are (`zmesh call --raw`), flushed.
pub(crate) fn write_bytes(bytes: &[u8]) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => OutputError::Closed,
            _ => OutputError::Failed(e),
        })
}

/// `println!` for results: returns early from the enclosing function with the
/// [`OutputError`] (converted with `?`) when the line cannot be written.
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))?
    };
}
pub(crate) use outln;
