//! Child processes for the tests that kill one: the test binary started again as its
//! `child` test with some environment, its stdout's lines read through a thread so that
//! every wait is bounded.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// The longest wait for a child's next line.
const LINE_WAIT: Duration = Duration::from_secs(30);

/// Starts this test binary again as its `child` test with `env`.
pub(crate) fn spawn_child(env: &[(&str, &OsStr)]) -> (Child, Receiver<String>) {
    let mut proc = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child", "--nocapture"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = BufReader::new(proc.stdout.take().expect("stdout"));
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (proc, lines)
}

/// The child's next line: a stuck child fails the test instead of hanging it.
pub(crate) fn next_line(proc: &mut Child, lines: &Receiver<String>) -> String {
    lines.recv_timeout(LINE_WAIT).unwrap_or_else(|_| {
        let _ = proc.kill();
        panic!("the child printed nothing for {LINE_WAIT:?}");
    })
}

/// Kills the child (SIGKILL) and reaps it.
pub(crate) fn kill(mut proc: Child) {
    proc.kill().expect("SIGKILL");
    proc.wait().expect("wait");
}

/// The runtime a child process runs on.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// In a child process: starts the node `builder` describes with a short heartbeat, says
/// `READY`, and serves until killed (bounded, should the test die first).
pub(crate) async fn serve_until_killed(builder: zmesh_core::NodeBuilder) {
    let _node = builder
        .config(zmesh_core::NodeConfig::default().heartbeat(HEARTBEAT))
        .start()
        .await
        .expect("the node starts");
    println!("READY");
    tokio::time::sleep(Duration::from_secs(240)).await;
}

/// The heartbeat of the tests' nodes and clients: a lost peer is noticed quickly.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);
