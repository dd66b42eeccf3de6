//! `GET /nodes` and `GET /nodes/{id}` over reports written into the store as
//! nodes would write them (the node side is in `tests/node/fleet.rs`): drift
//! against the registry, paging, filters, and untrusted reports that show
//! as that node's error and never fail the list.

use serde_json::{json, Value};

use crate::common::TestEnv;

both_stores!(
    drift_from_the_reported_tags,
    pages_and_filters,
    bad_reports_are_that_nodes_error,
    bad_queries_are_refused
);

/// A report of node `id` with `plugins`, as kuiper-node writes it.
pub fn report(id: &str, plugins: Value) -> Value {
    json!({
        "format": 1,
        "nodeId": id,
        "hostname": "edge",
        "arch": "x86_64",
        "libc": "glibc",
        "agentVersion": "0.1.0",
        "mode": "run",
        "started": "2026-12-01T10:00:00Z",
        "synced": "2026-12-01T10:00:01Z",
        "reported": "2026-12-01T10:00:02Z",
        "reportIntervalSecs": 3600,
        "plugins": plugins,
    })
}

async fn put_report(env: &TestEnv, id: &str, body: &Value) {
    env.write_object(&format!("nodes/{id}.json"), body.to_string().into_bytes())
        .await;
}

/// The entity tag of a plugin's metadata, as a node that synced it recorded.
async fn etag_of(env: &TestEnv, ty: &str, name: &str) -> String {
    use kuiper_registry::store::Store as _;
    let key = format!("plugins/{ty}/{name}.json");
    let obj = match env.backend {
        crate::common::Backend::Local => env.local_store().get(&key).await,
        _ => env.s3_store().await.get(&key).await,
    };
    obj.expect("read").expect("stored").etag.0
}

fn loaded(ty: &str, name: &str, etag: &str) -> Value {
    json!({"type": ty, "name": name, "version": "1.0.0", "id": "x", "sha256": "00",
           "metaEtag": etag, "outcome": "loaded"})
}

