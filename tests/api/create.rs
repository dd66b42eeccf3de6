//! Create, list and describe.

use serde_json::json;

use crate::common::{plugin_zip, real_so, TestEnv};

both_stores!(
    create_lists_and_describes,
    create_versioned_source,
    create_duplicate_is_refused,
    list_is_sorted_and_empty_when_none,
    describe_unknown_is_404,
    unknown_type_is_404,
    create_stores_each_zip_under_its_own_key,
    create_records_what_deflated_and_streamed_zips_hold,
    names_differing_only_in_case_are_refused,
    pairs_differing_in_case_from_earlier_versions_are_still_served,
);

async fn create_lists_and_describes(env: TestEnv) {
    let url = env.serve_plugin("sources", "random2").await;
    let r = env
        .post("/plugins/sources", json!({"name": "random2", "file": url}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body, "sources plugin random2 is created");
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );

    assert_eq!(env.list("sources").await, vec!["random2"]);
    assert!(env.list("sinks").await.is_empty());

    let d = env.get("/plugins/sources/random2").await;
    assert_eq!(d.status, 200, "{}", d.body);
    let v = d.json();
    assert_eq!(v["name"], "random2");
    assert_eq!(v["version"], "");
    assert_eq!(v["type"], "sources");
    assert_eq!(v["arch"], kuiper_registry::package::host_arch());
    assert_eq!(v["soFile"], "Random2.so");
    assert_eq!(v["source"], url);
    let zip = plugin_zip("sources", "random2", "Random2.so");
    assert_eq!(v["size"], zip.len() as u64);
    use sha2::Digest;
    assert_eq!(v["sha256"], hex::encode(sha2::Sha256::digest(&zip)));
    assert!(v["created"].as_str().unwrap().ends_with('Z'));
    assert!(
        v.get("functions").is_none(),
        "sources have no functions: {v}"
    );
}

