//! Runs the proxy device until Ctrl-C or SIGTERM, with the options the CLI will expose as
//! `zmesh proxy`.
//!
//! ```text
//! cargo run --example proxy -- --frontend tcp://127.0.0.1:4242 --backend tcp://127.0.0.1:4243 &
//! cargo run --example echo_worker -- tcp://127.0.0.1:4243 &     # as many as you like
//! cargo run --example echo_client                               # calls through the device
//! ```
//! Add `--events-in tcp://127.0.0.1:4244 --events-out tcp://127.0.0.1:4245` to also forward
//! events from publishers (connected to events-in) to subscribers (connected to events-out).

use std::time::Duration;

use clap::{Arg, Command};
use zmesh::device::{Device, DeviceConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let defaults = DeviceConfig::default();
    let matches = Command::new("proxy")
        .about("zmesh proxy device: one stable address in front of a pool of worker nodes")
        .arg(
            Arg::new("frontend")
                .long("frontend")
                .required(true)
                .help("endpoint clients call, e.g. tcp://127.0.0.1:4242"),
        )
        .arg(
            Arg::new("backend")
                .long("backend")
                .required(true)
                .help("endpoint worker nodes connect to, e.g. tcp://127.0.0.1:4243"),
        )
        .arg(
            Arg::new("events-in")
                .long("events-in")
                .requires("events-out")
                .help("event forwarder: endpoint publishers connect to (XSUB)"),
        )
        .arg(
            Arg::new("events-out")
                .long("events-out")
                .requires("events-in")
                .help("event forwarder: endpoint subscribers connect to (XPUB)"),
        )
        .arg(
            Arg::new("heartbeat-ms")
                .long("heartbeat-ms")
                .value_parser(clap::value_parser!(u64))
                .help("heartbeat period toward clients in ms (default 5000)"),
        )
        .arg(
            Arg::new("max-queue")
                .long("max-queue")
                .value_parser(clap::value_parser!(usize))
                .help("calls queued per service before ERR Overloaded (default 1000)"),
        )
        .get_matches();

    let mut config = DeviceConfig::default();
    if let Some(ms) = matches.get_one::<u64>("heartbeat-ms") {
        config = config.heartbeat(Duration::from_millis(*ms));
    }
    config = config.max_queue(
        matches
            .get_one::<usize>("max-queue")
            .copied()
            .unwrap_or(defaults.max_queue),
    );
    let arg = |name: &str| matches.get_one::<String>(name).cloned();
    let mut builder = Device::builder()
        .frontend(arg("frontend").unwrap_or_default())
        .backend(arg("backend").unwrap_or_default())
        .config(config);
    if let (Some(events_in), Some(events_out)) = (arg("events-in"), arg("events-out")) {
        builder = builder.events(events_in, events_out);
    }
    let device = builder.start().await?;
    println!(
        "proxy: clients call {}, workers connect to {}",
        device.frontend(),
        device.backend()
    );
    if let Some((events_in, events_out)) = device.events() {
        println!("proxy: publishers connect to {events_in}, subscribers to {events_out}");
    }
    device.run_until(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
