//! Provides the child processes `zmesh demo` starts: each one is this same binary running a
//! verb (`serve`, `proxy`), read line by line for the endpoints it announces, and always
//! cleaned up: stopped gracefully (SIGTERM, then SIGKILL after a grace period) by
//! [`Fleet::shutdown`], and killed by the `Drop` of its handle if the demo ends any other way
//! (an error, a panic unwinding).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::CliError;

/// Environment variable that asks a `zmesh` process to be sent SIGTERM when its parent dies,
/// so the demo's children go away even if the demo itself is killed with SIGKILL.
pub(crate) const DIE_WITH_PARENT: &str = "ZMESH_DIE_WITH_PARENT";

/// Lines of a child's stderr kept to explain its failure.
const STDERR_TAIL: usize = 20;

/// Honours [`DIE_WITH_PARENT`]; called first thing in `main`.
pub(crate) fn die_with_parent_if_asked() {
    if std::env::var_os(DIE_WITH_PARENT).is_none() {
        return;
    }
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
        tracing::debug!(error = %e, "cannot ask for a parent-death signal");
    }
    // The parent may have died before the request above took effect.
    let parent = rustix::process::getppid();
    if parent.is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        std::process::exit(1);
    }
}

/// One child process.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    /// What the demo calls it (`node-a`, `proxy`, ...).
    pub(crate) name: String,
    /// Its process id.
    pub(crate) pid: u32,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Whether it has been reaped.
    exited: bool,
}

impl ChildProcess {
    /// The next line the child prints on stdout, within `wait`.
    pub(crate) async fn line(&mut self, wait: Duration) -> Result<String, CliError> {
        match tokio::time::timeout(wait, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => {
                // Its stdout closed: it exited. Reap it to say how.
                let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                self.exited = status.is_some();
                Err(CliError::Other(format!(
                    "{} exited ({}) before announcing itself{}",
                    self.name,
                    status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string()),
                    self.stderr_tail()
                )))
            }
            Err(_) => Err(CliError::Other(format!(
                "{} announced nothing within {wait:?}{}",
                self.name,
                self.stderr_tail()
            ))),
        }
    }

    /// The next line, which must start with `word` followed by a space; returns the rest.
    pub(crate) async fn expect(&mut self, word: &str, wait: Duration) -> Result<String, CliError> {
        let line = self.line(wait).await?;
        match line.strip_prefix(word).and_then(|r| r.strip_prefix(' ')) {
            Some(rest) => Ok(rest.to_owned()),
            None => Err(CliError::Other(format!(
                "{} printed {line:?}, expected a line starting with {word:?}",
                self.name
            ))),
        }
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        if tail.is_empty() {
            String::new()
        } else {
            let lines: Vec<String> = tail.into_iter().collect();
            format!("; its stderr:\n  {}", lines.join("\n  "))
        }
    }

    fn signal(&self, signal: Signal) {
        if self.exited {
            return;
        }
        let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        // ESRCH (already gone, not reaped yet) is fine: wait() below reaps it.
        let _ = kill_process(pid, signal);
    }

    /// Kills it at once (SIGKILL) and reaps it: what a crash looks like to its peers.
    pub(crate) async fn kill(&mut self) {
        self.signal(Signal::KILL);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_ok()
        {
            self.exited = true;
        }
    }

    /// Asks it to stop (SIGTERM: a graceful shutdown), waits up to `grace`, then kills it.
    /// Returns whether it stopped by itself.
    pub(crate) async fn stop(&mut self, grace: Duration) -> bool {
        if self.exited {
            return true;
        }
        self.signal(Signal::TERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => {
                self.exited = true;
                true
            }
            Err(_) => {
                self.kill().await;
                false
            }
        }
    }
}

/// Every child process of one demo run. Dropping it kills those still running (the
/// `Child` handles are `kill_on_drop`), whatever ended the run.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    children: Vec<ChildProcess>,
}

impl Fleet {
    /// Starts `zmesh ARGS...` (this executable) as a child named `name`, with stdout read
    /// line by line and stderr kept for error messages. Returns its index.
    pub(crate) fn spawn(&mut self, name: &str, args: &[String]) -> Result<usize, CliError> {
        let exe = std::env::current_exe()
            .map_err(|e| CliError::Other(format!("cannot find the zmesh executable: {e}")))?;
        let mut child = Command::new(exe)
            .args(args)
            .env(DIE_WITH_PARENT, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CliError::Other(format!("cannot start {name}: {e}")))?;
        let pid = child.id().unwrap_or_default();
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(pipe) = child.stderr.take() {
            let tail = stderr.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Ok(mut tail) = tail.lock() {
                        if tail.len() == STDERR_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
            });
        }
        self.children.push(ChildProcess {
            name: name.to_owned(),
            pid,
            child,
            lines,
            stderr,
            exited: false,
        });
        Ok(self.children.len() - 1)
    }

    /// The child at `index`.
    pub(crate) fn get(&mut self, index: usize) -> &mut ChildProcess {
        &mut self.children[index]
    }

    /// Stops every child still running, all at once, each with `grace` to shut down
    /// gracefully. Returns (stopped gracefully, killed, already gone).
    pub(crate) async fn shutdown(&mut self, grace: Duration) -> (usize, usize, usize) {
        let gone = self.children.iter().filter(|c| c.exited).count();
        let results = futures::future::join_all(
            self.children
                .iter_mut()
                .filter(|c| !c.exited)
                .map(|c| c.stop(grace)),
        )
        .await;
        let graceful = results.iter().filter(|ok| **ok).count();
        (graceful, results.len() - graceful, gone)
    }
}
