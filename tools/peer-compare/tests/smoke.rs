//! Smoke test of the comparison binary: a tiny run of every system prints one table row
//! each, the raw row the 1.00x baseline of the raw columns, upstream of its own, the floor
//! of its; NATS is skipped with a message when no nats-server is given (and measured
//! when `PEER_COMPARE_NATS` names one). Not part of the default test run (the crate
//! is not a default member): `cargo test -p zmesh-peer-compare`.

use std::time::Duration;

/// The whole tiny run; generous because it builds four servers in child processes.
const RUN_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_tiny_run_measures_every_system_and_prints_the_table() {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zmesh-peer-compare"))
        .args([
            "--count",
            "200",
            "--warmup",
            "20",
            "--pipelined-count",
            "1000",
        ])
        .args(["--in-flight", "16", "--duration", "10", "--pin", "off"])
        .env_remove("PEER_COMPARE_NATS")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, child)
        .await
        .expect("the run finished within RUN_LIMIT")
        .expect("the binary ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for system in [
        "TCP floor (blocking)",
        "raw zeromq (fork)",
        "raw zeromq 0.7.0 (upstream)",
        "zmesh",
        "tarpc (bincode)",
        "tonic (gRPC)",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {system} |")))
            .unwrap_or_else(|| panic!("a {system:?} row in {stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | system | p50 | p99 | seq/s | pipelined/s | p50 vs raw | p50 vs upstream |
        // p50 vs floor | pipelined vs raw | pipelined vs upstream |
        assert_eq!(cells.len(), 12, "{row}");
        for cell in &cells[2..6] {
            let value: f64 = cell.parse().unwrap_or_else(|_| panic!("{cell:?} in {row}"));
            assert!(value > 0.0, "{row}");
        }
        match system {
            "raw zeromq (fork)" => assert_eq!([cells[6], cells[9]], ["1.00x", "1.00x"], "{row}"),
            "raw zeromq 0.7.0 (upstream)" => {
                assert_eq!([cells[7], cells[10]], ["1.00x", "1.00x"], "{row}")
            }
            "TCP floor (blocking)" => assert_eq!(cells[8], "1.00x", "{row}"),
            _ => {}
        }
    }
    assert!(
        stdout.contains(
            "floor 200+1000, raw 200+1000, upstream 200+1000, zmesh 200+1000, tarpc 200+1000, \
             tonic 200+1000"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("skipped NATS request-reply: no server given"),
        "{stdout}"
    );
}
