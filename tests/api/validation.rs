//! Input validation: names, URLs, bodies, zip layouts and contents. Every
//! failure is a 400 JSON error that says what to fix, and nothing is stored.

use kuiper_harness::zips::{rename_in_place, ZipBuilder};
use serde_json::json;

use crate::common::{plugin_zip, real_so, TestEnv};

both_stores!(
    bad_names_are_refused,
    bad_path_names_are_refused,
    bad_urls_are_refused,
    query_strings_are_allowed,
    bad_bodies_are_refused,
    zip_layout_errors_say_what_was_expected,
    unsafe_entries_are_refused,
    library_must_be_an_elf_shared_object,
    shell_paras_need_install_script,
    extras_allowed_with_install_script,
    download_failures_are_reported,
    oversized_body_is_refused,
);

async fn assert_refused(env: &TestEnv, ty: &str, body: serde_json::Value, expected: &str) {
    let before = env.stored_files().await;
    let r = env.post(&format!("/plugins/{ty}"), body.clone()).await;
    assert_eq!(r.status, 400, "{body}: {}", r.body);
    let msg = r.error_message();
    assert!(
        msg.contains(expected),
        "{body}:\n  got      {msg}\n  expected {expected}"
    );
    assert_eq!(
        env.stored_files().await,
        before,
        "nothing is stored for {body}"
    );
}

async fn bad_names_are_refused(env: TestEnv) {
    let url = env.serve_plugin("sinks", "ok").await;
    assert_refused(
        &env,
        "sinks",
        json!({"name": "", "file": url}),
        "sinks plugins create command error: invalid name : should not be empty",
    )
    .await;
    for bad in [
        "a.b",
        "../../evil",
        "a/b",
        " a",
        "a ",
        "-abc",
        "a#b",
        "é",
        "a%2Fb",
    ] {
        assert_refused(
            &env,
            "sinks",
            json!({"name": bad, "file": url}),
            "invalid name",
        )
        .await;
    }
    assert_refused(
        &env,
        "sinks",
        json!({"name": "a".repeat(129), "file": url}),
        "longer than 128",
    )
    .await;
    assert_refused(
        &env,
        "sinks",
        json!({"name": "invalid.echo2", "file": url}),
        "only letters, digits, '_' and '-' are allowed",
    )
    .await;
    assert!(env.list("sinks").await.is_empty());
}

async fn bad_path_names_are_refused(env: TestEnv) {
    for path in [
        "/plugins/sinks/a.b",
        "/plugins/sinks/-abc",
        "/plugins/sinks/%20a",
    ] {
        let r = env.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.error_message().contains("invalid name"), "{}", r.body);
        let r = env.delete(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(
            r.error_message().starts_with("delete sinks plugin"),
            "{}",
            r.body
        );
    }
    let r = env.delete("/plugins/functions/invalid.echo2").await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("invalid name \"invalid.echo2\""),
        "{}",
        r.body
    );
}

async fn bad_urls_are_refused(env: TestEnv) {
    let base = env.files.base();
    for (file, why) in [
        (format!("{base}/sinks/nozip"), "the path must end with .zip"),
        (format!("{base}/sinks/x.ZIP"), "the path must end with .zip"),
        ("ftp://x/a.zip".to_string(), "only http and https"),
        ("/local/a.zip".to_string(), "invalid uri /local/a.zip"),
        ("http:///x.zip".to_string(), "invalid uri"),
        (
            "file:///etc/x.zip".to_string(),
            "file:// URLs are only accepted",
        ),
        ("file://host/x.zip".to_string(), "invalid uri"),
        ("not a url".to_string(), "invalid uri"),
        (String::new(), "the file URL is empty"),
    ] {
        assert_refused(
            &env,
            "sinks",
            json!({"name": "urlerror", "file": file}),
            why,
        )
        .await;
        assert_refused(
            &env,
            "sinks",
            json!({"name": "urlerror", "file": file}),
            &format!("sinks plugins create command error: invalid uri {file}"),
        )
        .await;
    }
    let url = env.serve_plugin("sinks", "cb").await;
    assert_refused(
        &env,
        "sinks",
        json!({"name": "cb", "file": url, "callback": "ftp://x/cb"}),
        "invalid callback uri ftp://x/cb",
    )
    .await;
    assert_eq!(
        env.files.hits("/sinks/cb.zip").await,
        0,
        "nothing downloaded for a bad callback"
    );
}

