//! A corpus of malformed requests and malicious zips: no 5xx, no panic, every
//! answer a JSON error, and nothing written anywhere (no plugin, no temporary
//! file left behind).

use kuiper_harness::zips::{mark_encrypted, rename_in_place, ZipBuilder};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{real_so, Backend, TestEnv};

fn bodies(file: &str) -> Vec<String> {
    let long = "n".repeat(5000);
    let mut v: Vec<String> = [
        "",
        " ",
        "not json",
        "{",
        "}",
        "[",
        "null",
        "true",
        "0",
        "-1",
        "1e309",
        "\"s\"",
        "[]",
        "[{}]",
        "{}",
        "{\"name\":null}",
        "{\"name\":1}",
        "{\"name\":[]}",
        "{\"name\":{}}",
        "{\"name\":true}",
        "{\"file\":1}",
        "{\"file\":[]}",
        "{\"callback\":1}",
        "{\"functions\":\"f\"}",
        "{\"functions\":[1]}",
        "{\"shellParas\":\"x\"}",
        "{\"shellParas\":[1]}",
        "{\"name\":\"a\",\"name\":\"b\"}",
        "{\"name\":\"\\ud800\"}",
        "\u{feff}{}",
        "{\"name\":\"a\"}garbage",
        "\0",
        "{\"name\":\"a\u{0000}b\"}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for name in [
        "",
        " ",
        "a b",
        "../../evil",
        "..",
        ".",
        "a/b",
        "a\\b",
        "%2e%2e",
        "a%2Fb",
        "-rf",
        "😀",
        "名前",
        "a\u{200b}b",
        "a\u{202e}b",
        "a\tb",
        "a\nb",
        "a.b",
        "a:b",
        "CON",
        "a;rm -rf /",
        "$(id)",
        "`id`",
        "a'b",
        "a\"b",
        "<script>",
    ] {
        v.push(json!({"name": name, "file": file}).to_string());
    }
    v.push(json!({"name": long, "file": file}).to_string());
    v.push(json!({"name": "n".repeat(129), "file": file}).to_string());
    for bad_file in [
        "",
        "x",
        "javascript:alert(1)",
        "data:application/zip;base64,UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==",
        "file:///etc/passwd.zip",
        "gopher://127.0.0.1/a.zip",
        "ftp://127.0.0.1/a.zip",
        "http://",
        "http:///a.zip",
        "http://[::1/a.zip",
        "http://a b/c.zip",
        "http://127.0.0.1:99999/a.zip",
        "//127.0.0.1/a.zip",
        "http://127.0.0.1/a.ZIP",
        "http://127.0.0.1/a.zip/..",
        "\\\\host\\share\\a.zip",
    ] {
        v.push(json!({"name": "ok", "file": bad_file}).to_string());
    }
    for bad_cb in [
        "x",
        "ftp://h/cb",
        "http://",
        "javascript:1",
        "file:///tmp/cb",
    ] {
        v.push(json!({"name": "ok", "file": file, "callback": bad_cb}).to_string());
    }
    v.push(json!({"name": "ok", "file": file, "shellParas": ["a"]}).to_string());
    v.push(json!({"name": "ok", "file": file, "functions": ["a.b"]}).to_string());
    v.push(json!({"name": "ok", "file": file, "functions": ["f", "f"]}).to_string());
    v
}

