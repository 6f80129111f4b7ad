//! Keeps README.md's Rust examples true: every ```rust block names the file under examples/
//! it mirrors on its first line (`// examples/NAME.rs`), its text must be that file's (less
//! the file's `//!` header), and each of those examples must run to completion and print
//! what the README says it does. The doctests only compile the blocks; this runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest one example may run: they all finish in well under a second on loopback.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README's Rust blocks: (the example each names, the block's text after that line).
fn readme_blocks() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```rust") {
        let after_fence = &rest[start..];
        let body_start = after_fence.find('\n').expect("a fence line ends") + 1;
        let body = &after_fence[body_start..];
        let end = body.find("```").expect("every block is closed");
        let text = &body[..end];
        let (first, code) = text.split_once('\n').unwrap_or((text, ""));
        let name = first
            .strip_prefix("// examples/")
            .and_then(|n| n.strip_suffix(".rs"))
            .unwrap_or_else(|| {
                panic!("a README Rust block must start with `// examples/NAME.rs`, not {first:?}")
            });
        blocks.push((name.to_owned(), code.to_owned()));
        rest = &body[end + 3..];
    }
    blocks
}

/// An example's text without its `//!` header and the blank line after it.
fn example_body(name: &str) -> String {
    let path = root().join("examples").join(format!("{name}.rs"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text
        .split_inclusive('\n')
        .skip_while(|l| l.starts_with("//!"));
    assert_eq!(
        lines.next(),
        Some("\n"),
        "{name}.rs: a blank line after the header"
    );
    lines.collect()
}

/// The example's binary: built beside this test by `cargo test` (which builds examples),
/// or built now when only this test was asked for and the binary is missing or stale.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let binary = profile_dir.join("examples").join(name);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let source = root().join("examples").join(format!("{name}.rs"));
    // Built before its source last changed (only this test was run since): build it again.
    if modified(&binary).is_none() || modified(&binary) < modified(&source) {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--example", name]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    binary
}

/// Runs an example to its end (killed past [`RUN_LIMIT`]) and returns its stdout.
fn run(name: &str, args: &[&Path]) -> String {
    let mut child = Command::new(example_binary(name))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("example {name} does not start: {e}"));
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait on the example") {
            let output = child.wait_with_output().expect("example output");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                status.success(),
                "example {name} failed ({status}):\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            return stdout;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let output = child.wait_with_output().expect("example output");
            panic!(
                "example {name} still running after {RUN_LIMIT:?}:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_readme_rust_block_is_an_example_that_runs_to_completion() {
    let blocks = readme_blocks();
    let names: Vec<&str> = blocks.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["quickstart", "events_basics", "mesh_basics"],
        "the README's Rust blocks (each needs its expected output below; the device and \
         mesh key sections link examples/device_basics.rs and mesh_key_basics.rs, run \
         below too)"
    );
    for (name, code) in &blocks {
        assert_eq!(
            code,
            &example_body(name),
            "README's block differs from examples/{name}.rs: copy the file's text after its \
             //! header into the README (or change both)"
        );
    }

    // A key file for the mesh key example, as `zmesh keygen` would write one.
    let keys = tempfile::tempdir().expect("temp dir");
    let key_file = keys.path().join("mesh.key");
    std::fs::write(&key_file, "readme-test-secret-0123456789abcdef\n").expect("key file");
    let key_args = [key_file.as_path()];

    let expected: [(&str, &[&Path], &[&str]); 5] = [
        (
            "quickstart",
            &[],
            &["0\n1\n2\nHello, zmesh, from greeter.hello\n"],
        ),
        (
            "events_basics",
            &[],
            &[
                "billing orders.created: Order { id: 1, item: \"book\" }",
                "state orders.created @1: Some(Order { id: 1, item: \"book\" })",
                "late joiner orders.shipped #Some(1)",
            ],
        ),
        (
            "device_basics",
            &[],
            &["orders.get(7) = 7, through the device"],
        ),
        ("mesh_basics", &[], &["quote 21, charged 21"]),
        ("mesh_key_basics", &key_args, &["HI\n"]),
    ];
    for (name, args, lines) in expected {
        let stdout = run(name, args);
        for line in lines {
            assert!(
                stdout.contains(line),
                "{name} printed:\n{stdout}\nnot {line:?}"
            );
        }
    }
}