async fn query_strings_are_allowed(env: TestEnv) {
    let zip = plugin_zip("sinks", "signed", "Signed.so");
    let url = env.files.serve("/sinks/signed.zip", zip).await;
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "signed", "file": format!("{url}?X-Amz-Signature=secret&x=1")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let d = env.get("/plugins/sinks/signed").await.json();
    assert_eq!(d["source"], url, "the query (credentials) is not recorded");
}

async fn bad_bodies_are_refused(env: TestEnv) {
    for (body, expected) in [
        (
            "not json",
            "Invalid body: Error decoding the sources plugin json: expected ident",
        ),
        (
            "",
            "Invalid body: Error decoding the sources plugin json: EOF while parsing",
        ),
        (
            "{\"name\":1}",
            "Invalid body: Error decoding the sources plugin json: invalid type: integer",
        ),
        ("[]", "Invalid body: Error decoding the sources plugin json"),
        (
            "{\"name\":\"a\",\"file\":\"http://h/a.zip\",\"shellParas\":\"x\"}",
            "Invalid body",
        ),
    ] {
        let r = env.post_raw("/plugins/sources", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let msg = r.error_message();
        assert!(msg.starts_with(expected), "{body}: {msg}");
    }
    let r = env
        .request(
            reqwest::Method::PUT,
            "/plugins/functions/echo2",
            Some("\"name\":\"echo2\", \"file\": \"x\"}".into()),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().starts_with(
            "Invalid body: Error decoding the functions plugin json: trailing characters"
        ),
        "{}",
        r.body
    );
}

async fn zip_layout_errors_say_what_was_expected(env: TestEnv) {
    let so = real_so("sources");
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("sources", "zipMissConf", ZipBuilder::new().file("ZipMissConf.so", so.clone()).build(),
         "fail to install plugin: invalid zip file: a source plugin needs its configuration zipMissConf.yaml at the root of the zip, next to ZipMissConf.so, but it is missing; the zip contains [ZipMissConf.so]"),
        ("sinks", "zipWrongname", ZipBuilder::new().file("Random2.so", so.clone()).build(),
         "invalid zip file: expected the plugin library ZipWrongname.so or zipWrongname.so (a version may follow '@', as in ZipWrongname@v1.0.0.so) at the root of the zip, found none; the zip contains [Random2.so]"),
        ("functions", "zipMissSo", ZipBuilder::new().file("zipMissSo.yaml", "a: 1").build(),
         "expected the plugin library ZipMissSo.so or zipMissSo.so"),
        ("sinks", "nested", ZipBuilder::new().dir("nested/").file("nested/Nested.so", so.clone()).build(),
         "found none (files must be at the root of the zip, not in a folder)"),
        ("sinks", "twice", ZipBuilder::new().file("Twice.so", so.clone()).file("twice@v2.so", so.clone()).build(),
         "expected exactly one plugin library for twice at the root of the zip, found 2: [Twice.so, twice@v2.so]"),
        ("sinks", "extra", ZipBuilder::new().file("Extra.so", so.clone()).file("README.md", "hi").build(),
         "unexpected entry \"README.md\": without install.sh a sinks plugin zip may contain only [Extra.so, extra.json, etc/...]"),
        ("sources", "invalidZip", Vec::new(), "fail to install plugin: invalid zip file: not a readable zip archive"),
        ("sources", "garbage", b"PK\x03\x04 this is not really a zip".to_vec(), "invalid zip file: not a readable zip archive"),
    ];
    for (ty, name, zip, expected) in cases {
        let url = env.files.serve(&format!("/{ty}/{name}.zip"), zip).await;
        assert_refused(&env, ty, json!({"name": name, "file": url}), expected).await;
        assert_refused(
            &env,
            ty,
            json!({"name": name, "file": url}),
            &format!(
                "{ty} plugins create command error: fail to install plugin: invalid zip file:"
            ),
        )
        .await;
    }
    for ty in ["sources", "sinks", "functions"] {
        assert!(env.list(ty).await.is_empty());
    }
}

