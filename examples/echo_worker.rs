//! Serves the echo reference service behind a proxy device (see `examples/proxy.rs`) until
//! Ctrl-C, then leaves gracefully (the device routes no new calls to it).
//!
//! ```text
//! cargo run --example echo_worker -- tcp://127.0.0.1:4243      # the device's backend
//! ```

use zmesh::Node;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let backend = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:4243".into());
    // Safe to run twice: the device may re-run these on another worker if this one dies.
    let mut echo = zmesh_echo::service();
    echo.mark_idempotent(["echo", "upper", "size"])?;
    let node = Node::builder()
        .name("echo")
        .worker_of(&backend)
        .service(echo)
        .export_unprefixed("echo")
        .start()
        .await?;
    println!("echo worker of {backend}");
    node.run_until(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
