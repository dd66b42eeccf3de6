//! The reference's acceptance cases (../shared/reference/ekuiper-plugin-api.md
//! §6), run in order with state carried over, under this project's semantics.
//! Where we deliberately differ from eKuiper, the comment says how.

use kuiper_harness::zips::ZipBuilder;
use serde_json::json;

use crate::common::{plugin_zip, real_so, TestEnv};
use crate::delete::urlencode;

both_stores!(historic_cases, current_cases);

/// H1-H30 (the 2020 API with callbacks).
async fn historic_cases(env: TestEnv) {
    let fs = |p: &str| env.files.url(p);
    let so = real_so("sources");
    env.files
        .serve(
            "/sources/zipMissConf.zip",
            ZipBuilder::new().file("ZipMissConf.so", so.clone()).build(),
        )
        .await;
    env.files
        .serve(
            "/sinks/zipWrongName.zip",
            ZipBuilder::new().file("Random2.so", so.clone()).build(),
        )
        .await;
    env.files
        .serve(
            "/functions/zipMissSo.zip",
            ZipBuilder::new().file("zipMissSo.yaml", "a: 1").build(),
        )
        .await;
    for (ty, name) in [
        ("sources", "random2"),
        ("sources", "random3"),
        ("sinks", "file2"),
        ("sinks", "file3"),
        ("functions", "echo2"),
        ("functions", "echo3"),
    ] {
        env.serve_plugin(ty, name).await;
    }
    let cb = |p: &str| env.callbacks.url(p);
    let post = |ty: &'static str, body: serde_json::Value| {
        let env = &env;
        async move { env.post(&format!("/plugins/{ty}"), body).await }
    };

    // H1
    let r = post("sources", json!({"name": "", "file": ""})).await;
    assert_eq!(
        (r.status, r.error_message()),
        (
            400,
            "sources plugins create command error: invalid name : should not be empty".into()
        )
    );
    // H2-H5: layout errors (clearer messages than the reference's "so file or conf file is missing").
    let r = post(
        "sources",
        json!({"name": "zipMissConf", "file": fs("/sources/zipMissConf.zip")}),
    )
    .await;
    assert!(
        r.error_message()
            .contains("needs its configuration zipMissConf.yaml"),
        "{}",
        r.body
    );
    let r = post(
        "sinks",
        json!({"name": "urlerror", "file": fs("/sinks/nozip")}),
    )
    .await;
    assert!(r.error_message().starts_with(&format!(
        "sinks plugins create command error: invalid uri {}",
        fs("/sinks/nozip")
    )));
    let r = post(
        "sinks",
        json!({"name": "zipWrongname", "file": fs("/sinks/zipWrongName.zip")}),
    )
    .await;
    assert!(
        r.error_message()
            .contains("found none; the zip contains [Random2.so]"),
        "{}",
        r.body
    );
    let r = post(
        "functions",
        json!({"name": "zipMissSo", "file": fs("/functions/zipMissSo.zip")}),
    )
    .await;
    assert!(
        r.error_message()
            .contains("found none; the zip contains [zipMissSo.yaml]"),
        "{}",
        r.body
    );
    // H6-H8
    let r = post(
        "sources",
        json!({"name": "random2", "file": fs("/sources/random2.zip")}),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (201, "sources plugin random2 is created")
    );
    let r = post(
        "sources",
        json!({"name": "random3", "file": fs("/sources/random3.zip"), "callback": cb("/callback")}),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (201, "sources plugin random3 is created")
    );
    let r = post(
        "sinks",
        json!({"name": "file2", "file": fs("/sinks/file2.zip")}),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (201, "sinks plugin file2 is created")
    );
    // H9: callback 500; installed anyway, and a second create is a duplicate.
    let r = post(
        "sinks",
        json!({"name": "file3", "file": fs("/sinks/file3.zip"), "callback": cb("/callbackE")}),
    )
    .await;
    assert_eq!((r.status, r.error_message()), (400, "sinks plugins create command error: action succeeded but callback failed: status 500 Internal Server Error".into()));
    let r = post(
        "sinks",
        json!({"name": "file3", "file": fs("/sinks/file3.zip")}),
    )
    .await;
    assert_eq!(
        r.error_message(),
        "sinks plugins create command error: invalid name file3: duplicate"
    );
    // H10-H11
    assert_eq!(
        post(
            "functions",
            json!({"name": "echo2", "file": fs("/functions/echo2.zip")})
        )
        .await
        .status,
        201
    );
    let r = post(
        "functions",
        json!({"name": "echo2", "file": fs("/functions/echo2.zip")}),
    )
    .await;
    assert_eq!(
        (r.status, r.error_message()),
        (
            400,
            "functions plugins create command error: invalid name echo2: duplicate".into()
        )
    );
    // H12
    let r = post(
        "functions",
        json!({"name": "echo3", "file": fs("/functions/echo3.zip"), "callback": cb("/nonExist")}),
    )
    .await;
    assert_eq!(r.error_message(), "functions plugins create command error: action succeeded but callback failed: status 404 Not Found");
    // H21-H22 (we answer [] for none, not null, and sort)
    assert_eq!(env.list("sources").await, vec!["random2", "random3"]);
    assert_eq!(env.list("sinks").await, vec!["file2", "file3"]);
    // H13-H18
    let r = env
        .delete(&format!(
            "/plugins/sources/random2?callback={}",
            urlencode(&cb("/callbackN"))
        ))
        .await;
    assert_eq!((r.status, r.error_message()), (400, "delete sources plugin random2 error: action succeeded but callback failed: status 404 Not Found".into()));
    let r = env
        .delete(&format!(
            "/plugins/sinks/file2?callback={}",
            urlencode(&cb("/callback"))
        ))
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "sinks plugin file2 is deleted and Kuiper nodes must restart for the change to take effect."));
    let r = env
        .delete(&format!(
            "/plugins/functions/echo2?callback={}",
            urlencode(&cb("/callbackE"))
        ))
        .await;
    assert_eq!(r.error_message(), "delete functions plugin echo2 error: action succeeded but callback failed: status 500 Internal Server Error");
    for p in [
        "/plugins/sources/random3",
        "/plugins/sinks/file3",
        "/plugins/functions/echo3",
    ] {
        assert_eq!(env.delete(p).await.status, 200, "{p}");
    }
    // Deleted plugins are gone at once (the reference keeps listing them, H22).
    assert!(env.list("sources").await.is_empty());
    assert_eq!(env.get("/plugins/sinks").await.body, "[]");
    // H19-H20: unreachable callbacks (we do not keep the reference's "succeded" typo).
    let r = post("functions", json!({"name": "echo2", "file": fs("/functions/echo2.zip"), "callback": "http://127.0.0.1:1/cb"})).await;
    assert!(
        r.error_message().starts_with(
            "functions plugins create command error: action succeeded but callback failed: "
        ),
        "{}",
        r.body
    );
    assert_eq!(
        post(
            "sources",
            json!({"name": "random2", "file": fs("/sources/random2.zip")})
        )
        .await
        .status,
        201
    );
    let r = env
        .delete("/plugins/sources/random2?callback=http%3A%2F%2F127.0.0.1%3A1%2Fcb")
        .await;
    assert!(
        r.error_message().starts_with(
            "delete sources plugin random2 error: action succeeded but callback failed: "
        ),
        "{}",
        r.body
    );
    // H23
    let r = env.post_raw("/plugins/sources", "not json").await;
    assert!(r
        .error_message()
        .starts_with("Invalid body: Error decoding the sources plugin json: "));
    // H24: refused before any download (the reference tried and failed).
    let r = post(
        "sources",
        json!({"name": "random2", "file": "ftp://x/a.zip"}),
    )
    .await;
    assert_eq!(r.error_message(), "sources plugins create command error: invalid uri ftp://x/a.zip: only http and https URLs are accepted");
    // H25: a path without scheme is invalid; a query string is allowed (presigned URLs).
    let r = post(
        "sources",
        json!({"name": "random2", "file": "/local/a.zip"}),
    )
    .await;
    assert!(r
        .error_message()
        .starts_with("sources plugins create command error: invalid uri /local/a.zip"));
    let r = post(
        "sources",
        json!({"name": "random2", "file": format!("{}?x=1", fs("/sources/random2.zip"))}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // H26
    let r = post(
        "sources",
        json!({"name": "random9", "file": fs("/sources/random9.zip")}),
    )
    .await;
    assert_eq!(r.error_message(), format!("sources plugins create command error: fail to download file {}: cannot download the file with status: 404 Not Found", fs("/sources/random9.zip")));
    // H27: surrounding spaces are refused, not silently trimmed.
    let r = post(
        "sources",
        json!({"name": " random4 ", "file": fs("/sources/random2.zip")}),
    )
    .await;
    assert!(
        r.error_message()
            .contains("contains leading or trailing whitespace"),
        "{}",
        r.body
    );
    // H28-H29: a second delete, or an unknown name, is 404 not exist.
    let r = env.delete("/plugins/functions/echo2").await;
    assert_eq!(r.status, 200);
    let r = env.delete("/plugins/functions/echo2").await;
    assert_eq!(
        (r.status, r.error_message()),
        (
            404,
            "delete functions plugin echo2 error: invalid name echo2: not exist".into()
        )
    );
    let r = env.delete("/plugins/functions/nope").await;
    assert_eq!(
        (r.status, r.error_message()),
        (
            404,
            "delete functions plugin nope error: invalid name nope: not exist".into()
        )
    );
    // H30: re-create after delete works at once (the reference refused until a restart).
    assert_eq!(
        post(
            "functions",
            json!({"name": "echo2", "file": fs("/functions/echo2.zip")})
        )
        .await
        .status,
        201
    );
    // H31 (a .so already on disk) does not apply: the service keeps no plugin directory.
}

/// C1-C29 (today's eKuiper manager cases), plus R1-R13 where they differ.
async fn current_cases(env: TestEnv) {
    let fs = |p: &str| env.files.url(p);
    let so = real_so("sources");
    env.files
        .serve(
            "/sources/zipMissConf.zip",
            ZipBuilder::new().file("ZipMissConf.so", so.clone()).build(),
        )
        .await;
    env.files
        .serve(
            "/sinks/zipWrongName.zip",
            ZipBuilder::new().file("Random2.so", so.clone()).build(),
        )
        .await;
    env.files
        .serve(
            "/functions/zipMissSo.zip",
            ZipBuilder::new().file("zipMissSo.yaml", "a: 1").build(),
        )
        .await;
    env.files.serve("/sources/invalidZip.zip", Vec::new()).await;
    let random2 = ZipBuilder::new()
        .file("install.sh", "")
        .file("random2.json", "")
        .file("Random2.so", so.clone())
        .file("random2.yaml", "default:\n  interval: 1000\n")
        .build();
    env.files.serve("/sources/random2.zip", random2).await;
    env.files
        .serve(
            "/sources/random3.zip",
            plugin_zip("sources", "random3", "Random3@v1.0.0.so"),
        )
        .await;
    env.files
        .serve("/sinks/file2.zip", plugin_zip("sinks", "file2", "file2.so"))
        .await;
    env.files
        .serve(
            "/functions/echo2.zip",
            plugin_zip("functions", "echo2", "Echo2.so"),
        )
        .await;
    let comp = ZipBuilder::new()
        .file("Comp.so", real_so("functions"))
        .dir("etc/")
        .file("etc/bar.txt", "bar")
        .file("etc/foo.txt", "foo")
        .build();
    env.files.serve("/functions/comp.zip", comp).await;
    let post = |ty: &'static str, body: serde_json::Value| {
        let env = &env;
        async move { env.post(&format!("/plugins/{ty}"), body).await }
    };

    // C1
    let r = post("sources", json!({"name": "", "file": ""})).await;
    assert_eq!(
        (r.status, r.error_message()),
        (
            400,
            "sources plugins create command error: invalid name : should not be empty".into()
        )
    );
    // C2: a clear layout message instead of "expectFiles: 3, got filenames:[...]".
    let r = post(
        "sources",
        json!({"name": "zipMissConf", "file": fs("/sources/zipMissConf.zip")}),
    )
    .await;
    assert_eq!(r.error_message(), "sources plugins create command error: fail to install plugin: invalid zip file: a source plugin needs its configuration zipMissConf.yaml at the root of the zip, next to ZipMissConf.so, but it is missing; the zip contains [ZipMissConf.so]");
    // C3
    let r = post(
        "sinks",
        json!({"name": "urlerror", "file": fs("/sinks/nozip")}),
    )
    .await;
    assert!(r.error_message().starts_with(&format!(
        "sinks plugins create command error: invalid uri {}",
        fs("/sinks/nozip")
    )));
    // C4-C5
    let r = post(
        "sinks",
        json!({"name": "zipWrongname", "file": fs("/sinks/zipWrongName.zip")}),
    )
    .await;
    assert!(
        r.error_message()
            .contains("expected the plugin library ZipWrongname.so or zipWrongname.so"),
        "{}",
        r.body
    );
    let r = post(
        "functions",
        json!({"name": "zipMissSo", "file": fs("/functions/zipMissSo.zip")}),
    )
    .await;
    assert!(
        r.error_message()
            .contains("expected the plugin library ZipMissSo.so or zipMissSo.so"),
        "{}",
        r.body
    );
    // C6-C9
    assert_eq!(
        post(
            "sources",
            json!({"name": "random2", "file": fs("/sources/random2.zip")})
        )
        .await
        .body,
        "sources plugin random2 is created"
    );
    assert_eq!(
        post(
            "sources",
            json!({"name": "random3", "file": fs("/sources/random3.zip")})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        post(
            "sinks",
            json!({"name": "file2", "file": fs("/sinks/file2.zip")})
        )
        .await
        .status,
        201
    );
    assert_eq!(post("functions", json!({"name": "echo2", "file": fs("/functions/echo2.zip"), "functions": ["echo2", "echo3"]})).await.status, 201);
    // C10
    let r = post("functions", json!({"name": "echo2", "file": fs("/functions/echo2.zip"), "functions": ["echo2", "echo3"]})).await;
    assert_eq!(
        r.error_message(),
        "functions plugins create command error: invalid name echo2: duplicate"
    );
    // C11: the clash is refused and, unlike the reference, leaks nothing.
    let r = post(
        "functions",
        json!({"name": "misc", "file": fs("/functions/echo2.zip"), "functions": ["misc", "echo3"]}),
    )
    .await;
    assert_eq!(r.error_message(), "functions plugins create command error: function name echo3 already exists in plugin echo2");
    // C12
    assert_eq!(
        post(
            "functions",
            json!({"name": "comp", "file": fs("/functions/comp.zip")})
        )
        .await
        .status,
        201
    );
    // C13
    let r = post(
        "sources",
        json!({"name": "invalidZip", "file": fs("/sources/invalidZip.zip")}),
    )
    .await;
    assert!(r.error_message().starts_with("sources plugins create command error: fail to install plugin: invalid zip file: not a readable zip archive"), "{}", r.body);
    // C14-C17 (no auto-loaded plugins here; misc does not leak into udfs)
    assert_eq!(env.list("sources").await, vec!["random2", "random3"]);
    assert_eq!(env.list("sinks").await, vec!["file2"]);
    assert_eq!(env.list("functions").await, vec!["comp", "echo2"]);
    assert_eq!(
        env.get("/plugins/udfs").await.json(),
        json!(["comp", "echo2", "echo3"])
    );
    // C18-C19
    assert_eq!(
        env.get("/plugins/udfs/echo3").await.json(),
        json!({"name": "echo3", "plugin": "echo2"})
    );
    let r = env.get("/plugins/udfs/none").await;
    assert_eq!(
        (r.status, r.json()),
        (
            404,
            json!({"error": 1002, "message": "describe function none error: not found"})
        )
    );
    // C20-C23
    let d = env.get("/plugins/sources/random2").await.json();
    assert_eq!(
        (d["name"].clone(), d["version"].clone()),
        (json!("random2"), json!(""))
    );
    assert_eq!(
        env.get("/plugins/sources/random3").await.json()["version"],
        "1.0.0"
    );
    let d = env.get("/plugins/functions/echo2").await.json();
    assert_eq!(
        (d["functions"].clone(), d["version"].clone()),
        (json!(["echo2", "echo3"]), json!(""))
    );
    let r = env.get("/plugins/functions/echo20").await;
    assert_eq!(
        (r.status, r.json()),
        (
            404,
            json!({"error": 1002, "message": "describe functions plugin echo20 error: not found"})
        )
    );
    // R2-R5, R9-R10: update of a function plugin.
    let r = env
        .put(
            "/plugins/functions/echo2",
            json!({"name": "echo2", "file": fs("/functions/echo22.zip")}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        env.list("functions").await,
        vec!["comp", "echo2"],
        "a failed update keeps echo2 (R9 lost it)"
    );
    let r = env
        .put(
            "/plugins/functions/echo2",
            json!({"name": "echo2", "file": fs("/functions/echo2.zip")}),
        )
        .await;
    assert_eq!(
        r.body,
        "plugin echo2 is updated and Kuiper nodes must restart for the change to take effect."
    );
    assert_eq!(
        env.get("/plugins/functions/echo2").await.json()["functions"],
        json!(["echo2", "echo3"]),
        "an update without functions keeps the list"
    );
    // R12-R13
    let r = post(
        "functions",
        json!({"name": "invalid.echo2", "file": fs("/functions/echo2.zip")}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        env.delete("/plugins/functions/invalid.echo2").await.status,
        400
    );
    // C24-C28
    assert_eq!(env.delete("/plugins/sources/random2").await.body, "sources plugin random2 is deleted and Kuiper nodes must restart for the change to take effect.");
    assert_eq!(env.delete("/plugins/sinks/file2").await.status, 200);
    assert_eq!(env.delete("/plugins/functions/echo2").await.status, 200);
    assert_eq!(
        env.get("/plugins/udfs").await.json(),
        json!(["comp"]),
        "echo2 and echo3 are released"
    );
    assert_eq!(env.delete("/plugins/sources/random3").await.status, 200);
    assert_eq!(env.delete("/plugins/functions/comp").await.status, 200);
    for ty in ["sources", "sinks", "functions"] {
        assert!(env.list(ty).await.is_empty());
    }
    assert_eq!(env.get("/plugins/udfs").await.body, "[]");
    // C29: an empty name is not routable.
    assert_eq!(env.delete("/plugins/functions/").await.status, 404);
}
