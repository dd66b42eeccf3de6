//! Store failures: the client gets a clear 503 (or 500 for a local store
//! broken on disk), and no plugin is ever half visible.

use serde_json::json;

use crate::common::{plugin_zip, Backend, TestEnv};

const UNAVAILABLE: &str = "the plugin store is unavailable; nothing was changed, retry later";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_is_503_and_heals() {
    let env = TestEnv::start(Backend::S3).await;
    let s3 = env.s3.as_ref().unwrap();
    let url = env.serve_plugin("sinks", "outage").await;
    s3.fail_with(Some(503));
    let r = env
        .post("/plugins/sinks", json!({"name": "outage", "file": url}))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], 1003);
    assert_eq!(
        r.error_message(),
        format!("sinks plugins create command error: {UNAVAILABLE}")
    );
    let r = env.get("/plugins/sinks").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.error_message(),
        format!("sinks plugins list command error: {UNAVAILABLE}")
    );
    s3.fail_with(Some(500));
    assert_eq!(env.get("/plugins/sinks/outage").await.status, 503);
    s3.fail_with(None);
    assert!(env.list("sinks").await.is_empty());
    env.create_ok("sinks", "outage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_failure_mid_create_leaves_no_plugin() {
    let env = TestEnv::start(Backend::S3).await;
    let s3 = env.s3.as_ref().unwrap();
    // The zip is stored, then the metadata write fails.
    let first = env
        .files
        .serve("/sinks/mid-1.zip", plugin_zip("sinks", "mid", "Mid@v1.so"))
        .await;
    s3.fail_puts_containing(Some("plugins/sinks/mid.json"));
    let r = env
        .post("/plugins/sinks", json!({"name": "mid", "file": first}))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        env.stored_blobs().await.len(),
        1,
        "the zip was written before the commit point"
    );
    assert!(
        env.list("sinks").await.is_empty(),
        "but no plugin is visible"
    );
    assert_eq!(env.get("/plugins/sinks/mid").await.status, 404);
    // A failed update leaves the old version.
    s3.fail_puts_containing(None);
    let second = env
        .files
        .serve("/sinks/mid-2.zip", plugin_zip("sinks", "mid", "Mid@v2.so"))
        .await;
    assert_eq!(
        env.post("/plugins/sinks", json!({"name": "mid", "file": second}))
            .await
            .status,
        201
    );
    s3.fail_puts_containing(Some("plugins/sinks/mid.json"));
    let third = env
        .files
        .serve("/sinks/mid-3.zip", plugin_zip("sinks", "mid", "Mid@v3.so"))
        .await;
    let r = env.put("/plugins/sinks/mid", json!({"file": third})).await;
    assert_eq!(r.status, 503, "{}", r.body);
    s3.fail_puts_containing(None);
    assert_eq!(env.get("/plugins/sinks/mid").await.json()["version"], "2");
    // Unreferenced zips (v1 and v3) are removed by gc; v2 stays.
    let registry =
        kuiper_registry::server::build_registry(env.s3_store().await, &env.config()).unwrap();
    let report = registry.gc(std::time::Duration::ZERO, false).await.unwrap();
    assert_eq!(report.blobs_removed.len(), 2, "{report:?}");
    assert_eq!(report.blobs_referenced, 1);
    assert_eq!(env.stored_blobs().await.len(), 1);
    let d = env.get("/plugins/sinks/mid").await.json();
    assert!(env.stored_blobs().await[0].ends_with(d["blob"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_broken_on_disk_is_500_without_half_plugins() {
    let env = TestEnv::start(Backend::Local).await;
    let url = env.serve_plugin("sinks", "broken").await;
    // Something that is not a directory where the sinks metadata lives.
    std::fs::create_dir_all(env.objects_dir().join("plugins")).unwrap();
    std::fs::write(env.objects_dir().join("plugins/sinks"), "not a directory").unwrap();
    let r = env
        .post("/plugins/sinks", json!({"name": "broken", "file": url}))
        .await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        r.error_message(),
        "sinks plugins create command error: the plugin store failed; see the service log"
    );
    std::fs::remove_file(env.objects_dir().join("plugins/sinks")).unwrap();
    assert!(env.list("sinks").await.is_empty());
    env.create_ok("sinks", "broken").await;
}
