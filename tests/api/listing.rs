//! Listing names: one read of the name index, and exact even when a request
//! died between writing a plugin's metadata and updating the index.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::common::{Backend, TestEnv};

both_stores!(
    list_is_exact_after_a_create_died_before_updating_the_index,
    list_is_exact_after_a_delete_died_before_updating_the_index,
    list_survives_a_lost_or_unreadable_index,
    list_is_exact_after_concurrent_creates_and_deletes
);

/// Writes an object the way a (dying) plugin-api would, through the store.
async fn put_object(env: &TestEnv, key: &str, body: Vec<u8>) {
    env.write_object(key, body).await;
}

async fn delete_object(env: &TestEnv, key: &str) {
    env.delete_object(key).await;
}

async fn index(env: &TestEnv, ty: &str) -> Value {
    let bytes = env
        .read_object(&format!("index/{ty}.json"))
        .await
        .expect("the name index exists");
    serde_json::from_slice(&bytes).unwrap()
}

/// A lease taken `age_secs` ago by a request for `name`.
fn with_lease(mut index: Value, name: &str, age_secs: u64) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    index["leases"]["dead-request"] = json!({"name": name, "since": now - age_secs});
    index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_one_read_however_many_plugins() {
    let env = TestEnv::start(Backend::S3).await;
    for name in ["c1", "a1", "b1"] {
        env.create_ok("sinks", name).await;
    }
    let stats = env.s3.as_ref().unwrap().stats().clone();
    let (lists, gets) = (
        stats.lists.load(Ordering::SeqCst),
        stats.gets.load(Ordering::SeqCst),
    );
    let r = env.get("/plugins/sinks").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.body, r#"["a1","b1","c1"]"#);
    assert_eq!(stats.lists.load(Ordering::SeqCst) - lists, 0, "no listing");
    assert_eq!(stats.gets.load(Ordering::SeqCst) - gets, 1, "one read");
    assert!(env.list("sources").await.is_empty());
}

/// The metadata of `dead` was written, then the request died before settling
/// its lease: the plugin exists, so it is listed, now and after the lease expires.
async fn list_is_exact_after_a_create_died_before_updating_the_index(env: TestEnv) {
    env.create_ok("sinks", "alive").await;
    let meta = env.read_object("plugins/sinks/alive.json").await.unwrap();
    let before = index(&env, "sinks").await;
    assert_eq!(before["names"], json!(["alive"]));
    assert_eq!(before["leases"], json!({}));

    // Died a moment ago: its lease is live, so lists read the metadata keys.
    put_object(
        &env,
        "index/sinks.json",
        serde_json::to_vec(&with_lease(before.clone(), "dead", 1)).unwrap(),
    )
    .await;
    put_object(&env, "plugins/sinks/dead.json", meta).await;
    assert_eq!(env.list("sinks").await, ["alive", "dead"]);
    assert_eq!(
        index(&env, "sinks").await["leases"]["dead-request"]["name"],
        "dead",
        "a live lease is left alone"
    );

    // Once the lease has expired, a list rebuilds the index from the keys.
    put_object(
        &env,
        "index/sinks.json",
        serde_json::to_vec(&with_lease(before, "dead", 3600)).unwrap(),
    )
    .await;
    assert_eq!(env.list("sinks").await, ["alive", "dead"]);
    let after = index(&env, "sinks").await;
    assert_eq!(after["names"], json!(["alive", "dead"]));
    assert_eq!(after["leases"], json!({}));
    assert_eq!(env.list("sinks").await, ["alive", "dead"]);
    // And the plugin can be deleted like any other.
    assert_eq!(env.delete("/plugins/sinks/dead").await.status, 200);
    assert_eq!(env.list("sinks").await, ["alive"]);
}

/// The metadata of `gone` was deleted, then the request died: the index still
/// names it, with the request's lease. It is not listed.
async fn list_is_exact_after_a_delete_died_before_updating_the_index(env: TestEnv) {
    env.create_ok("sinks", "kept").await;
    env.create_ok("sinks", "gone").await;
    let before = index(&env, "sinks").await;
    assert_eq!(before["names"], json!(["gone", "kept"]));
    put_object(
        &env,
        "index/sinks.json",
        serde_json::to_vec(&with_lease(before.clone(), "gone", 1)).unwrap(),
    )
    .await;
    delete_object(&env, "plugins/sinks/gone.json").await;
    assert_eq!(env.list("sinks").await, ["kept"]);
    put_object(
        &env,
        "index/sinks.json",
        serde_json::to_vec(&with_lease(before, "gone", 3600)).unwrap(),
    )
    .await;
    assert_eq!(env.list("sinks").await, ["kept"]);
    assert_eq!(index(&env, "sinks").await["names"], json!(["kept"]));
    // The name is free again.
    env.create_ok("sinks", "gone").await;
    assert_eq!(env.list("sinks").await, ["gone", "kept"]);
}

async fn list_survives_a_lost_or_unreadable_index(env: TestEnv) {
    env.create_ok("functions", "f1").await;
    env.create_ok("functions", "f2").await;
    delete_object(&env, "index/functions.json").await;
    assert_eq!(env.list("functions").await, ["f1", "f2"]);
    assert_eq!(index(&env, "functions").await["names"], json!(["f1", "f2"]));

    put_object(&env, "index/functions.json", b"{not json".to_vec()).await;
    assert_eq!(env.list("functions").await, ["f1", "f2"]);
    assert_eq!(index(&env, "functions").await["names"], json!(["f1", "f2"]));

    // A create on a store without an index (e.g. written by an earlier
    // version) builds one from the keys.
    delete_object(&env, "index/functions.json").await;
    env.create_ok("functions", "f3").await;
    assert_eq!(env.list("functions").await, ["f1", "f2", "f3"]);
    assert_eq!(
        index(&env, "functions").await["names"],
        json!(["f1", "f2", "f3"])
    );
}

/// Many creates and deletes of several names at once: afterwards the list is
/// exactly the set of plugins that exist (each checked by describe).
async fn list_is_exact_after_concurrent_creates_and_deletes(env: TestEnv) {
    let names: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
    let mut urls = Vec::new();
    for name in &names {
        urls.push(env.serve_plugin("sinks", name).await);
    }
    let mut tasks = Vec::new();
    for round in 0..36 {
        let (http, base) = (env.http.clone(), env.base.clone());
        let (name, url) = (names[round % 6].clone(), urls[round % 6].clone());
        tasks.push(tokio::spawn(async move {
            let r = if (round / 6) % 2 == 0 {
                http.post(format!("{base}/plugins/sinks"))
                    .body(json!({"name": name, "file": url}).to_string())
                    .send()
                    .await
            } else {
                http.delete(format!("{base}/plugins/sinks/{name}"))
                    .send()
                    .await
            }
            .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert!(
                matches!(status, 200 | 201 | 404)
                    || (status == 400
                        && (body.contains("duplicate") || body.contains("not exist"))),
                "{status}: {body}"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut exist = Vec::new();
    for name in &names {
        let r = env.get(&format!("/plugins/sinks/{name}")).await;
        if r.status == 200 {
            exist.push(name.clone());
        }
    }
    assert_eq!(env.list("sinks").await, exist);
    let idx = index(&env, "sinks").await;
    assert_eq!(idx["leases"], json!({}), "every request settled its lease");
    assert_eq!(idx["names"], json!(exist), "the index is exact");
}
