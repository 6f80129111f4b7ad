//! The README's mesh key example: a node that only key holders can call (and a plain
//! endpoint for local tools), and a keyed client. Exits by itself.
//!
//! ```text
//! zmesh keygen --out mesh.key
//! cargo run --example mesh_key_basics -- mesh.key
//! ```

use std::time::Duration;
use zmesh::{Client, ClientConfig, MeshKey, Node};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key_file = std::env::args()
        .nth(1)
        .ok_or("usage: mesh_key_basics KEY_FILE")?;
    let key = MeshKey::from_file(&key_file)?; // or MeshKey::from_env("ZMESH_MESH_KEY")
    let node = Node::builder()
        .bind("tcp://127.0.0.1:4280") // sealed: key holders only
        .bind_plain("tcp://127.0.0.1:4281") // plain zerorpc, local tools
        .service(zmesh_echo::service())
        .mesh_key(key.clone())
        .start()
        .await?;
    let config = ClientConfig::default().mesh_key(key);
    let client = Client::with_config("tcp://127.0.0.1:4280", config);
    let up: String = client.call("echo.upper", ("hi",)).await?;
    println!("{up}");
    node.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
