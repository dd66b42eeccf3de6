//! The round trip every build of the function must answer (the test binary
//! under the [`RuntimeApi`] emulator, a `cargo lambda build` bootstrap, under
//! qemu or not), and the checks `cargo lambda watch`'s test shares with it.

use serde_json::{json, Value};
use tokio::process::Command;

use crate::lambda_runtime::{event, status_body, RuntimeApi, Source};

/// Starts `cmd` as the function (with `env`, a local store and downloads
/// allowed from one loopback file host) and runs [`plugin_round_trip`]
/// through each of `sources`; checks that the create reached the store and
/// that the function still runs. Returns the function's log (stderr).
pub async fn function_round_trip(cmd: Command, env: &[(&str, &str)], sources: &[Source]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let files = crate::files::FileHost::start().await;
    let url = files.serve("/sinks/lam.zip", lam_zip()).await;
    let api = RuntimeApi::start().await;
    let store = dir.path().join("store");
    let store_var = store.display().to_string();
    let allowed = files.base().trim_start_matches("http://").to_string();
    let mut vars = vec![
        ("KUIPER_STORE", store_var.as_str()),
        ("KUIPER_ALLOWED_HOSTS", &allowed),
    ];
    vars.extend_from_slice(env);
    let log = dir.path().join("function.log");
    let mut function = api.spawn(cmd, &vars, &log);
    for source in sources {
        plugin_round_trip(&api, *source, &url).await;
    }
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        function.try_wait().unwrap().is_none(),
        "the function exited: {logs}"
    );
    assert!(
        store.join("blobs").is_dir(),
        "no store in {}: {logs}",
        store.display()
    );
    logs
}

/// The zip [`plugin_round_trip`] creates: sink `lam`, its library `Lam.so`
/// (the example sink).
pub fn lam_zip() -> Vec<u8> {
    crate::zips::ZipBuilder::new()
        .file("Lam.so", crate::plugins::example_so("print"))
        .build()
}

/// The round trip every function build must answer, through `source` events:
/// ping, create sink `lam` from `url` (a zip holding `Lam.so`), list,
/// describe, two bad creates (a bad name, a body that is not an object: JSON
/// 400s), delete, and describe again (404). Panics on any other answer.
pub async fn plugin_round_trip(api: &RuntimeApi, source: Source, url: &str) {
    let call =
        |method: &'static str, path: &'static str, query: &'static str, body: Option<Value>| {
            api.invoke(event(source, method, path, query, body))
        };
    let r = call("GET", "/ping", "", None).await.expect("ping");
    assert_eq!(status_body(&r), (200, "pong".into()), "{source:?}: {r}");

    let create = json!({"name": "lam", "file": url});
    let r = call("POST", "/plugins/sinks", "", Some(create))
        .await
        .expect("create");
    let created = (201, "sinks plugin lam is created".to_string());
    assert_eq!(status_body(&r), created, "{source:?}: {r}");

    let r = call("GET", "/plugins/sinks", "", None).await.expect("list");
    assert_eq!(
        status_body(&r),
        (200, "[\"lam\"]".to_string()),
        "{source:?}"
    );
    assert_eq!(r["headers"]["content-type"], "application/json");

    let r = call("GET", "/plugins/sinks/lam", "", None)
        .await
        .expect("describe");
    let (status, body) = status_body(&r);
    assert_eq!(status, 200, "{source:?}: {body}");
    assert_describes_lam(&body, url);

    let r = call("POST", "/plugins/sinks", "", Some(bad_name_create(url)))
        .await
        .expect("bad name");
    let (status, body) = status_body(&r);
    assert_eq!(r["headers"]["content-type"], "application/json");
    assert_bad_name_refused(status, &body);

    let r = call("POST", "/plugins/sinks", "", Some(json!("not an object")))
        .await
        .expect("bad body");
    assert_eq!(status_body(&r).0, 400, "{source:?}: {r}");

    let r = call("DELETE", "/plugins/sinks/lam", "callback=", None)
        .await
        .expect("delete");
    let deleted =
        "sinks plugin lam is deleted and Kuiper nodes must restart for the change to take effect.";
    assert_eq!(status_body(&r), (200, deleted.to_string()), "{source:?}");
    let r = call("GET", "/plugins/sinks/lam", "", None)
        .await
        .expect("describe");
    assert_eq!(status_body(&r).0, 404, "{source:?}: {r}");
}

/// The create [`assert_bad_name_refused`] expects refused: sink `a.b` from `url`.
pub fn bad_name_create(url: &str) -> Value {
    json!({"name": "a.b", "file": url})
}

/// Asserts eKuiper's answer to [`bad_name_create`]: 400, error 1000, and a
/// message naming the invalid name.
pub fn assert_bad_name_refused(status: u64, body: &str) {
    assert_eq!(status, 400, "{body}");
    let err: Value = serde_json::from_str(body).expect("a JSON error");
    assert_eq!(err["error"], 1000, "{body}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains("invalid name \"a.b\""), "{body}");
}

/// Asserts that `body` describes sink `lam` (library `Lam.so`) created from `url`.
pub fn assert_describes_lam(body: &str, url: &str) {
    let meta: Value = serde_json::from_str(body).expect("JSON metadata");
    assert_eq!(meta["soFile"], "Lam.so", "{body}");
    assert_eq!(meta["source"], url, "{body}");
}
