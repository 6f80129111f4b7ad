//! Smoke tests of the comparison binary: with no server listening every brokered system is
//! skipped with a message naming where it was looked for; zmesh's queues (which the run
//! starts itself) and, with the servers of `servers.sh` (an ignored test, as it needs them
//! running), the brokers print a row per system and mode of a tiny run and what each
//! acknowledgement promises. Not part of the default test run (the crate is not a
//! default member): `cargo test -p zmesh-jobs-compare`.

use std::time::Duration;

/// The whole run; generous because the skip path waits for refused connections and the
/// tiny run declares queues and streams.
const RUN_LIMIT: Duration = Duration::from_secs(120);

const VARIABLES: [&str; 3] = [
    "JOBS_COMPARE_RABBITMQ",
    "JOBS_COMPARE_NATS",
    "JOBS_COMPARE_NATS_SYNC_ALWAYS",
];

/// Runs the binary with `args` and the environment's `JOBS_COMPARE_*` replaced by `env`;
/// returns its stdout after checking it succeeded.
async fn run(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_zmesh-jobs-compare"));
    for variable in VARIABLES {
        command.env_remove(variable);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .expect("the run finished within RUN_LIMIT")
        .expect("the binary ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("its address").port()
}

#[tokio::test]
async fn absent_servers_are_skipped_with_a_message_and_the_run_succeeds() {
    let rabbit = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let nats = format!("nats://127.0.0.1:{}", closed_port());
    let stdout = run(
        &[
            "--systems",
            "rabbitmq,rabbitmq-quorum,jetstream,jetstream-sync-always",
            "--rabbitmq",
            &rabbit,
            "--nats",
            &nats,
        ],
        &[],
    )
    .await;
    for system in ["RabbitMQ (classic queue)", "RabbitMQ (quorum queue)"] {
        assert!(
            stdout.contains(&format!(
                "skipped {system}: cannot connect to RabbitMQ at {rabbit}"
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "skipped NATS JetStream (default sync): cannot connect to NATS JetStream at {nats}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "skipped NATS JetStream (sync_interval: always): no server configured \
             (JOBS_COMPARE_NATS_SYNC_ALWAYS"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("no system to measure"), "{stdout}");
    assert!(
        !stdout.contains("| system |"),
        "no table without systems: {stdout}"
    );
}

/// A run of 200 jobs per mode at 1 and 8 submitters.
const TINY_RUN: &[&str] = &[
    "--count",
    "200",
    "--warmup",
    "20",
    "--rounds",
    "2",
    "--duration",
    "10",
    "--submitters",
    "1,8",
];

#[tokio::test]
async fn a_tiny_run_of_zmesh_queues_at_both_levels_prints_every_mode_and_its_durability() {
    let data = tempfile::tempdir().expect("a temp dir");
    let data = data.path().to_str().expect("a UTF-8 path");
    let stdout = run(
        &[
            TINY_RUN,
            &["--systems", "zmesh-fsync,zmesh-os", "--zmesh-data", data],
        ]
        .concat(),
        &[],
    )
    .await;
    for level in ["fsync", "os"] {
        check_rows(
            &stdout,
            &format!("zmesh jobs {}, {level}", env!("CARGO_PKG_VERSION")),
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("- zmesh jobs") && l.contains(&format!("level {level}:"))),
            "the {level} level stated: {stdout}"
        );
    }
    assert!(
        stdout.contains("zmesh's queue child on a current-thread runtime"),
        "the queue's runtime stated, by default that of `zmesh serve jobs`: {stdout}"
    );
    assert!(
        std::fs::read_dir(data)
            .expect("the data dir")
            .next()
            .is_none(),
        "the queues' stores are removed at the end"
    );
}

#[tokio::test]
async fn a_queue_child_on_a_multi_thread_runtime_is_measured_when_asked_for() {
    let data = tempfile::tempdir().expect("a temp dir");
    let data = data.path().to_str().expect("a UTF-8 path");
    let stdout = run(
        &[
            TINY_RUN,
            &[
                "--systems",
                "zmesh-os",
                "--queue-runtime",
                "multi-thread",
                "--zmesh-data",
                data,
            ],
        ]
        .concat(),
        &[],
    )
    .await;
    check_rows(
        &stdout,
        &format!("zmesh jobs {}, os", env!("CARGO_PKG_VERSION")),
    );
    assert!(
        stdout.contains("zmesh's queue child on a multi-thread runtime"),
        "the queue's runtime stated: {stdout}"
    );
}

#[tokio::test]
#[ignore = "needs the servers of `eval \"$(tools/jobs-compare/servers.sh start)\"`"]
async fn a_tiny_run_against_the_servers_prints_every_mode_and_its_durability() {
    let env: Vec<(&str, String)> = VARIABLES
        .iter()
        .filter_map(|&v| std::env::var(v).ok().map(|url| (v, url)))
        .collect();
    assert!(
        env.iter().any(|(v, _)| *v == "JOBS_COMPARE_RABBITMQ")
            && env.iter().any(|(v, _)| *v == "JOBS_COMPARE_NATS"),
        "run `eval \"$(tools/jobs-compare/servers.sh start)\"` first"
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(v, url)| (*v, url.as_str())).collect();
    let stdout = run(
        &[
            TINY_RUN,
            &[
                "--systems",
                "rabbitmq,rabbitmq-quorum,jetstream,jetstream-sync-always",
            ],
        ]
        .concat(),
        &env,
    )
    .await;
    let mut systems = vec!["RabbitMQ, classic queue", "RabbitMQ, quorum queue"];
    systems.push("default sync");
    if env
        .iter()
        .any(|(v, _)| *v == "JOBS_COMPARE_NATS_SYNC_ALWAYS")
    {
        systems.push("sync_interval: always");
    }
    for system in systems {
        check_rows(&stdout, system);
    }
}

/// Each system's rows of a [`TINY_RUN`] (every job of the count measured, figures above zero)
/// and its durability line.
fn check_rows(stdout: &str, system: &str) {
    for submitters in ["1", "8"] {
        let row = stdout
            .lines()
            .find(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                cells.len() == 8 && cells[1].contains(system) && cells[2] == submitters
            })
            .unwrap_or_else(|| panic!("a {system:?} row at {submitters} in {stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | system | submitters | jobs | p50 | p99 | jobs/s |
        assert_eq!(cells[3], "200", "every job of the count measured: {row}");
        for cell in &cells[4..7] {
            let value: f64 = cell.parse().unwrap_or_else(|_| panic!("{cell:?} in {row}"));
            assert!(value > 0.0, "{row}");
        }
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("- ") && l.contains(system) && l.contains("fsync")),
        "{system}'s durability stated: {stdout}"
    );
}
