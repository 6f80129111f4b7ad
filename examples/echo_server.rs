//! Serves the echo reference service until Ctrl-C or SIGTERM, then shuts down gracefully.
//!
//! ```text
//! cargo run --example echo_server                              # tcp://127.0.0.1:4242
//! cargo run --example echo_server -- ipc:///tmp/zmesh-echo.sock
//! ```
//! Methods are also exported unprefixed, so a stock zerorpc client can call `upper("hi")`.

use zmesh::{Node, NodeConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:4242".into());
    let mut config = NodeConfig::default();
    if let Some(ms) = std::env::var("ZMESH_HEARTBEAT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config = config.heartbeat(std::time::Duration::from_millis(ms));
    }
    let node = Node::builder()
        .name("echo")
        .bind(&endpoint)
        .service(zmesh_echo::service())
        .export_unprefixed("echo")
        .config(config)
        .start()
        .await?;
    println!("serving echo on {}", node.endpoint());
    node.run_until(shutdown_signal()).await;
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
