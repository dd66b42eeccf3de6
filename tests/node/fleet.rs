//! Node reports (`nodes/{id}.json`) written by the real `kuiper-node`, and
//! what `GET /nodes` makes of them: after `run` and `sync`, after registry
//! changes and restarts, when a plugin fails, when the report cannot be
//! written, and when a running node stops reporting.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kuiper_harness::plugins::CPlugin;
use serde_json::{json, Value};

use crate::common::{c_lib, lib, random_zip, so_zip, Backend, Env};

on_both_stores!(
    reports_follow_the_registry,
    a_running_node_reports_and_goes_stale
);

/// `GET /nodes/{id}`, asserting 200.
async fn node(env: &Env, id: &str) -> Value {
    let (status, v) = env.api_get(&format!("/nodes/{id}")).await;
    assert_eq!(status, 200, "{v}");
    v
}

fn plugin_states(n: &Value) -> Vec<String> {
    n["pluginStates"]
        .as_array()
        .expect("pluginStates")
        .iter()
        .map(|p| {
            format!(
                "{}/{}={}",
                p["type"].as_str().unwrap(),
                p["name"].as_str().unwrap(),
                p["state"].as_str().unwrap()
            )
        })
        .collect()
}

async fn reports_follow_the_registry(env: Env) {
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;

    let a = env.run_once(&["--node-id", "edge-a"]).await;
    a.assert_ok();
    assert_eq!(
        a.report["nodeReport"],
        json!({"nodeId": "edge-a", "key": "nodes/edge-a.json", "written": true}),
        "{}",
        a.report
    );
    let b = env.sync(&["--node-id", "edge-b"]).await;
    b.assert_ok();

    let n = node(&env, "edge-a").await;
    assert_eq!(n["state"], "current", "{n}");
    assert_eq!(n["mode"], "run");
    assert_eq!(n["report"]["reportIntervalSecs"], 60);
    // Sorted by type (sources, sinks, functions), then name.
    let print = &n["report"]["plugins"][1];
    let meta = env.meta("sinks", "print").await;
    assert_eq!(print["name"], "print");
    assert_eq!(print["outcome"], "loaded");
    assert_eq!(print["id"], meta["id"]);
    assert_eq!(print["sha256"], meta["sha256"]);
    let n = node(&env, "edge-b").await;
    assert_eq!(n["state"], "current", "{n}");
    assert_eq!(n["report"]["plugins"][1]["outcome"], "installed");
    assert!(
        n["report"].get("reportIntervalSecs").is_none(),
        "sync reports once: {n}"
    );

    // An update: both must restart.
    env.update(
        "sinks",
        "print",
        so_zip("Print@v2.0.0.so", c_lib("print", 1, "2.0.0")),
    )
    .await;
    let (_, list) = env.api_get("/nodes").await;
    let states: Vec<(&str, &str)> = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("edge-a", "restart-needed"), ("edge-b", "restart-needed")]
    );
    assert_eq!(
        plugin_states(&node(&env, "edge-a").await),
        ["sources/random=current", "sinks/print=outdated"]
    );
    let (_, d) = env.api_get("/plugins/sinks/print").await;
    assert_eq!(d["nodes"]["outdated"], 2, "{}", d["nodes"]);

    // edge-a restarts; edge-b does not.
    env.run_once(&["--node-id", "edge-a"]).await.assert_ok();
    assert_eq!(node(&env, "edge-a").await["state"], "current");
    assert_eq!(node(&env, "edge-b").await["state"], "restart-needed");
    let (_, d) = env.api_get("/plugins/sinks/print").await;
    assert_eq!(
        (
            d["nodes"]["current"].as_u64(),
            d["nodes"]["outdated"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // A library this node cannot load: failing, with the loader's reason.
    let future = CPlugin {
        abi: 2,
        ..CPlugin::new("future", 1, "1")
    };
    env.publish("sinks", "future", so_zip("Future.so", future.so()))
        .await;
    let run = env.run_once(&["--node-id", "edge-a"]).await;
    run.assert_failed();
    let n = node(&env, "edge-a").await;
    assert_eq!(n["state"], "failing", "{n}");
    let future = n["pluginStates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "future")
        .unwrap();
    assert_eq!(future["state"], "failed");
    assert_eq!(
        future["reasons"][0].as_str().unwrap(),
        run.error_of("sinks/future")
    );
    let (_, page) = env.api_get("/nodes?state=failing").await;
    assert_eq!(page["nodes"].as_array().unwrap().len(), 1, "{page}");

    // The default id: the host name and the root, the same at every run.
    let first = env.sync(&[]).await;
    let second = env.sync(&[]).await;
    let id = first.report["nodeReport"]["nodeId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(second.report["nodeReport"]["nodeId"], json!(id));
    assert!(id.len() > 9 && id.as_bytes()[id.len() - 9] == b'-', "{id}");
    assert_eq!(
        node(&env, &id).await["report"]["hostname"]
            .as_str()
            .map(|h| !h.is_empty()),
        Some(true)
    );
}

async fn a_running_node_reports_and_goes_stale(env: Env) {
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    let mut child = env
        .node_command(&[
            "run",
            "--store",
            &env.store_arg(),
            "--root",
            &env.root().display().to_string(),
            "--node-id",
            "live",
            "--report-interval",
            "1s",
        ])
        .spawn()
        .expect("spawn kuiper-node run");
    // The first report, then a later one.
    let first = wait_for(Duration::from_secs(30), || async {
        let (status, v) = env.api_get("/nodes/live").await;
        (status == 200).then(|| v["report"]["reported"].as_str().unwrap().to_string())
    })
    .await;
    let later = wait_for(Duration::from_secs(10), || async {
        let (_, v) = env.api_get("/nodes/live").await;
        let t = v["report"]["reported"].as_str().unwrap().to_string();
        (t != first).then_some(t)
    })
    .await;
    assert!(later > first);
    assert_eq!(node(&env, "live").await["state"], "current");
    // Stopped without a word: stale after three intervals.
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    wait_for(Duration::from_secs(20), || async {
        let (_, v) = env.api_get("/nodes/live").await;
        (v["state"] == "stale").then_some(())
    })
    .await;
    let (_, page) = env.api_get("/nodes?state=stale").await;
    assert_eq!(page["nodes"][0]["id"], "live");
}

/// Polls `f` every 200 ms until it gives a value, or panics after `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node whose report cannot be written still syncs, says so, exits 0.
async fn unwritable_report_changes_nothing_else(env: Env) {
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    match (&env.s3, env.local_store_dir()) {
        (Some(s3), _) => *s3.stats().fail_puts_containing.lock().unwrap() = Some("nodes/".into()),
        (None, Some(dir)) => std::fs::write(dir.join("nodes"), b"not a directory").unwrap(),
        _ => unreachable!("local or the harness S3 server"),
    }
    let run = env.sync(&["--node-id", "blocked"]).await;
    run.assert_ok();
    assert_eq!(run.list("installed"), ["sinks/print@"]);
    assert_eq!(run.report["nodeReport"]["written"], false, "{}", run.report);
    let error = run.report["nodeReport"]["error"].as_str().unwrap();
    assert!(error.starts_with("cannot write the node report"), "{error}");
    assert!(
        run.stderr.contains("cannot write the node report"),
        "{}",
        run.stderr
    );
    assert_eq!(env.node_file("plugins/sinks/Print.so"), lib("print"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_report_local() {
    unwritable_report_changes_nothing_else(Env::start(Backend::Local).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_report_s3() {
    unwritable_report_changes_nothing_else(Env::start(Backend::S3).await).await;
}

/// An unchanged sync costs one listing and the report's one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_is_one_request() {
    let env = Env::start(Backend::S3).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    env.sync(&["--node-id", "n"]).await.assert_ok();
    let s = env.s3.as_ref().unwrap().stats();
    let count =
        || [&s.gets, &s.puts, &s.lists, &s.heads, &s.deletes].map(|c| c.load(Ordering::SeqCst));
    let before = count();
    let again = env.sync(&["--node-id", "n"]).await;
    again.assert_ok();
    assert_eq!(again.list("unchanged"), ["sinks/print@"]);
    let after = count();
    let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    // gets, puts, lists, heads, deletes: the listing and the report.
    assert_eq!(delta, [0, 1, 1, 0, 0], "requests of an unchanged sync");
}