async fn unsafe_entries_are_refused(env: TestEnv) {
    let so = real_so("sinks");
    let valid = || ZipBuilder::new().file("Evil.so", so.clone());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            valid().file("../evil.txt", "x").build(),
            "\"../evil.txt\" is not allowed: '..' would escape",
        ),
        (
            valid().file("/abs.txt", "x").build(),
            "\"/abs.txt\" is not allowed: absolute paths",
        ),
        (
            valid().file("etc/../../x", "x").build(),
            "'..' would escape",
        ),
        (
            valid().file("a\\..\\x", "x").build(),
            "backslashes are not allowed",
        ),
        (
            valid().symlink("etc/link", "/etc/passwd").build(),
            "\"etc/link\" is not allowed: symbolic links",
        ),
        (
            rename_in_place(
                valid()
                    .file("evil.jsom", "{}")
                    .file("evil.json", "{}")
                    .build(),
                "evil.jsom",
                "evil.json",
            ),
            "the same entry name appears more than once",
        ),
        (
            valid()
                .file("evil.json", "{}")
                .file("EVIL.json", "{}")
                .build(),
            "entry \"EVIL.json\" appears more than once (names are compared without case)",
        ),
    ];
    for (zip, expected) in cases {
        let url = env.files.serve("/sinks/evil.zip", zip).await;
        assert_refused(
            &env,
            "sinks",
            json!({"name": "evil", "file": url}),
            expected,
        )
        .await;
    }
}

async fn library_must_be_an_elf_shared_object(env: TestEnv) {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"this is a 70-byte text file pretending to be a plugin library, nothing more".to_vec(),
            "Fake.so is not an ELF shared library: it does not start with an ELF header",
        ),
        (Vec::new(), "it does not start with an ELF header"),
    ];
    for (so, expected) in cases {
        let url = env
            .files
            .serve(
                "/sinks/fake.zip",
                ZipBuilder::new().file("Fake.so", so).build(),
            )
            .await;
        assert_refused(
            &env,
            "sinks",
            json!({"name": "fake", "file": url}),
            expected,
        )
        .await;
    }
    // An ELF executable (not a shared object): patch e_type of a real library to ET_EXEC.
    let mut exec = real_so("sinks");
    exec[16] = 2;
    exec[17] = 0;
    let url = env
        .files
        .serve(
            "/sinks/fake.zip",
            ZipBuilder::new().file("Fake.so", exec).build(),
        )
        .await;
    assert_refused(
        &env,
        "sinks",
        json!({"name": "fake", "file": url}),
        "not a shared object (ET_DYN)",
    )
    .await;
}

async fn shell_paras_need_install_script(env: TestEnv) {
    let url = env.serve_plugin("sinks", "sp").await;
    assert_refused(
        &env,
        "sinks",
        json!({"name": "sp", "file": url, "shellParas": ["a", "b"]}),
        "fail to install plugin: have shell parameters : [a b] but no install.sh file",
    )
    .await;
}

async fn extras_allowed_with_install_script(env: TestEnv) {
    let zip = ZipBuilder::new()
        .file("Withsh.so", real_so("sinks"))
        .file("install.sh", "echo $@")
        .file("lib/dep.txt", "x")
        .file("withsh.json", "{}")
        .dir("etc/")
        .file("etc/a.txt", "a")
        .build();
    let url = env.files.serve("/sinks/withsh.zip", zip).await;
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "withsh", "file": url, "shellParas": ["x", "y"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let d = env.get("/plugins/sinks/withsh").await.json();
    assert_eq!(d["shellParas"], json!(["x", "y"]));
    let files: Vec<&str> = d["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        vec![
            "Withsh.so",
            "install.sh",
            "lib/dep.txt",
            "withsh.json",
            "etc/a.txt"
        ]
    );
}

async fn download_failures_are_reported(env: TestEnv) {
    let missing = env.files.serve_status("/sources/random9.zip", 404).await;
    assert_refused(&env, "sources", json!({"name": "random9", "file": missing}), &format!("sources plugins create command error: fail to download file {missing}: cannot download the file with status: 404 Not Found")).await;
    let broken = env.files.serve_status("/sources/broken.zip", 500).await;
    assert_refused(
        &env,
        "sources",
        json!({"name": "broken", "file": broken}),
        "cannot download the file with status: 500 Internal Server Error",
    )
    .await;
    // Nothing listens on port 1.
    assert_refused(
        &env,
        "sources",
        json!({"name": "refused", "file": "http://127.0.0.1:1/a.zip"}),
        "fail to download file http://127.0.0.1:1/a.zip: ",
    )
    .await;
}

async fn oversized_body_is_refused(env: TestEnv) {
    let big = "x".repeat(70 * 1024);
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "big", "file": format!("http://h/{big}.zip")}),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.error_message().contains("larger than 65536 bytes"),
        "{}",
        r.body
    );
}
