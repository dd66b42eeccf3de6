//! Delete: the registry is the source of truth, so a deleted plugin is gone
//! from list and describe at once, and its name can be created again at once.

use serde_json::json;

use crate::common::TestEnv;

both_stores!(
    delete_removes_at_once,
    delete_unknown_is_404,
    rules_alias_deletes,
    recreate_after_delete,
    delete_racing_an_update_still_deletes
);

async fn delete_removes_at_once(env: TestEnv) {
    env.create_ok("sources", "random2").await;
    env.create_ok("sources", "random3").await;
    let r = env.delete("/plugins/sources/random2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        "sources plugin random2 is deleted and Kuiper nodes must restart for the change to take effect."
    );
    assert_eq!(env.list("sources").await, vec!["random3"]);
    assert_eq!(env.get("/plugins/sources/random2").await.status, 404);
    // Deleting again: not found.
    let r = env.delete("/plugins/sources/random2").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], 1002);
    assert_eq!(
        r.error_message(),
        "delete sources plugin random2 error: invalid name random2: not exist"
    );
}

async fn delete_unknown_is_404(env: TestEnv) {
    let r = env.delete("/plugins/functions/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.error_message(),
        "delete functions plugin nope error: invalid name nope: not exist"
    );
}

async fn rules_alias_deletes(env: TestEnv) {
    env.create_ok("sinks", "file2").await;
    let cb = env.callbacks.url("/callback");
    let r = env
        .delete(&format!("/rules/sinks/file2?callback={}", urlencode(&cb)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        "sinks plugin file2 is deleted and Kuiper nodes must restart for the change to take effect."
    );
    assert!(env.list("sinks").await.is_empty());
    assert_eq!(env.callbacks.calls("/callback").await, vec!["GET"]);
}

async fn recreate_after_delete(env: TestEnv) {
    env.create_ok("functions", "echo2").await;
    let first = env.get("/plugins/functions/echo2").await.json();
    assert_eq!(env.delete("/plugins/functions/echo2").await.status, 200);
    let r = env
        .post(
            "/plugins/functions",
            json!({"name": "echo2", "file": env.files.url("/functions/echo2.zip")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let second = env.get("/plugins/functions/echo2").await.json();
    assert_ne!(
        first["id"], second["id"],
        "a re-created plugin is a new instance"
    );
    assert_eq!(
        env.get("/plugins/udfs/echo2").await.json(),
        json!({"name": "echo2", "plugin": "echo2"})
    );
}

/// A delete is conditional on the version it read; one changed by an update
/// of the same plugin meanwhile is read again and deleted, so the delete
/// neither fails nor leaves the plugin behind.
async fn delete_racing_an_update_still_deletes(env: TestEnv) {
    let url = env.serve_plugin("sinks", "busy").await;
    for round in 0..10 {
        env.create_ok("sinks", "busy").await;
        let update = env
            .http
            .put(format!("{}/plugins/sinks/busy", env.base))
            .header("content-type", "application/json")
            .body(json!({"file": url}).to_string());
        let delete = env.http.delete(format!("{}/plugins/sinks/busy", env.base));
        let stagger = std::time::Duration::from_micros(400 * (round % 6));
        let (updated, deleted) = tokio::join!(update.send(), async move {
            tokio::time::sleep(stagger).await;
            delete.send().await
        });
        let updated = updated.unwrap().status().as_u16();
        assert!(matches!(updated, 200 | 404 | 409), "update: {updated}");
        let deleted = deleted.unwrap();
        let status = deleted.status().as_u16();
        assert_eq!(status, 200, "delete: {}", deleted.text().await.unwrap());
        assert_eq!(env.get("/plugins/sinks/busy").await.status, 404);
    }
    assert!(env.list("sinks").await.is_empty());
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
