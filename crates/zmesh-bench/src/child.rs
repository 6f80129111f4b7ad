//! A bench server in a child process, so client and server never share a runtime: the
//! parent starts it and waits (bounded) for its `READY <endpoint>` line; the child serves
//! until its stdin closes, so it also goes away when the parent dies. The parent kills and
//! reaps it on drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// What a server child prints once it serves: `READY <endpoint>` (the rest of the line is
/// the endpoint, which may be several words, such as a device's `<frontend> <backend>`).
const READY: &str = "READY ";

/// Why a server child did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The process could not be started.
    #[error("cannot start the {name}")]
    Start {
        /// What the server is (as the caller named it).
        name: String,
        /// What the spawn said.
        #[source]
        source: std::io::Error,
    },
    /// It printed nothing (or exited) within the limit.
    #[error("the {name} did not start within {limit:?}")]
    Silent {
        /// What the server is.
        name: String,
        /// How long it was given.
        limit: Duration,
    },
    /// Its first line was not `READY <endpoint>`.
    #[error("the {name} said {line:?}, not READY <endpoint>")]
    Said {
        /// What the server is.
        name: String,
        /// The line it printed.
        line: String,
    },
}

/// A server child process; killed and reaped on drop.
#[derive(Debug)]
pub struct ServerChild {
    child: Child,
    endpoint: String,
    // Kept open: the server exits when its stdin closes, and a closed stdout could fail its
    // later writes.
    _stdout: BufReader<ChildStdout>,
}

impl ServerChild {
    /// Starts `command` (with stdin and stdout piped, stderr inherited) and waits up to
    /// `limit` for its announcement. `name` says what it is in errors ("the raw bench
    /// server").
    pub fn spawn(name: &str, mut command: Command, limit: Duration) -> Result<Self, SpawnError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| SpawnError::Start {
                name: name.to_owned(),
                source,
            })?;
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        // Read the announcement on a thread so a server that never speaks cannot hang us.
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = tx.send((read.map(|_| line), reader));
        });
        let (line, reader) = match rx.recv_timeout(limit) {
            Ok((Ok(line), reader)) if !line.is_empty() => (line, reader),
            _ => {
                reap(&mut child);
                return Err(SpawnError::Silent {
                    name: name.to_owned(),
                    limit,
                });
            }
        };
        let Some(endpoint) = line.trim().strip_prefix(READY) else {
            reap(&mut child);
            return Err(SpawnError::Said {
                name: name.to_owned(),
                line,
            });
        };
        Ok(Self {
            endpoint: endpoint.to_owned(),
            child,
            _stdout: reader,
        })
    }

    /// What the server announced.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's process id (to read its CPU time from /proc).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The child's side, once it serves: prints `READY <endpoint>` on stdout.
pub fn announce(endpoint: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY}{endpoint}")?;
    stdout.flush()
}

/// The child's side: blocks until stdin closes (the parent dropped its [`ServerChild`], or
/// exited); an async server runs it in `spawn_blocking`.
pub fn wait_for_parent() {
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn the_announced_endpoint_is_the_rest_of_the_line() {
        let child = ServerChild::spawn(
            "test server",
            shell("echo 'READY tcp://a:1 tcp://b:2'; cat >/dev/null"),
            LIMIT,
        )
        .expect("starts");
        assert_eq!(child.endpoint(), "tcp://a:1 tcp://b:2");
    }

    #[test]
    fn another_first_line_is_an_error_naming_the_server() {
        let error =
            ServerChild::spawn("test server", shell("echo hello"), LIMIT).expect_err("not READY");
        assert!(matches!(&error, SpawnError::Said { line, .. } if line == "hello\n"));
        assert_eq!(
            error.to_string(),
            "the test server said \"hello\\n\", not READY <endpoint>"
        );
    }

    #[test]
    fn a_server_that_exits_silently_or_stays_silent_is_an_error() {
        let exited = ServerChild::spawn("test server", shell("exit 0"), LIMIT);
        assert!(matches!(exited, Err(SpawnError::Silent { .. })));
        let silent =
            ServerChild::spawn("test server", shell("sleep 30"), Duration::from_millis(100));
        assert!(matches!(silent, Err(SpawnError::Silent { .. })));
    }

    #[test]
    fn a_missing_program_is_a_start_error() {
        let error = ServerChild::spawn(
            "test server",
            Command::new("/nonexistent/zmesh-bench-server"),
            LIMIT,
        )
        .expect_err("no such program");
        assert!(matches!(error, SpawnError::Start { .. }));
    }
}
