//! `kuiper-node ekuiper`: the child's lifetime is the node's, its exit code
//! is ours, and a store outage does not keep eKuiper from starting.

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ekuipers_exit_code_is_the_nodes() {
    let stack = Stack::start().await;
    stack
        .publish("sinks", "linefile", zips::linefile("v1"), json!({}))
        .await;
    let root = stack.new_node_dir("node");
    let mut node = stack.supervised(&root).await;
    // eKuiper's `DELETE ...?stop=1` makes it exit with code 100 (it expects
    // its supervisor to restart it): kuiper-node exits with that code.
    let r = stack
        .http
        .delete(format!("{}/plugins/sinks/linefile?stop=1", node.rest()))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 200);
    let status = node.wait().await;
    assert_eq!(status.code(), Some(100), "{}", node.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_reaches_ekuiper() {
    let stack = Stack::start().await;
    let root = stack.new_node_dir("node");
    let mut node = stack.supervised(&root).await;
    let out = node.output();
    let pid: i32 = out
        .lines()
        .find_map(|l| l.split("eKuiper started (pid ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the output:\n{out}"));
    let status = node.signal_and_wait(libc::SIGINT).await;
    assert!(status.success(), "{status}\n{}", node.output());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "eKuiper (pid {pid}) outlived kuiper-node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ekuiper_starts_with_the_last_sync_when_the_store_is_down() {
    let mut stack = Stack::start().await;
    stack
        .publish("sinks", "linefile", zips::linefile("v1"), json!({}))
        .await;
    let root = stack.new_node_dir("node");
    stack.supervised(&root).await.stop().await;
    // The node's bucket is wrong from now on: the store cannot be read.
    stack.bucket = "no-such-bucket".into();
    let node = stack.supervised(&root).await;
    let failed = node.report["failed"].as_array().unwrap();
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-bucket"),
        "{}",
        node.report
    );
    assert_eq!(
        ek_list(&stack.http, &node.rest(), "sinks").await,
        ["linefile"],
        "what the last sync installed still loads"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ekuiper_binary_is_a_clear_failure() {
    let stack = Stack::start().await;
    let root = stack.new_node_dir("node");
    let store = stack.store_arg();
    let root_s = root.display().to_string();
    let out = stack
        .node_command(&[
            "ekuiper",
            "--store",
            &store,
            "--root",
            &root_s,
            "--",
            "/nonexistent/kuiperd",
        ])
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let error = report["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("cannot start eKuiper /nonexistent/kuiperd"),
        "{error}"
    );
}
