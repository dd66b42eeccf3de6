//! Callbacks: one GET after the action succeeded; a failing callback gives 400
//! but the action stands.

use serde_json::json;

use crate::common::TestEnv;
use crate::delete::urlencode;

both_stores!(
    callback_ok_is_called_once,
    callback_failures_keep_the_action,
    no_callback_when_action_fails
);

async fn callback_ok_is_called_once(env: TestEnv) {
    let url = env.serve_plugin("sources", "random3").await;
    let cb = env.callbacks.url("/callback");
    let r = env
        .post(
            "/plugins/sources",
            json!({"name": "random3", "file": url, "callback": cb}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(env.callbacks.calls("/callback").await, vec!["GET"]);

    let r = env
        .put(
            "/plugins/sources/random3",
            json!({"file": url, "callback": env.callbacks.url("/status/204")}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.callbacks.calls("/status/204").await, vec!["GET"]);

    let r = env
        .delete(&format!(
            "/plugins/sources/random3?callback={}",
            urlencode(&cb)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.callbacks.calls("/callback").await.len(), 2);
}

async fn callback_failures_keep_the_action(env: TestEnv) {
    // 500 on create (reference H9): the plugin is created all the same.
    let url = env.serve_plugin("sinks", "file3").await;
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "file3", "file": url, "callback": env.callbacks.url("/callbackE")}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "sinks plugins create command error: action succeeded but callback failed: status 500 Internal Server Error"
    );
    assert_eq!(env.list("sinks").await, vec!["file3"]);
    let r = env
        .post("/plugins/sinks", json!({"name": "file3", "file": url}))
        .await;
    assert!(r.error_message().ends_with("invalid name file3: duplicate"));

    // 404 on create (H12).
    let url = env.serve_plugin("functions", "echo3").await;
    let r = env
        .post(
            "/plugins/functions",
            json!({"name": "echo3", "file": url, "callback": env.callbacks.url("/nonExist")}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "functions plugins create command error: action succeeded but callback failed: status 404 Not Found"
    );
    assert_eq!(env.list("functions").await, vec!["echo3"]);

    // Unreachable on create (H19): the transport error is reported.
    let url = env.serve_plugin("functions", "echo4").await;
    let r = env
        .post(
            "/plugins/functions",
            json!({"name": "echo4", "file": url, "callback": "http://127.0.0.1:1/cb"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let msg = r.error_message();
    assert!(
        msg.starts_with(
            "functions plugins create command error: action succeeded but callback failed: "
        ),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("connect"), "{msg}");
    assert_eq!(env.list("functions").await, vec!["echo3", "echo4"]);

    // 404 on delete (H13): the plugin is deleted all the same.
    let r = env
        .delete(&format!(
            "/plugins/sinks/file3?callback={}",
            urlencode(&env.callbacks.url("/callbackN"))
        ))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "delete sinks plugin file3 error: action succeeded but callback failed: status 404 Not Found"
    );
    assert!(env.list("sinks").await.is_empty());

    // 500 on delete (H15) and unreachable on delete (H20).
    let r = env
        .delete(&format!(
            "/plugins/functions/echo3?callback={}",
            urlencode(&env.callbacks.url("/callbackE"))
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(r
        .error_message()
        .ends_with("action succeeded but callback failed: status 500 Internal Server Error"));
    let r = env
        .delete("/plugins/functions/echo4?callback=http%3A%2F%2F127.0.0.1%3A1%2Fcb")
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error_message().starts_with(
        "delete functions plugin echo4 error: action succeeded but callback failed: "
    ));
    assert!(env.list("functions").await.is_empty());

    // 500 on update: the update stands.
    env.create_ok("sinks", "upd").await;
    let url2 = env
        .files
        .serve(
            "/sinks/upd2.zip",
            crate::common::plugin_zip("sinks", "upd", "Upd@v2.so"),
        )
        .await;
    let r = env
        .put(
            "/plugins/sinks/upd",
            json!({"file": url2, "callback": env.callbacks.url("/status/503")}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "update sinks plugin upd error: action succeeded but callback failed: status 503 Service Unavailable"
    );
    assert_eq!(env.get("/plugins/sinks/upd").await.json()["version"], "2");
}

async fn no_callback_when_action_fails(env: TestEnv) {
    let cb = env.callbacks.url("/callback");
    let missing = env.files.url("/sinks/missing.zip");
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "m", "file": missing, "callback": cb}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = env
        .delete(&format!("/plugins/sinks/m?callback={}", urlencode(&cb)))
        .await;
    assert_eq!(r.status, 404);
    assert!(
        env.callbacks.calls("/callback").await.is_empty(),
        "no callback for failed actions"
    );
}
