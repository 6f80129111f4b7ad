//! Keeps README.md's Python example true: the `zmesh serve` command the README gives beside
//! it, run as written, answers the Python block, run as written with stock zerorpc, with
//! what the block's comments say it prints.

mod common;

use std::time::Duration;

use common::{Lines, zmesh};
use tokio::time::timeout;

/// Longest the Python client may take (it takes well under a second once the venv exists).
const PYTHON_LIMIT: Duration = Duration::from_secs(60);

/// The README's text between the fence opening with `fence` and the next closing fence.
fn block<'a>(readme: &'a str, fence: &str, after: usize) -> (&'a str, usize) {
    let start = readme[after..]
        .find(fence)
        .map(|i| after + i)
        .unwrap_or_else(|| panic!("README has a {fence} block"));
    let body = start + fence.len() + 1;
    let end = body + readme[body..].find("```").expect("the block is closed");
    (&readme[body..end], end)
}

#[tokio::test]
async fn the_readme_python_example_runs_against_its_serve_command() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = readme
        .find("### From Python")
        .expect("README has a Python section");
    let (shell, after) = block(&readme, "```sh", section);
    let (python, _) = block(&readme, "```python", after);

    let command: Vec<&str> = shell.split_whitespace().collect();
    assert_eq!(
        command[0], "zmesh",
        "the Python section starts a node: {shell:?}"
    );
    let mut server = zmesh()
        .args(&command[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("zmesh serve starts");
    let mut lines = Lines::new(server.stdout.take().expect("piped"));
    let serving = lines.next("zmesh serve's first line").await;
    assert!(serving.contains("tcp://127.0.0.1:4242"), "{serving}");

    let output = timeout(
        PYTHON_LIMIT,
        common::zerorpc_venv::python_code(python).await.output(),
    )
    .await
    .expect("the Python example finishes")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the README's Python example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What the block's comments promise, line by line.
    let promised: Vec<&str> = python
        .lines()
        .filter_map(|line| line.split_once("# ").map(|(_, comment)| comment))
        .map(|comment| comment.split("  ").next().unwrap_or(comment))
        .map(|comment| comment.split(", streamed").next().unwrap_or(comment))
        .collect();
    assert_eq!(promised, ["HI", "HI", "[0, 1, 2]"]);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), promised);
    drop(server);
}
