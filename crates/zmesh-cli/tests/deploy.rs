//! The deployment files in `deploy/` stay true: systemd accepts the unit (`systemd-analyze
//! verify`, with its ExecStart pointed at the binary under test; skipped with a message where
//! systemd-analyze is absent), and the example `node.toml` is a config `zmesh serve` starts
//! from, the unit's own arguments included. Every child is killed when its test ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{Server, finish, run, stderr, stdout, zmesh};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

/// The unit's `ExecStart=` line, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn systemd_accepts_the_unit() {
    let unit = std::fs::read_to_string(deploy("zmesh.service")).expect("deploy/zmesh.service");
    let words = exec_start(&unit);
    assert_eq!(
        words[0], "/usr/local/bin/zmesh",
        "installed where the unit says"
    );
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed (Debian's systemd package)");
        return;
    }
    // The same unit, run from the binary under test (verify checks that it exists).
    let dir = tempfile::tempdir().expect("temp dir");
    let local = unit.replace("/usr/local/bin/zmesh", env!("CARGO_BIN_EXE_zmesh"));
    let path = dir.path().join("zmesh.service");
    std::fs::write(&path, local).expect("unit copy");
    let mut verify = tokio::process::Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = finish(
        verify.spawn().expect("systemd-analyze"),
        "systemd-analyze verify",
    )
    .await;
    assert!(
        out.status.success() && stderr(&out).trim().is_empty(),
        "systemd-analyze verify: {} {}",
        stdout(&out),
        stderr(&out)
    );
}

/// `zmesh serve` starts from the example file with the unit's arguments (on a free loopback
/// port instead of the file's 4242: a flag beats the file).
#[tokio::test]
async fn the_example_config_starts_a_node_with_the_units_arguments() {
    let unit = std::fs::read_to_string(deploy("zmesh.service")).expect("deploy/zmesh.service");
    let words = exec_start(&unit);
    let config = deploy("node.toml").display().to_string();
    let mut command = zmesh();
    for word in &words[1..] {
        command.arg(if word == "/etc/zmesh/node.toml" {
            config.as_str()
        } else {
            word.as_str()
        });
    }
    command.args(["--bind", "tcp://127.0.0.1:0"]);
    let node = Server::start(command, "zmesh serve from deploy/node.toml").await;
    let out = run(&["call", &node.endpoint, "echo.upper", "deployed"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "\"DEPLOYED\"");
}

/// Every `ZMESH_...` variable the Kubernetes example sets is one `zmesh serve` reads (clap
/// lists each flag's variable in `--help`), and its SRV name is the headless Service's.
#[tokio::test]
async fn the_kubernetes_example_sets_only_variables_zmesh_serve_reads() {
    let manifest =
        std::fs::read_to_string(deploy("kubernetes.yaml")).expect("deploy/kubernetes.yaml");
    let help = run(&["serve", "--help"]).await;
    assert!(help.status.success(), "{}", stderr(&help));
    let help = stdout(&help);
    let variables: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .filter(|name| name.starts_with("ZMESH_"))
        .collect();
    assert!(variables.len() >= 6, "{variables:?}");
    for variable in variables {
        // ZMESH_MESH_KEY holds the key itself and is read by the key loader, not clap.
        if variable == "ZMESH_MESH_KEY" {
            continue;
        }
        assert!(
            help.contains(&format!("[env: {variable}=")),
            "{variable} is no variable of zmesh serve"
        );
    }
    assert!(manifest.contains("clusterIP: None"), "a headless Service");
    assert!(manifest.contains("- name: zmesh\n      port: 4242"));
    assert!(manifest.contains("_zmesh._tcp.zmesh.$(POD_NAMESPACE).svc.cluster.local"));
    assert!(manifest.contains("path: /readyz"));
}
