//! Keeps a child process's stderr out of the test output unless the test fails: the
//! children (zmesh commands, stock zerorpc scripts) log expected errors and warnings, which
//! read like failures in a passing run. The stderr is read by a task of its own into
//! memory (bounded) and printed by the guard's drop only when the test is panicking.
//! Shared by the root package's tests and the CLI's (`#[path]`).

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::process::Child;

/// Bytes kept of a child's stderr (the last ones win when it says more).
const KEPT: usize = 256 * 1024;

/// Prints what the child wrote to stderr if dropped while the test panics.
#[derive(Debug)]
pub struct ChildLog {
    what: String,
    text: Arc<Mutex<Vec<u8>>>,
}

impl ChildLog {
    /// Takes `child`'s stderr, which must have been piped.
    pub fn capture(child: &mut Child, what: &str) -> Self {
        let mut stderr = child.stderr.take().expect("the child's stderr is piped");
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = text.clone();
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 8192];
            while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
                let mut kept = sink.lock().expect("log lock");
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > KEPT {
                    let excess = kept.len() - KEPT;
                    kept.drain(..excess);
                }
            }
        });
        Self {
            what: what.to_owned(),
            text,
        }
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.text.lock().map(|t| t.clone()).unwrap_or_default();
            eprintln!(
                "--- stderr of {} ---\n{}",
                self.what,
                String::from_utf8_lossy(&text)
            );
        }
    }
}
