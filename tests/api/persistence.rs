//! Everything survives a restart of the service: the store is the state.

use serde_json::json;

use kuiper_registry::store::local::LocalStore;

use crate::common::{Backend, TestEnv};

both_stores!(state_survives_restart);

async fn state_survives_restart(mut env: TestEnv) {
    env.create_ok("sources", "random2").await;
    env.create_ok("sinks", "file2").await;
    let url = env.serve_plugin("functions", "echo2").await;
    let r = env
        .post(
            "/plugins/functions",
            json!({"name": "echo2", "file": url, "functions": ["echo2", "echo3"]}),
        )
        .await;
    assert_eq!(r.status, 201);
    let described = env.get("/plugins/sources/random2").await.body;
    let old_base = env.base.clone();

    env.restart().await;
    assert_ne!(env.base, old_base, "a new server instance");
    assert_eq!(env.list("sources").await, vec!["random2"]);
    assert_eq!(env.list("sinks").await, vec!["file2"]);
    assert_eq!(env.list("functions").await, vec!["echo2"]);
    assert_eq!(env.get("/plugins/sources/random2").await.body, described);
    assert_eq!(
        env.get("/plugins/udfs/echo3").await.json(),
        json!({"name": "echo3", "plugin": "echo2"})
    );
    // Duplicates are still duplicates after a restart.
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "file2", "file": env.files.url("/sinks/file2.zip")}),
        )
        .await;
    assert!(r.error_message().ends_with("invalid name file2: duplicate"));
}

/// Writes `body` at store key `key` behind the service's back (as an earlier
/// version, an operator or a dead process left it).
pub async fn put_object(env: &TestEnv, key: &str, body: Vec<u8>) {
    use kuiper_registry::store::{Condition, Store};
    match env.backend {
        Backend::Local => LocalStore::new(env.objects_dir())
            .unwrap()
            .put(key, body.into(), Condition::None)
            .await
            .unwrap(),
        Backend::S3 => env
            .s3_store()
            .await
            .put(key, body.into(), Condition::None)
            .await
            .unwrap(),
    }
}

/// Reads store key `key` behind the service's back.
pub async fn get_object(env: &TestEnv, key: &str) -> Option<Vec<u8>> {
    use kuiper_registry::store::Store;
    let obj = match env.backend {
        Backend::Local => LocalStore::new(env.objects_dir())
            .unwrap()
            .get(key)
            .await
            .unwrap(),
        Backend::S3 => env.s3_store().await.get(key).await.unwrap(),
    };
    obj.map(|o| o.body.to_vec())
}

/// Deletes store key `key` behind the service's back.
pub async fn delete_object(env: &TestEnv, key: &str) {
    use kuiper_registry::store::Store;
    match env.backend {
        Backend::Local => LocalStore::new(env.objects_dir())
            .unwrap()
            .delete(key)
            .await
            .unwrap(),
        Backend::S3 => env.s3_store().await.delete(key).await.unwrap(),
    }
}
