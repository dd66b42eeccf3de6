//! `/fingerprints`: stored eKuiper build fingerprints and their bad input,
//! and describe's `?fits=` (the real-eKuiper checks are in tests/ekuiper/gate.rs).

use serde_json::json;

use crate::common::TestEnv;

both_stores!(
    store_read_list_delete,
    bad_input_is_named,
    fits_against_a_stored_fingerprint
);

fn node() -> serde_json::Value {
    json!({"libc": "glibc", "go": {
        "goVersion": "go1.26.8",
        "deps": [{"path": "github.com/lf-edge/ekuiper/contract/v2", "version": "v2.3.1"}],
        "settings": {"-trimpath": "true", "CGO_ENABLED": "1", "GOARCH": "amd64", "GOOS": "linux"}
    }})
}

async fn store_read_list_delete(env: TestEnv) {
    assert_eq!(env.get("/fingerprints").await.body, "[]");
    let r = env.put("/fingerprints/prod", node()).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "fingerprint prod is stored")
    );
    assert_eq!(env.put("/fingerprints/edge", node()).await.status, 200);
    assert_eq!(
        env.get("/fingerprints").await.json(),
        json!(["edge", "prod"])
    );
    let got = env.get("/fingerprints/prod").await.json();
    assert_eq!(got["go"]["goVersion"], "go1.26.8");
    let r = env.delete("/fingerprints/prod").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "fingerprint prod is deleted")
    );
    assert_eq!(env.get("/fingerprints/prod").await.status, 404);
    assert_eq!(env.get("/fingerprints").await.json(), json!(["edge"]));
}

async fn bad_input_is_named(env: TestEnv) {
    for (body, want) in [
        ("[]", "expected a JSON object"),
        ("{", "Error decoding the fingerprint json"),
        ("{\"libc\":\"plan9\",\"go\":null}", "unknown variant"),
    ] {
        let r = env
            .request(
                reqwest::Method::PUT,
                "/fingerprints/prod",
                Some(body.into()),
            )
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error_message().contains(want), "{body}: {}", r.body);
    }
    let r = env
        .put("/fingerprints/prod", json!({"libc": "glibc", "go": null}))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("has no Go build information"),
        "{}",
        r.body
    );
    let r = env.put("/fingerprints/bad%20name", node()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(env.delete("/fingerprints/nope").await.status, 404);
    assert_eq!(env.get("/fingerprints/nope").await.status, 404);
}

async fn fits_against_a_stored_fingerprint(env: TestEnv) {
    env.create_ok("sinks", "print").await;
    assert_eq!(env.put("/fingerprints/prod", node()).await.status, 200);
    // The example library is not a Go plugin: stock eKuiper cannot load it.
    let meta = env.get("/plugins/sinks/print?fits=prod").await.json();
    assert_eq!(meta["build"]["go"], json!(null), "{meta}");
    assert_eq!(meta["fits"]["fits"], false, "{meta}");
    assert!(
        meta["fits"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("not built by Go"),
        "{meta}"
    );
    let r = env.get("/plugins/sinks/print?fits=nope").await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("no fingerprint named nope"),
        "{}",
        r.body
    );
    assert_eq!(env.get("/plugins/sinks/print?fits=").await.status, 400);
    // Without ?fits=, no fits field.
    assert!(env
        .get("/plugins/sinks/print")
        .await
        .json()
        .get("fits")
        .is_none());
    // A create naming it refuses the library, before or after download.
    let url = env.serve_plugin("sinks", "other").await;
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "other", "file": url, "ekuiper": "prod"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error_message()
            .contains("would not load into eKuiper prod: not built by Go"),
        "{}",
        r.body
    );
    assert!(!env.list("sinks").await.contains(&"other".to_string()));
}
