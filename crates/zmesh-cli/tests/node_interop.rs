//! `zmesh call`, `list` and `ping` against a stock zerorpc-node server
//! (tests/interop/node/server.js; installed by tests/interop/node-setup.sh on first use,
//! skipped with a message without node outside CI). Every child is killed when its test
//! ends.

mod common;

#[path = "../../../tests/common/zerorpc_node.rs"]
mod zerorpc_node;

use common::{run, stderr, stdout};

#[tokio::test]
async fn the_cli_calls_lists_and_pings_a_zerorpc_node_server() {
    if !zerorpc_node::available().await {
        return;
    }
    let (endpoint, _server) = zerorpc_node::start_server().await;

    let out = run(&["call", &endpoint, "upper", "from the shell"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "\"FROM THE SHELL\"\n");

    let out = run(&["call", &endpoint, "count", "3"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\n1\n2\n", "a stream, one item per line");

    let out = run(&["call", &endpoint, "boom", "no"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("NodeBoom: no"), "{}", stderr(&out));

    let out = run(&["list", &endpoint]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for method in ["upper", "echo", "count", "sleep"] {
        assert!(
            stdout(&out).contains(method),
            "list shows {method}: {}",
            stdout(&out)
        );
    }

    let out = run(&["ping", &endpoint]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // zerorpc-node ignores a method it does not have: no reply, no heartbeat. `zmesh call`
    // says so once the heartbeat limit passes (about 15 s at zerorpc's 5 s period).
    let child = common::zmesh()
        .args(["call", &endpoint, "nothing_here", "--timeout", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("zmesh call");
    let out = tokio::time::timeout(std::time::Duration::from_secs(45), child.wait_with_output())
        .await
        .expect("the call ends long before its deadline")
        .expect("zmesh ran");
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("no answer from"), "{said}");
    assert!(!said.contains("peer lost"), "{said}");
}
