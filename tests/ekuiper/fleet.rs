//! The operator's loop with real nodes (issue 21): three nodes, each
//! `kuiper-node ekuiper` running the rig's stock kuiperd, report to MinIO;
//! `GET /nodes` follows a publish, an update, restarts of some of them, a
//! plugin one node cannot load (it lacks the C library the plugin needs), and
//! a node that stops.

use std::time::{Duration, Instant};

use kuiper_harness::ekuiper::Ports;
use kuiper_harness::rig::Rig;
use kuiper_harness::zips::ZipBuilder;
use serde_json::{json, Value};

use crate::common::{blocking, publish_all, zips, Stack, Supervised};

/// `GET {path}` on the registry: status and JSON.
async fn api(stack: &Stack, path: &str) -> Value {
    let (status, body) = stack.registry(reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// `id=state` of every node, by id.
async fn states(stack: &Stack) -> Vec<String> {
    api(stack, "/nodes").await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{}={}",
                n["id"].as_str().unwrap(),
                n["state"].as_str().unwrap()
            )
        })
        .collect()
}

/// The state of `{type}/{name}` on node `id`, with its reasons.
async fn plugin_state(stack: &Stack, id: &str, plugin: &str) -> (String, Vec<String>) {
    let n = api(stack, &format!("/nodes/{id}")).await;
    let p = n["pluginStates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            format!(
                "{}/{}",
                p["type"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            ) == plugin
        })
        .unwrap_or_else(|| panic!("{plugin} not on {id}: {n}"))
        .clone();
    let reasons = p["reasons"]
        .as_array()
        .map(|r| r.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (p["state"].as_str().unwrap().to_string(), reasons)
}

/// One node: its directory, its id and whether it has libkdep.so.
struct Node {
    id: &'static str,
    root: std::path::PathBuf,
    with_lib: bool,
    running: Option<Supervised>,
}

impl Node {
    async fn start(&mut self, stack: &Stack) {
        let rig = blocking(Rig::get);
        let env: Vec<(String, String)> = if self.with_lib {
            vec![(
                "LD_LIBRARY_PATH".into(),
                rig.dir().join("lib").display().to_string(),
            )]
        } else {
            Vec::new()
        };
        let args = ["--node-id", self.id, "--report-interval", "1s"];
        let s = Supervised::start_with_env(stack, &self.root, Ports::free(), &args, &env).await;
        assert_eq!(s.report["nodeReport"]["written"], true, "{}", s.report);
        self.running = Some(s);
    }

    async fn restart(&mut self, stack: &Stack) {
        if let Some(s) = self.running.take() {
            s.stop().await;
        }
        self.start(stack).await;
    }
}

fn needlib_zip() -> Vec<u8> {
    let rig = blocking(Rig::get);
    ZipBuilder::new()
        .file(
            "Needlib@v1.0.0.so",
            rig.plugin_bytes("needlib", "sinks/Needlib.so"),
        )
        .build()
}

/// Polls `f` every 250 ms until it is true, or panics with `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_publish_update_restart_and_stop() {
    let stack = Stack::start().await;
    publish_all(&stack).await;
    let mut nodes: Vec<Node> = [("edge-a", true), ("edge-b", true), ("edge-c", false)]
        .into_iter()
        .map(|(id, with_lib)| Node {
            id,
            root: stack.new_node_dir(id),
            with_lib,
            running: None,
        })
        .collect();
    for n in &mut nodes {
        n.start(&stack).await;
    }

    // Published, synced, loaded by eKuiper: all current.
    assert_eq!(
        states(&stack).await,
        ["edge-a=current", "edge-b=current", "edge-c=current"]
    );
    let a = api(&stack, "/nodes/edge-a").await;
    assert_eq!(a["mode"], "ekuiper");
    assert_eq!(a["ekuiper"], "2.4.0", "{a}");
    let outcomes: Vec<&str> = a["report"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["loaded", "loaded", "loaded"],
        "what eKuiper's REST lists: {a}"
    );
    assert!(
        a["report"]["ekuiper"]["build"]["go"]["goVersion"].is_string(),
        "{a}"
    );

    // An update: every node must restart, ticker outdated on each.
    stack
        .update("sources", "ticker", zips::ticker("v2", "2.0.0"), json!({}))
        .await;
    assert_eq!(
        states(&stack).await,
        [
            "edge-a=restart-needed",
            "edge-b=restart-needed",
            "edge-c=restart-needed"
        ]
    );
    for id in ["edge-a", "edge-b", "edge-c"] {
        assert_eq!(
            plugin_state(&stack, id, "sources/ticker").await.0,
            "outdated"
        );
    }

    // Two restart; the third still runs the old ticker.
    nodes[0].restart(&stack).await;
    nodes[1].restart(&stack).await;
    assert_eq!(
        states(&stack).await,
        ["edge-a=current", "edge-b=current", "edge-c=restart-needed"]
    );
    let d = api(&stack, "/plugins/sources/ticker").await;
    assert_eq!(
        (
            d["nodes"]["current"].as_u64(),
            d["nodes"]["outdated"].as_u64()
        ),
        (Some(2), Some(1)),
        "{}",
        d["nodes"]
    );

    // A sink that needs libkdep.so, which edge-c lacks: eKuiper there cannot
    // open it and lists it not; edge-a loads it.
    stack
        .publish("sinks", "needlib", needlib_zip(), json!({}))
        .await;
    assert_eq!(
        plugin_state(&stack, "edge-a", "sinks/needlib").await.0,
        "pending"
    );
    nodes[0].restart(&stack).await;
    nodes[2].restart(&stack).await;
    assert_eq!(
        plugin_state(&stack, "edge-a", "sinks/needlib").await.0,
        "current"
    );
    let (state, reasons) = plugin_state(&stack, "edge-c", "sinks/needlib").await;
    assert_eq!(state, "not-loaded");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("eKuiper did not load it")),
        "{reasons:?}"
    );
    assert_eq!(
        plugin_state(&stack, "edge-c", "sources/ticker").await.0,
        "current"
    );
    assert_eq!(
        states(&stack).await,
        ["edge-a=current", "edge-b=restart-needed", "edge-c=failing"]
    );
    let d = api(&stack, "/plugins/sinks/needlib").await;
    assert_eq!(
        (
            d["nodes"]["current"].as_u64(),
            d["nodes"]["failed"].as_u64(),
            d["nodes"]["pending"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{}",
        d["nodes"]
    );
    let failing = api(&stack, "/nodes?state=failing").await;
    assert_eq!(failing["nodes"].as_array().unwrap().len(), 1);

    // edge-b stops: stale after three of its 1 s intervals; the others report on.
    nodes[1].running.take().unwrap().stop().await;
    eventually(Duration::from_secs(20), "edge-b stale", || async {
        states(&stack).await[1] == "edge-b=stale"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        states(&stack).await,
        ["edge-a=current", "edge-b=stale", "edge-c=failing"],
        "running nodes keep reporting"
    );
    for n in &mut nodes {
        if let Some(s) = n.running.take() {
            s.stop().await;
        }
    }
}
