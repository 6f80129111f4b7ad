//! Finds node and installs stock zerorpc-node once per test binary
//! (`tests/interop/node-setup.sh` into `tests/interop/node/node_modules`), for the tests that
//! run `tests/interop/node/{client,server}.js`. Without node (or npm, or the system libzmq)
//! the tests are skipped with a message, except under CI (`CI` set), where `.ci/run`
//! installs them and a missing one fails the test.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;
use tokio::time::timeout;

/// Longest wait for installing zerorpc-node (a download and a native build).
const SETUP_LIMIT: Duration = Duration::from_secs(600);

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("tests/interop/node-setup.sh").exists())
        .expect("the repository holds tests/interop/node-setup.sh")
}

/// `tests/interop/node`, where the scripts and their node_modules are.
pub fn node_dir() -> PathBuf {
    repo_root().join("tests").join("interop").join("node")
}

/// Whether zerorpc-node is there to test against: `false` (after saying why on stderr) when
/// node is not installed outside CI; a failed install fails the test.
pub async fn available() -> bool {
    static READY: OnceCell<Result<bool, String>> = OnceCell::const_new();
    match READY.get_or_init(setup).await {
        Ok(ready) => *ready,
        Err(e) => panic!("{e}"),
    }
}

async fn setup() -> Result<bool, String> {
    let has_node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_node {
        if std::env::var_os("CI").is_some() {
            return Err(
                "CI must have node for the zerorpc-node tests (.ci/run installs it)".into(),
            );
        }
        eprintln!("skipped: node is not installed (Debian: nodejs npm libzmq3-dev)");
        return Ok(false);
    }
    let script = repo_root().join("tests/interop/node-setup.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).stdin(Stdio::null()).kill_on_drop(true);
    let output = match timeout(SETUP_LIMIT, cmd.output()).await {
        Err(_) => return Err(format!("{} took too long", script.display())),
        Ok(Err(e)) => return Err(format!("cannot run bash: {e}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        return Err(format!(
            "installing zerorpc-node with {} failed ({}); it needs npm and libzmq3-dev\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(true)
}

/// A zerorpc-node server (`server.js`) on a free loopback port, once it says it is bound:
/// its endpoint and its process, killed when dropped.
pub async fn start_server() -> (String, tokio::process::Child) {
    use tokio::io::AsyncBufReadExt;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let mut child = node_script("server.js", &[&endpoint])
        .spawn()
        .expect("node server.js");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let ready = timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("server.js ready in time")
        .expect("stdout")
        .expect("a ready line");
    assert_eq!(ready, format!("ready {endpoint}"));
    (endpoint, child)
}

/// `node SCRIPT ARGS...` in `tests/interop/node`, stdout and stderr piped, killed on drop.
pub fn node_script(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(node_dir().join(script))
        .args(args)
        .current_dir(node_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}
