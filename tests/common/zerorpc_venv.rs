//! Finds (or builds once per test binary) the Python venv with stock zerorpc 0.6.3 and runs
//! `tests/interop/py_client.py` checks with it, as tests/interop.rs does: `<repo>/.venv-zerorpc`
//! unless `ZMESH_ZERORPC_VENV` says otherwise, built with tests/interop/zerorpc-venv.sh when
//! missing; a venv that cannot be built fails the test with the build output.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;
use tokio::time::timeout;

/// Longest wait for building the venv (pip downloads a few wheels).
const VENV_BUILD_LIMIT: Duration = Duration::from_secs(600);

/// The repository's root: this file is shared by the root package's tests and the CLI's
/// (`crates/zmesh-cli`), so it is found from either manifest directory.
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("tests/interop/zerorpc-venv.sh").exists())
        .expect("the repository holds tests/interop/zerorpc-venv.sh")
}

fn interop_dir() -> PathBuf {
    repo_root().join("tests").join("interop")
}

fn venv_dir() -> PathBuf {
    match std::env::var_os("ZMESH_ZERORPC_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join(".venv-zerorpc"),
    }
}

async fn python() -> PathBuf {
    static PYTHON: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();
    match PYTHON.get_or_init(ensure_venv).await {
        Ok(python) => python.clone(),
        Err(e) => panic!("{e}"),
    }
}

async fn ensure_venv() -> Result<PathBuf, String> {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    let mut probe = Command::new(&python);
    probe
        .args(["-c", "import zerorpc, zmq, msgpack, gevent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if python.exists()
        && matches!(timeout(Duration::from_secs(60), probe.status()).await, Ok(Ok(s)) if s.success())
    {
        return Ok(python);
    }
    let script = interop_dir().join("zerorpc-venv.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg(&venv)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = match timeout(VENV_BUILD_LIMIT, cmd.output()).await {
        Err(_) => return Err(format!("building {} took too long", venv.display())),
        Ok(Err(e)) => return Err(format!("cannot run bash: {e}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() || !python.exists() {
        return Err(format!(
            "the tests need a Python venv with stock zerorpc at {} (set ZMESH_ZERORPC_VENV or \
             run `bash {} DIR`); building it failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            venv.display(),
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(python)
}

/// A command running one of the scripts in `tests/interop/` with the venv's python (stdout
/// and stderr piped), building the venv first if needed.
pub async fn python_script(script: &str) -> Command {
    let mut cmd = venv_python().await;
    cmd.arg(interop_dir().join(script));
    cmd
}

/// A command running the Python program `code` with the venv's python, as
/// [`python_script`] does a script.
pub async fn python_code(code: &str) -> Command {
    let mut cmd = venv_python().await;
    cmd.arg("-c").arg(code);
    cmd
}

async fn venv_python() -> Command {
    let mut cmd = Command::new(python().await);
    cmd.current_dir(interop_dir())
        // Keep the source tree clean (no __pycache__ next to the scripts).
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `py_client.py ENDPOINT CHECK` and returns its JSON result line; fails the test with
/// the script's output unless it reports success.
pub async fn py_check(endpoint: &str, check: &str, limit: Duration) -> String {
    let mut cmd = python_script("py_client.py").await;
    cmd.arg(endpoint).arg(check);
    let output = timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("py_client.py {check} did not finish within {limit:?}"))
        .expect("cannot run py_client.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        output.status.success() && line.contains(r#""ok": true"#),
        "stock zerorpc client check {check:?} against {endpoint} failed ({})\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    line
}