fn states(v: &Value) -> Vec<(String, String)> {
    v["pluginStates"]
        .as_array()
        .expect("pluginStates")
        .iter()
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p["type"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn node_state(env: &TestEnv, id: &str) -> String {
    let r = env.get(&format!("/nodes/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["state"].as_str().unwrap().to_string()
}

async fn drift_from_the_reported_tags(env: TestEnv) {
    env.create_ok("sinks", "file2").await;
    env.create_ok("sources", "random").await;
    let sink = etag_of(&env, "sinks", "file2").await;
    let source = etag_of(&env, "sources", "random").await;
    put_report(
        &env,
        "edge-1",
        &report(
            "edge-1",
            json!([
                loaded("sinks", "file2", &sink),
                loaded("sources", "random", &source)
            ]),
        ),
    )
    .await;
    assert_eq!(node_state(&env, "edge-1").await, "current");
    let d = env.get("/plugins/sinks/file2").await.json();
    assert_eq!(
        d["nodes"],
        json!({"reporting": 1, "current": 1, "outdated": 0, "failed": 0, "pending": 0, "stale": 0})
    );

    // An update: the node runs an older build until it restarts.
    let zip = crate::common::plugin_zip("sinks", "file2", "File2@v2.0.0.so");
    let url = env.files.serve("/sinks/file2-v2.zip", zip).await;
    let r = env
        .put(
            "/plugins/sinks/file2",
            json!({"name": "file2", "file": url}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let n = env.get("/nodes/edge-1").await.json();
    assert_eq!(n["state"], "restart-needed", "{n}");
    assert_eq!(n["restartNeeded"], true);
    assert_eq!(
        states(&n),
        [
            ("sources/random".into(), "current".into()),
            ("sinks/file2".into(), "outdated".into())
        ]
    );
    assert_eq!(n["report"]["nodeId"], "edge-1");
    let d = env.get("/plugins/sinks/file2").await.json();
    assert_eq!(d["nodes"]["outdated"], 1, "{}", d["nodes"]);

    // A new plugin is pending, a deleted one removed.
    env.create_ok("functions", "echo").await;
    let r = env.delete("/plugins/sources/random").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let n = env.get("/nodes/edge-1").await.json();
    assert_eq!(
        states(&n),
        [
            ("sources/random".into(), "removed".into()),
            ("sinks/file2".into(), "outdated".into()),
            ("functions/echo".into(), "pending".into()),
        ]
    );
    let list = env.get("/nodes").await.json();
    assert_eq!(
        list["nodes"][0]["plugins"],
        json!({"outdated": 1, "removed": 1, "pending": 1})
    );

    // The node restarts and reports what it runs now.
    let sink = etag_of(&env, "sinks", "file2").await;
    let echo = etag_of(&env, "functions", "echo").await;
    let mut failed = loaded("functions", "echo", &echo);
    failed["outcome"] = json!("skipped");
    failed["reasons"] = json!(["built with go1.25.4, node has go1.26.8"]);
    put_report(
        &env,
        "edge-1",
        &report("edge-1", json!([loaded("sinks", "file2", &sink), failed])),
    )
    .await;
    let n = env.get("/nodes/edge-1").await.json();
    assert_eq!(n["state"], "failing", "{n}");
    assert_eq!(n["restartNeeded"], false);
    assert_eq!(n["pluginStates"][0]["state"], "current");
    assert_eq!(n["pluginStates"][1]["state"], "skipped");
    assert_eq!(
        n["pluginStates"][1]["reasons"],
        json!(["built with go1.25.4, node has go1.26.8"])
    );
    let d = env.get("/plugins/functions/echo").await.json();
    assert_eq!(d["nodes"]["failed"], 1, "{}", d["nodes"]);
}

/// The ids of a page of `GET /nodes`.
fn ids(page: &Value) -> Vec<&str> {
    page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect()
}

async fn pages_and_filters(env: TestEnv) {
    env.create_ok("sinks", "file2").await;
    let tag = etag_of(&env, "sinks", "file2").await;
    for i in 0..25 {
        let id = format!("n{i:02}");
        let plugins = if i % 5 == 0 {
            json!([])
        } else {
            json!([loaded("sinks", "file2", &tag)])
        };
        put_report(&env, &id, &report(&id, plugins)).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/nodes?limit=10&cursor={c}"),
            None => "/nodes?limit=10".to_string(),
        };
        let r = env.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        pages += 1;
        for n in v["nodes"].as_array().unwrap() {
            seen.push(n["id"].as_str().unwrap().to_string());
        }
        match v["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..25).map(|i| format!("n{i:02}")).collect();
    assert_eq!(seen, want, "every node once, in order");

    // The five with no plugin are restart-needed (file2 is pending there).
    let v = env.get("/nodes?state=restart-needed").await.json();
    assert_eq!(ids(&v), ["n00", "n05", "n10", "n15", "n20"]);
    let v = env
        .get("/nodes?state=current&plugin=sinks/file2&limit=3")
        .await
        .json();
    assert_eq!(ids(&v), ["n01", "n02", "n03"]);
    assert_eq!(v["next"], "n03");
    let v = env.get("/nodes?plugin=sinks/file2&cursor=n19").await.json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 4, "n21..n24: {v}");
    assert_eq!(v["next"], Value::Null);
    let v = env.get("/nodes?state=stale").await.json();
    assert_eq!(v, json!({"nodes": [], "next": null}));
}

/// Reports a node could write that must not be believed: each shows as that
/// node's error, the others stay as they are. Also in the corpus.
pub fn bad_reports() -> Vec<(&'static str, Vec<u8>)> {
    let ok = report("x", json!([]));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = ok.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    vec![
        ("empty", Vec::new()),
        ("not-json", b"not json".to_vec()),
        ("array", b"[]".to_vec()),
        ("truncated", ok.to_string().as_bytes()[..40].to_vec()),
        ("other-node", with(&|v| v["nodeId"] = json!("victim"))),
        ("bad-id-inside", with(&|v| v["nodeId"] = json!("../victim"))),
        ("format-9", with(&|v| v["format"] = json!(9))),
        (
            "no-plugins",
            with(&|v| v.as_object_mut().unwrap().retain(|k, _| k != "plugins")),
        ),
        (
            "bad-type",
            with(&|v| v["plugins"] = json!([{"type": "rules", "name": "a", "outcome": "loaded"}])),
        ),
        (
            "bad-name",
            with(&|v| {
                v["plugins"] = json!([{"type": "sinks", "name": "../../etc", "outcome": "loaded"}])
            }),
        ),
        (
            "bad-outcome",
            with(&|v| v["plugins"] = json!([{"type": "sinks", "name": "a", "outcome": "great"}])),
        ),
        (
            "twice",
            with(&|v| {
                v["plugins"] = json!([
            {"type": "sinks", "name": "a", "outcome": "loaded"},
            {"type": "sinks", "name": "A", "outcome": "loaded"}])
            }),
        ),
        ("bad-time", with(&|v| v["reported"] = json!("yesterday"))),
        (
            "long-text",
            with(&|v| v["hostname"] = json!("h".repeat(5000))),
        ),
        (
            "many-reasons",
            with(&|v| {
                v["plugins"] = json!([{"type": "sinks", "name": "a", "outcome": "failed",
            "reasons": vec!["r"; 40]}])
            }),
        ),
        ("huge", {
            let mut v = ok.clone();
            v["padding"] = json!("p".repeat(4 << 20));
            v.to_string().into_bytes()
        }),
    ]
}

async fn bad_reports_are_that_nodes_error(env: TestEnv) {
    env.create_ok("sinks", "file2").await;
    let tag = etag_of(&env, "sinks", "file2").await;
    put_report(
        &env,
        "victim",
        &report("victim", json!([loaded("sinks", "file2", &tag)])),
    )
    .await;
    let bad = bad_reports();
    for (id, body) in &bad {
        // Each under its own key, so that its id is the key's; the body is the node's.
        let body = String::from_utf8_lossy(body)
            .replace("\"nodeId\":\"x\"", &format!("\"nodeId\":\"{id}\""));
        env.write_object(&format!("nodes/{id}.json"), body.into_bytes())
            .await;
    }
    // A key a node id cannot be.
    env.write_object("nodes/-dash.json", b"{}".to_vec()).await;
    let r = env.get("/nodes?limit=1000").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), bad.len() + 2, "{v}");
    for n in nodes {
        let id = n["id"].as_str().unwrap();
        if id == "victim" {
            assert_eq!(
                n["state"], "current",
                "another node's report changes nothing: {n}"
            );
            continue;
        }
        assert_eq!(n["state"], "invalid", "{id}: {n}");
        assert!(!n["error"].as_str().unwrap_or("").is_empty(), "{id}: {n}");
    }
    let err = |id: &str| {
        nodes.iter().find(|n| n["id"] == id).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        err("other-node").contains("names node \"victim\""),
        "{}",
        err("other-node")
    );
    assert!(
        err("huge").contains("at most 4194304 bytes"),
        "{}",
        err("huge")
    );
    assert!(err("format-9").contains("format 9"), "{}", err("format-9"));
    let r = env.get("/nodes/other-node").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["report"], Value::Null);
    // The registry itself is untouched.
    assert_eq!(env.list("sinks").await, ["file2"]);
    let n = env.get("/nodes/victim").await.json();
    assert_eq!(n["state"], "current");
    assert_eq!(n["report"]["plugins"][0]["metaEtag"], json!(tag));
}

async fn bad_queries_are_refused(env: TestEnv) {
    for (path, needle) in [
        ("/nodes?state=broken", "unknown state"),
        ("/nodes?limit=0", "limit"),
        ("/nodes?limit=1001", "limit"),
        ("/nodes?limit=x", "limit"),
        ("/nodes?plugin=file2", "{type}/{name}"),
        ("/nodes?plugin=rules/file2", "unknown plugin type"),
        ("/nodes?plugin=sinks/a%20b", "plugin"),
        ("/nodes?cursor=../x", "cursor"),
        ("/nodes?colour=red", "unknown query parameter"),
        ("/nodes/..%2Fplugins", "invalid node id"),
        ("/nodes/-x", "invalid node id"),
    ] {
        let r = env.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let m = r.error_message();
        assert!(m.contains(needle), "{path}: {m}");
    }
    let r = env.get("/nodes/nobody").await;
    assert_eq!(r.status, 404, "{}", r.body);
    r.error_message();
    let r = env.get("/nodes").await;
    assert_eq!(r.json(), json!({"nodes": [], "next": null}));
}
