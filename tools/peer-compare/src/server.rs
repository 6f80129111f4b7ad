//! Server processes: the parent starts one child per system (this binary's hidden `serve`
//! verb) as a `zmesh_bench::ServerChild`, which reads its `READY <address>` line and kills
//! it on drop; the child serves until its stdin closes, so it also goes away when the
//! parent dies.

use std::process::Command;
use std::time::Duration;

use zmesh_bench::ServerChild;
use zmesh_bench::child::{announce, wait_for_parent};

use crate::{Error, Flavour, System};

/// Longest a server may take to start and announce its address.
const START_LIMIT: Duration = Duration::from_secs(10);

/// Starts `serve SYSTEM` and waits (bounded) for its announcement; the child's endpoint is
/// what the client connects to (a zeromq endpoint or a `host:port`).
pub(crate) fn spawn(
    system: System,
    flavour: Flavour,
    cpu: Option<usize>,
    nats: Option<&str>,
) -> Result<ServerChild, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Server(format!("cannot find this executable: {e}")))?;
    let mut command = Command::new(exe);
    command.args(["--runtime", flavour.arg()]);
    if let Some(url) = nats {
        command.args(["--nats", url]);
    }
    command.args(["serve", system.arg()]);
    if let Some(cpu) = cpu {
        command.args(["--cpu", &cpu.to_string()]);
    }
    let name = format!("{} server", system.arg());
    ServerChild::spawn(&name, command, START_LIMIT).map_err(|e| match &e {
        zmesh_bench::SpawnError::Start { source, .. } => Error::Server(format!("{e}: {source}")),
        _ => Error::Server(e.to_string()),
    })
}

/// The child's side: serves `system`, announces `READY <address>`, and returns when stdin
/// closes (or the server stops by itself).
pub(crate) async fn serve(system: System, nats: Option<&str>) -> Result<(), Error> {
    let parent_gone = tokio::task::spawn_blocking(wait_for_parent);
    let announce = |address: &str| {
        announce(address).map_err(|e| Error::Server(format!("cannot announce the address: {e}")))
    };
    match system {
        System::Floor => {
            announce(&crate::floor::serve()?)?;
            let _ = parent_gone.await;
        }
        System::Upstream => {
            let (address, echo) = crate::upstream::serve().await?;
            announce(&address)?;
            tokio::select! {
                _ = parent_gone => {}
                () = echo => {}
            }
        }
        System::Nats => {
            let url = nats.ok_or_else(|| Error::Server("the nats row needs --nats".to_owned()))?;
            let (address, answer) = crate::nats::serve(url).await?;
            announce(&address)?;
            tokio::select! {
                _ = parent_gone => {}
                () = answer => {}
            }
        }
        System::Raw => {
            let (address, echo) = crate::raw::serve().await?;
            announce(&address)?;
            tokio::select! {
                _ = parent_gone => {}
                () = echo => {}
            }
        }
        System::Zmesh | System::Node => {
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
