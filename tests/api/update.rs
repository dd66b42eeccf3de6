//! Update: the new version is downloaded, checked and stored before it
//! replaces the old one; a failed update leaves the old version intact.

use serde_json::json;

use crate::common::{plugin_zip, TestEnv};

both_stores!(
    update_replaces_version,
    failed_update_keeps_old,
    update_name_rules,
    update_unknown_is_404
);

async fn update_replaces_version(env: TestEnv) {
    env.create_ok("sources", "random").await;
    let before = env.get("/plugins/sources/random").await.json();
    let url = env
        .files
        .serve(
            "/sources/random-v2.zip",
            plugin_zip("sources", "random", "Random@v2.0.0.so"),
        )
        .await;
    let r = env
        .put(
            "/plugins/sources/random",
            json!({"name": "random", "file": url}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        "plugin random is updated and Kuiper nodes must restart for the change to take effect."
    );
    let after = env.get("/plugins/sources/random").await.json();
    assert_eq!(after["version"], "2.0.0");
    assert_ne!(after["sha256"], before["sha256"]);
    assert_eq!(after["created"], before["created"]);
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["source"], url);
    // An empty body name means the path's name.
    let url3 = env
        .files
        .serve(
            "/sources/random-v3.zip",
            plugin_zip("sources", "random", "Random@v3.so"),
        )
        .await;
    let r = env
        .put("/plugins/sources/random", json!({"file": url3}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        env.get("/plugins/sources/random").await.json()["version"],
        "3"
    );
}

async fn failed_update_keeps_old(env: TestEnv) {
    env.create_ok("functions", "echo2").await;
    let before = env.get("/plugins/functions/echo2").await.json();
    let missing = env.files.url("/functions/echo22.zip");
    let r = env
        .put(
            "/plugins/functions/echo2",
            json!({"name": "echo2", "file": missing}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        format!("update functions plugin echo2 error: fail to download file {missing}: cannot download the file with status: 404 Not Found")
    );
    let bad = env
        .files
        .serve("/functions/bad.zip", b"not a zip".to_vec())
        .await;
    let r = env
        .put(
            "/plugins/functions/echo2",
            json!({"name": "echo2", "file": bad}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("invalid zip file"), "{}", r.body);
    assert_eq!(
        env.get("/plugins/functions/echo2").await.json(),
        before,
        "the old version is intact"
    );
    assert_eq!(env.list("functions").await, vec!["echo2"]);
}

async fn update_name_rules(env: TestEnv) {
    env.create_ok("sources", "random2").await;
    let url = env.serve_plugin("sources", "other").await;
    let r = env
        .put(
            "/plugins/sources/random2",
            json!({"name": "other", "file": url}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message()
            .contains("the body name must be empty or equal the plugin name random2 in the path"),
        "{}",
        r.body
    );
    let r = env
        .put(
            "/plugins/sources/random2",
            json!({"name": "../../evil", "file": url}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        env.list("sources").await,
        vec!["random2"],
        "nothing was deleted or created"
    );
}

async fn update_unknown_is_404(env: TestEnv) {
    let url = env.serve_plugin("functions", "echo2").await;
    let r = env
        .put(
            "/plugins/functions/echo2",
            json!({"name": "echo2", "file": url}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.error_message(),
        "update functions plugin echo2 error: invalid name echo2: not exist"
    );
    assert_eq!(
        env.files.hits("/functions/echo2.zip").await,
        0,
        "nothing downloaded for a missing plugin"
    );
}