async fn create_versioned_source(env: TestEnv) {
    let zip = plugin_zip("sources", "random3", "Random3@v1.0.0.so");
    let url = env.files.serve("/sources/random3.zip", zip).await;
    let r = env
        .post("/plugins/sources", json!({"name": "random3", "file": url}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = env.get("/plugins/sources/random3").await.json();
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["soFile"], "Random3@v1.0.0.so");

    // Lower-case library names are accepted too (reference C8).
    let url = env
        .files
        .serve("/sinks/file2.zip", plugin_zip("sinks", "file2", "file2.so"))
        .await;
    let r = env
        .post("/plugins/sinks", json!({"name": "file2", "file": url}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        env.get("/plugins/sinks/file2").await.json()["soFile"],
        "file2.so"
    );
}

async fn create_duplicate_is_refused(env: TestEnv) {
    env.create_ok("functions", "echo2").await;
    let hits_before = env.files.hits("/functions/echo2.zip").await;
    let url = env.files.url("/functions/echo2.zip");
    let r = env
        .post("/plugins/functions", json!({"name": "echo2", "file": url}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "functions plugins create command error: invalid name echo2: duplicate"
    );
    // The duplicate is caught before anything is downloaded.
    assert_eq!(env.files.hits("/functions/echo2.zip").await, hits_before);
    // The same name in another type is a different plugin.
    env.create_ok("sinks", "echo2").await;
}

async fn list_is_sorted_and_empty_when_none(env: TestEnv) {
    let r = env.get("/plugins/sinks").await;
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/json"));
    assert_eq!(r.body, "[]");
    for n in ["zeta", "alpha", "Mid", "beta_2", "beta-1"] {
        env.create_ok("sinks", n).await;
    }
    assert_eq!(
        env.list("sinks").await,
        vec!["Mid", "alpha", "beta-1", "beta_2", "zeta"]
    );
}

async fn describe_unknown_is_404(env: TestEnv) {
    let r = env.get("/plugins/functions/echo20").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], 1002);
    assert_eq!(
        r.error_message(),
        "describe functions plugin echo20 error: not found"
    );
}

async fn unknown_type_is_404(env: TestEnv) {
    for (method, path) in [
        ("GET", "/plugins/widgets"),
        ("POST", "/plugins/widgets"),
        ("GET", "/plugins/widgets/a"),
        ("DELETE", "/plugins/widgets/a"),
        ("PUT", "/plugins/widgets/a"),
    ] {
        let body = (method == "POST" || method == "PUT")
            .then(|| json!({"name":"a","file":"http://h/a.zip"}).to_string());
        let r = env.request(method.parse().unwrap(), path, body).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert!(
            r.error_message().contains("unknown plugin type widgets"),
            "{}",
            r.body
        );
    }
    let r = env.get("/nope").await;
    assert_eq!(r.status, 404);
    r.error_message();
    let r = env
        .request(reqwest::Method::PATCH, "/plugins/sources", None)
        .await;
    assert_eq!(r.status, 405);
    r.error_message();
}

async fn create_stores_each_zip_under_its_own_key(env: TestEnv) {
    env.create_ok("sinks", "a1").await;
    // Same bytes under another name: a second zip, so neither plugin's zip
    // depends on the other's lifetime.
    let url = env
        .files
        .serve("/other.zip", plugin_zip("sinks", "a1", "A1.so"))
        .await;
    let r = env
        .post("/plugins/functions", json!({"name": "a1", "file": url}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let blobs = env.stored_blobs().await;
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    use sha2::Digest;
    let sink = env.get("/plugins/sinks/a1").await.json();
    let function = env.get("/plugins/functions/a1").await.json();
    assert_ne!(sink["blob"], function["blob"]);
    assert_eq!(sink["sha256"], function["sha256"]);
    for d in [sink, function] {
        let blob = d["blob"].as_str().unwrap();
        assert!(kuiper_registry::store::keys::is_blob_key(blob), "{blob}");
        assert!(
            blobs.iter().any(|b| b.ends_with(blob)),
            "{blob} in {blobs:?}"
        );
        let bytes = env.read_object(blob).await.expect("the zip is stored");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            d["sha256"].as_str().unwrap(),
            "the metadata's sha256 is the stored zip's"
        );
        assert_eq!(d["size"], bytes.len() as u64);
    }
}

/// The entries are decompressed while the zip downloads (from their local
/// headers) and only what that could not settle is read again afterwards:
/// either way the plugin records every file with its real size. A zip written
/// by a streaming tool (`zip -`, Go's archive/zip, Java's ZipOutputStream)
/// gives each entry's sizes only after its data, so it takes the second path.
async fn create_records_what_deflated_and_streamed_zips_hold(env: TestEnv) {
    use std::io::Write;
    let so = real_so("sinks");
    let data: Vec<u8> = (0..3u64 << 20)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 & 0x3f)
        .collect();
    let deflated = kuiper_harness::zips::ZipBuilder::new()
        .file("Big.so", so.clone())
        .file("etc/data.bin", data.clone())
        .build();
    let mut w = zip::ZipWriter::new_stream(Vec::new());
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    w.start_file("Big.so", opts).unwrap();
    w.write_all(&so).unwrap();
    w.start_file("etc/data.bin", opts).unwrap();
    w.write_all(&data).unwrap();
    let streamed = w.finish().unwrap().into_inner();
    let expected = json!([
        {"name": "Big.so", "size": so.len()},
        {"name": "etc/data.bin", "size": data.len()},
    ]);
    for (path, zip) in [
        ("/deflated/big.zip", deflated),
        ("/streamed/big.zip", streamed),
    ] {
        let url = env.files.serve(path, zip).await;
        let r = env
            .post("/plugins/sinks", json!({"name": "big", "file": url}))
            .await;
        assert_eq!(r.status, 201, "{path}: {}", r.body);
        // The download's spool file is gone once the create is answered.
        let left: Vec<_> = std::fs::read_dir(env.tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("download-"))
            .collect();
        assert!(left.is_empty(), "{path}: left behind: {left:?}");
        let v = env.get("/plugins/sinks/big").await.json();
        assert_eq!(v["files"], expected, "{path}");
        assert_eq!(env.delete("/plugins/sinks/big").await.status, 200);
    }
}

/// `random2` and `Random2` would both need `Random2.so` on every node.
async fn names_differing_only_in_case_are_refused(env: TestEnv) {
    env.create_ok("sources", "random2").await;
    let url = env.serve_plugin("sources", "Random2").await;
    let hits_before = env.files.hits("/sources/Random2.zip").await;
    let r = env
        .post("/plugins/sources", json!({"name": "Random2", "file": url}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error_message(),
        "sources plugins create command error: invalid name Random2: duplicate of random2"
    );
    assert_eq!(
        env.files.hits("/sources/Random2.zip").await,
        hits_before,
        "refused before anything is downloaded"
    );
    assert_eq!(env.list("sources").await, vec!["random2"]);
    // Another type keeps its libraries elsewhere.
    env.create_ok("sinks", "Random2").await;
    // Once the other one is gone, the name is free.
    assert_eq!(env.delete("/plugins/sources/random2").await.status, 200);
    let r = env
        .post("/plugins/sources", json!({"name": "Random2", "file": url}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(env.list("sources").await, vec!["Random2"]);
}

/// A store written before names were compared without case may hold both
/// `random2` and `Random2`: both are listed, described and deleted as before,
/// and neither can be created again while the other exists.
async fn pairs_differing_in_case_from_earlier_versions_are_still_served(env: TestEnv) {
    use crate::persistence::{delete_object, get_object, put_object};
    env.create_ok("sources", "random2").await;
    let mut meta: serde_json::Value = serde_json::from_slice(
        &get_object(&env, "plugins/sources/random2.json")
            .await
            .unwrap(),
    )
    .unwrap();
    meta["name"] = json!("Random2");
    meta["id"] = json!("0123456789abcdef0123456789abcdef");
    put_object(
        &env,
        "plugins/sources/Random2.json",
        serde_json::to_vec(&meta).unwrap(),
    )
    .await;
    // As an earlier version left it: an index that names both.
    delete_object(&env, "index/sources.json").await;
    assert_eq!(env.list("sources").await, vec!["Random2", "random2"]);
    assert_eq!(
        env.get("/plugins/sources/Random2").await.json()["name"],
        "Random2"
    );
    assert_eq!(
        env.get("/plugins/sources/random2").await.json()["name"],
        "random2"
    );
    let r = env
        .post(
            "/plugins/sources",
            json!({"name": "random2", "file": env.files.url("/sources/random2.zip")}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message()
            .ends_with("invalid name random2: duplicate"),
        "{}",
        r.body
    );
    assert_eq!(env.delete("/plugins/sources/Random2").await.status, 200);
    assert_eq!(env.list("sources").await, vec!["random2"]);
    assert_eq!(env.delete("/plugins/sources/random2").await.status, 200);
    assert!(env.list("sources").await.is_empty());
}