fn zips() -> Vec<(&'static str, Vec<u8>)> {
    let so = real_so("sinks");
    let base = || ZipBuilder::new().file("Ok.so", so.clone());
    let valid = base().build();
    let mut truncated_cd = valid.clone();
    truncated_cd.truncate(valid.len() - 10);
    let mut truncated_data = valid.clone();
    truncated_data.truncate(valid.len() / 2);
    let mut flipped = valid.clone();
    let mid = flipped.len() / 3;
    flipped[mid] ^= 0xff;
    let mut many = ZipBuilder::new().file("Ok.so", so.clone());
    for i in 0..1001 {
        many = many.file(&format!("etc/{i}"), "x");
    }
    vec![
        ("traversal", base().file("../evil", "x").build()),
        (
            "deep traversal",
            base().file("etc/../../../../tmp/evil", "x").build(),
        ),
        ("absolute", base().file("/tmp/evil", "x").build()),
        ("backslash", base().file("..\\evil", "x").build()),
        ("drive", base().file("C:/evil", "x").build()),
        ("control", base().file("etc/a\u{1}b", "x").build()),
        ("symlink", base().symlink("etc/link", "/etc/passwd").build()),
        (
            "symlink library",
            ZipBuilder::new()
                .symlink("Ok.so", "/usr/lib/libc.so.6")
                .build(),
        ),
        (
            "duplicate",
            rename_in_place(
                base().file("etc/x", "1").file("etc/y", "2").build(),
                "etc/y",
                "etc/x",
            ),
        ),
        (
            "case duplicate",
            base().file("ok.json", "{}").file("OK.json", "{}").build(),
        ),
        (
            "nested archive",
            base().file("inner.zip", valid.clone()).build(),
        ),
        ("encrypted", mark_encrypted(valid.clone())),
        (
            "bomb",
            base().file("etc/zeros", vec![0u8; 64 << 20]).build(),
        ),
        ("truncated central directory", truncated_cd),
        ("truncated data", truncated_data),
        ("corrupted byte", flipped),
        ("empty", Vec::new()),
        ("empty zip", ZipBuilder::new().build()),
        (
            "only directories",
            ZipBuilder::new().dir("etc/").dir("lib/").build(),
        ),
        ("too many entries", many.build()),
        (
            "not ELF",
            ZipBuilder::new()
                .file("Ok.so", "#!/bin/sh\necho hi\n")
                .build(),
        ),
        (
            "ELF magic only",
            ZipBuilder::new().file("Ok.so", b"\x7fELF".to_vec()).build(),
        ),
        (
            "truncated ELF",
            ZipBuilder::new().file("Ok.so", so[..200].to_vec()).build(),
        ),
        (
            "wrong library",
            ZipBuilder::new().file("Other.so", so.clone()).build(),
        ),
        (
            "library in folder",
            ZipBuilder::new().file("lib/Ok.so", so.clone()).build(),
        ),
        ("two libraries", base().file("ok@v2.so", so.clone()).build()),
        (
            "long entry name",
            base()
                .file(&format!("etc/{}", "a".repeat(4000)), "x")
                .build(),
        ),
        ("text file", b"hello, I am not a zip".to_vec()),
        (
            "gzip",
            vec![
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
        ("shellParas needed", base().file("lib/dep.so", "x").build()),
    ]
    .into_iter()
    .chain(
        crate::disagreement::cases()
            .into_iter()
            .map(|(case, zip, _)| (case, zip)),
    )
    .collect()
}

fn paths() -> Vec<(Method, &'static str)> {
    vec![
        (Method::GET, "/plugins/sources/..%2F..%2Fetc%2Fpasswd"),
        (Method::GET, "/plugins/sources/%2e%2e"),
        (Method::GET, "/plugins/%2e%2e/x"),
        (Method::GET, "/plugins/sources/a%00b"),
        (Method::GET, "/plugins/sources/%ff%fe"),
        (Method::GET, "//plugins/sources"),
        (Method::GET, "/plugins/sources/"),
        (Method::GET, "/plugins/sources/a/b"),
        (Method::GET, "/plugins/udfs/..%2Fx"),
        (Method::GET, "/plugins/udfs/a.b"),
        (Method::GET, "/plugins/SOURCES"),
        (Method::GET, "/plugins"),
        (Method::GET, "/plugins/"),
        (Method::GET, "/rules/sources/x"),
        (Method::DELETE, "/plugins/sources/%20"),
        (Method::DELETE, "/plugins/sources/x?callback=%ZZ"),
        (Method::DELETE, "/plugins/sources/x?callback=ftp://x"),
        (Method::DELETE, "/rules/widgets/x"),
        (Method::DELETE, "/plugins/sources"),
        (Method::PUT, "/plugins/sources"),
        (Method::PATCH, "/plugins/sources/x"),
        (Method::OPTIONS, "/plugins/sources"),
        (Method::TRACE, "/plugins/sources"),
        (Method::POST, "/plugins/udfs"),
        (Method::POST, "/plugins/sources/x/register"),
        (Method::POST, "/plugins/functions/a.b/register"),
        (Method::POST, "/plugins/functions/nope/register"),
        (Method::PUT, "/plugins/sources/nope"),
        (Method::PUT, "/plugins/sources/a.b"),
        (Method::GET, "/plugins/sources/nope"),
        (Method::DELETE, "/plugins/functions/nope"),
        (Method::GET, "/ping/x"),
        (Method::POST, "/ping"),
        (Method::GET, "/.env"),
        (Method::GET, "/plugins/sources/x%2Fy"),
    ]
}

async fn check(env: &TestEnv, what: &str, r: reqwest::Response, method: &Method) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = r.text().await.unwrap_or_default();
    assert!(status < 500, "{what}: {status} {body}");
    assert!(
        status >= 400,
        "{what}: malformed input accepted: {status} {body}"
    );
    if *method != Method::HEAD {
        assert!(
            ct.starts_with("application/json"),
            "{what}: {status} {ct:?} {body}"
        );
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
        assert!(
            v["error"].is_u64() && v["message"].is_string(),
            "{what}: {body}"
        );
    }
    let _ = env;
}

async fn corpus(backend: Backend) {
    let env = TestEnv::start_with(backend, &["--max-uncompressed-bytes", "16000000"]).await;
    let file = env.serve_plugin("sinks", "ok").await;
    let mut sent = 0;
    for ty in ["sources", "sinks", "functions", "widgets"] {
        for body in bodies(&file) {
            let r = env
                .http
                .post(format!("{}/plugins/{ty}", env.base))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            check(&env, &format!("POST {ty} {body:?}"), r, &Method::POST).await;
            sent += 1;
        }
    }
    for (name, zip) in zips() {
        let url = env
            .files
            .serve(&format!("/corpus/{}.zip", name.replace(' ', "-")), zip)
            .await;
        for ty in ["sinks", "functions"] {
            let r = env
                .http
                .post(format!("{}/plugins/{ty}", env.base))
                .body(json!({"name": "ok", "file": url}).to_string())
                .send()
                .await
                .unwrap();
            check(&env, &format!("zip {name} as {ty}"), r, &Method::POST).await;
            sent += 1;
        }
    }
    for (method, path) in paths() {
        let r = env
            .http
            .request(method.clone(), format!("{}{path}", env.base))
            .body("{}")
            .send()
            .await
            .unwrap();
        check(&env, &format!("{method} {path}"), r, &method).await;
        sent += 1;
    }
    for (k, v) in [
        ("content-type", "text/plain"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-encoding", "gzip"),
        ("content-length", "5"),
        ("expect", "100-continue"),
        ("authorization", "Bearer garbage"),
        ("transfer-encoding", "gzip, chunked"),
    ] {
        let r = env
            .http
            .post(format!("{}/plugins/sinks", env.base))
            .header(k, v)
            .body("\u{1f}\u{8b}garbage")
            .send()
            .await;
        if let Ok(r) = r {
            check(&env, &format!("header {k}: {v}"), r, &Method::POST).await;
        }
        sent += 1;
    }
    assert!(sent >= 200, "the corpus has {sent} requests");
    // Nothing was stored and nothing was left behind.
    for ty in ["sources", "sinks", "functions"] {
        assert!(env.list(ty).await.is_empty());
    }
    assert!(
        env.stored_files()
            .await
            .iter()
            .all(|f| f.contains("blobs/")),
        "{:?}",
        env.stored_files().await
    );
    let leftovers: Vec<_> = std::fs::read_dir(env.tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "store")
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    assert_eq!(env.get("/ping").await.status, 200, "still healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_corpus_local() {
    corpus(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_corpus_s3() {
    corpus(Backend::S3).await;
}

/// Node reports are untrusted input too: the bad ones of `nodes::bad_reports`
/// and every truncation of a good one, each under its own key. `GET /nodes`
/// answers 200 with each such node `invalid` and an error, and
/// `GET /nodes/{id}` answers 200 for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_corpus() {
    let env = TestEnv::start(Backend::Local).await;
    let good = crate::nodes::report(
        "good",
        json!([{"type": "sinks", "name": "a", "outcome": "loaded"}]),
    )
    .to_string()
    .into_bytes();
    let mut bad: Vec<(String, Vec<u8>)> = crate::nodes::bad_reports()
        .into_iter()
        .map(|(id, body)| (id.to_string(), body))
        .collect();
    for cut in (0..good.len()).step_by(3) {
        bad.push((format!("cut{cut:04}"), good[..cut].to_vec()));
    }
    for (id, body) in &bad {
        env.write_object(&format!("nodes/{id}.json"), body.clone())
            .await;
    }
    env.write_object("nodes/good.json", good.clone()).await;
    let r = env.get("/nodes?limit=1000").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), bad.len() + 1);
    for n in nodes {
        let want = if n["id"] == "good" {
            "restart-needed"
        } else {
            "invalid"
        };
        assert_eq!(n["state"], want, "{n}");
    }
    for (id, _) in &bad {
        let r = env.get(&format!("/nodes/{id}")).await;
        assert_eq!(r.status, 200, "{id}: {}", r.body);
        assert_eq!(r.json()["state"], "invalid", "{id}");
    }
}
