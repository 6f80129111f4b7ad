//! Server processes: the parent starts one child per system (this binary's hidden `serve`
//! verb) and reads its `READY <address>` line; the child serves until its stdin closes, so
//! it also goes away when the parent dies. The parent kills and reaps it on drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::{Error, Flavour, System};

/// Longest a server may take to start and announce its address.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A server child process; killed and reaped on drop.
pub(crate) struct Child {
    child: std::process::Child,
    /// What the client connects to (a zeromq endpoint or a `host:port`).
    pub(crate) address: String,
    // Kept open: the server exits when its stdin closes.
    _stdout: BufReader<ChildStdout>,
}

impl Child {
    /// Starts `serve SYSTEM` and waits (bounded) for its announcement.
    pub(crate) fn spawn(
        system: System,
        flavour: Flavour,
        cpu: Option<usize>,
    ) -> Result<Self, Error> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::Server(format!("cannot find this executable: {e}")))?;
        let mut command = Command::new(exe);
        command
            .args(["--runtime", flavour.arg(), "serve", system.arg()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(cpu) = cpu {
            command.args(["--cpu", &cpu.to_string()]);
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::Server(format!("cannot start the {} server: {e}", system.arg())))?;
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
        let (line, reader) = match rx.recv_timeout(START_LIMIT) {
            Ok((Ok(line), reader)) => (line, reader),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Server(format!(
                    "the {} server did not start within {START_LIMIT:?}",
                    system.arg()
                )));
            }
        };
        let Some(address) = line.trim().strip_prefix("READY ").map(str::to_owned) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Server(format!(
                "the {} server said {line:?}",
                system.arg()
            )));
        };
        Ok(Self {
            child,
            address,
            _stdout: reader,
        })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: serves `system`, announces `READY <address>`, and returns when stdin
/// closes (or the server stops by itself).
pub(crate) async fn serve(system: System) -> Result<(), Error> {
    let parent_gone = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    let announce = |address: &str| {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "READY {address}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::Server(format!("cannot announce the address: {e}")))
    };
    match system {
        System::Raw => {
            let (address, echo) = crate::raw::serve().await?;
            announce(&address)?;
            tokio::select! {
                _ = parent_gone => {}
                () = echo => {}
            }
        }
        System::Zmesh => {
            let (address, node) = crate::zmesh::serve().await?;
            announce(&address)?;
            let _ = parent_gone.await;
            node.shutdown(Duration::from_millis(200)).await;
        }
        System::Tarpc => {
            let (address, accept) = crate::tarpc_echo::serve().await?;
            announce(&address)?;
            tokio::select! {
                _ = parent_gone => {}
                () = accept => {}
            }
        }
        System::Tonic => {
            let (address, server) = crate::grpc::serve().await?;
            announce(&address)?;
            tokio::select! {
                _ = parent_gone => {}
                () = server => {}
            }
        }
    }
    Ok(())
}
