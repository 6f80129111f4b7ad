//! The README's mesh key example: a node that only key holders can call (and a plain
//! endpoint for local tools), a keyed client, and a key rotation. Exits by itself.
//!
//! ```text
//! zmesh keygen --out mesh.key && zmesh keygen --out new.key
//! cargo run --example mesh_key_basics -- mesh.key new.key
//! ```

use std::time::{Duration, SystemTime};
use zmesh::{Client, ClientConfig, MeshKey, Node};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files = std::env::args().skip(1);
    let (key_file, new_key_file) = (
        files.next().ok_or("mesh.key?")?,
        files.next().ok_or("new.key?")?,
    );
    let key = MeshKey::from_file(&key_file)?; // or MeshKey::from_env("ZMESH_MESH_KEY")
    let node = Node::builder()
        .bind("tcp://127.0.0.1:4280") // sealed: key holders only
        .bind_plain("tcp://127.0.0.1:4281") // plain zerorpc, local tools
        .service(zmesh_echo::service())
        .mesh_key(key.clone())
        .start()
        .await?;
    let client = Client::with_config(
        "tcp://127.0.0.1:4280",
        ClientConfig::default().mesh_key(key.clone()),
    );
    let up: String = client.call("echo.upper", ("hi",)).await?;
    println!("{up}");

    // Rotation: the node moves to a new key and accepts the old one for a day, while the
    // other members move too (a fixed end: a restart does not give the old key another day).
    let until = SystemTime::now() + Duration::from_secs(86_400);
    let rotated = MeshKey::from_file(&new_key_file)?.with_previous_until(&key, until);
    node.shutdown(Duration::from_secs(1)).await;
    let node = Node::builder()
        .bind("tcp://127.0.0.1:4280")
        .service(zmesh_echo::service())
        .mesh_key(rotated)
        .start()
        .await?;
    let still: String = client
        .call("echo.upper", ("old key, rotated node",))
        .await?;
    println!("{still}");
    node.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
