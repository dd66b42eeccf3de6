//! The real `plugin-api` process: configuration from the environment, fast
//! failure on an unusable store, state kept across a process restart, and
//! `file://` uploads in local mode.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kuiper_harness::files::FileHost;
use kuiper_harness::plugins::example_so;
use kuiper_harness::s3::{S3Server, ACCESS_KEY, REGION, SECRET_KEY};
use kuiper_harness::zips::ZipBuilder;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_plugin-api");

fn command(envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUIPER_LISTEN", "127.0.0.1:0")
        .env("KUIPER_ALLOW_PRIVATE_NETWORK", "true")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the service and returns it with its base URL (from its first stdout line).
async fn start(envs: &[(&str, String)]) -> (Child, String) {
    let mut child = command(envs).spawn().expect("spawn plugin-api");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("plugin-api did not start")
        .unwrap()
        .expect("a first line");
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (child, base)
}

/// Runs the service expecting it to fail at startup; returns its stderr.
async fn start_fails(envs: &[(&str, String)]) -> String {
    let out = tokio::time::timeout(Duration::from_secs(120), command(envs).output())
        .await
        .expect("plugin-api did not exit")
        .unwrap();
    assert!(!out.status.success(), "startup must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn plugin_zip(name: &str) -> Vec<u8> {
    ZipBuilder::new()
        .file(
            &format!("{}.so", kuiper_registry::package::uc_first(name)),
            example_so("print"),
        )
        .build()
}

async fn create(base: &str, ty: &str, name: &str, file: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{base}/plugins/{ty}"))
        .body(json!({"name": name, "file": file}).to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn list(base: &str, ty: &str) -> Vec<String> {
    let body = reqwest::get(format!("{base}/plugins/{ty}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

fn s3_env(server: &S3Server, store: &str, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KUIPER_STORE", store.to_string()),
        ("AWS_ENDPOINT_URL_S3", server.endpoint().to_string()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

async fn restart_keeps_state(envs: Vec<(&'static str, String)>) {
    let files = FileHost::start().await;
    let url = files.serve("/sinks/file2.zip", plugin_zip("file2")).await;
    let (mut first, base) = start(&envs).await;
    assert_eq!(
        create(&base, "sinks", "file2", &url).await,
        (201, "sinks plugin file2 is created".into())
    );
    first.kill().await.unwrap();
    first.wait().await.unwrap();
    let (_second, base) = start(&envs).await;
    assert_eq!(list(&base, "sinks").await, vec!["file2"]);
    let (status, body) = create(&base, "sinks", "file2", &url).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid name file2: duplicate"), "{body}");
}

#[tokio::test]
async fn local_store_survives_process_restart() {
    let dir = tempfile::tempdir().unwrap();
    restart_keeps_state(vec![(
        "KUIPER_STORE",
        dir.path().join("data").display().to_string(),
    )])
    .await;
    assert!(dir.path().join("data/plugins/sinks/file2.json").is_file());
}

#[tokio::test]
async fn s3_store_survives_process_restart() {
    let server = S3Server::start("plugins").await;
    restart_keeps_state(s3_env(&server, "s3://plugins/fleet", SECRET_KEY)).await;
    assert!(server
        .bucket_dir()
        .join("fleet/plugins/sinks/file2.json")
        .is_file());
}

#[tokio::test]
async fn default_store_is_data_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&[]);
    cmd.current_dir(dir.path());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.contains("(store: "), "{line}");
    assert!(dir.path().join("data").is_dir(), "./data is created");
}

#[tokio::test]
async fn unusable_stores_fail_fast_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = start_fails(&[("KUIPER_STORE", file.join("sub").display().to_string())]).await;
    assert!(err.contains("cannot create store directory"), "{err}");

    let err = start_fails(&[("KUIPER_STORE", "gs://bucket".into())]).await;
    assert!(err.contains("invalid store \"gs://bucket\""), "{err}");

    let server = S3Server::start("plugins").await;
    let err = start_fails(&s3_env(&server, "s3://missing", SECRET_KEY)).await;
    assert!(
        err.contains("store s3://missing: storage error: bucket missing does not exist"),
        "{err}"
    );
    let err = start_fails(&s3_env(&server, "s3://plugins", "wrong")).await;
    assert!(err.contains("access to bucket plugins denied"), "{err}");
}

#[tokio::test]
async fn file_urls_only_from_the_uploads_directory() {
    let dir = tempfile::tempdir().unwrap();
    let uploads = dir.path().join("uploads");
    std::fs::create_dir(&uploads).unwrap();
    std::fs::write(uploads.join("p.zip"), plugin_zip("p")).unwrap();
    std::fs::write(dir.path().join("outside.zip"), plugin_zip("q")).unwrap();
    let file_url = |p: &Path| url::Url::from_file_path(p).unwrap().to_string();
    let (_child, base) = start(&[
        (
            "KUIPER_STORE",
            dir.path().join("data").display().to_string(),
        ),
        ("KUIPER_UPLOADS_DIR", uploads.display().to_string()),
    ])
    .await;
    assert_eq!(
        create(&base, "sinks", "p", &file_url(&uploads.join("p.zip")))
            .await
            .0,
        201
    );
    let (status, body) = create(
        &base,
        "sinks",
        "q",
        &file_url(&dir.path().join("outside.zip")),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body.contains("file access denied: path must be under"),
        "{body}"
    );
    let (status, body) = create(
        &base,
        "sinks",
        "q",
        &file_url(&uploads.join("../outside.zip")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(list(&base, "sinks").await, vec!["p"]);

    // Without KUIPER_UPLOADS_DIR, file:// is refused.
    let (_child2, base2) = start(&[(
        "KUIPER_STORE",
        dir.path().join("data2").display().to_string(),
    )])
    .await;
    let (status, body) = create(&base2, "sinks", "p", &file_url(&uploads.join("p.zip"))).await;
    assert_eq!(status, 400);
    assert!(
        body.contains(
            "file:// URLs are only accepted by a local store with KUIPER_UPLOADS_DIR set"
        ),
        "{body}"
    );
}

/// The part of a create's error after `fail to download file {url}: `.
fn download_error(body: &str, url: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let msg = v["message"].as_str().unwrap();
    let prefix = format!("sinks plugins create command error: fail to download file {url}: ");
    msg.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{msg:?} does not start with {prefix:?}"))
        .to_string()
}

#[tokio::test]
async fn file_urls_outside_the_uploads_directory_all_get_one_answer() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let uploads = root.join("uploads");
    std::fs::create_dir(&uploads).unwrap();
    std::fs::create_dir(uploads.join("sub")).unwrap();
    std::fs::create_dir(uploads.join("dir.zip")).unwrap();
    std::fs::write(root.join("outside.zip"), plugin_zip("q")).unwrap();
    std::fs::create_dir(root.join("outdir.zip")).unwrap();
    symlink(root.join("outside.zip"), uploads.join("link.zip")).unwrap();
    symlink(root.join("missing.zip"), uploads.join("dangling.zip")).unwrap();
    symlink(&root, uploads.join("out")).unwrap();
    let (_child, base) = start(&[
        ("KUIPER_STORE", root.join("data").display().to_string()),
        ("KUIPER_UPLOADS_DIR", uploads.display().to_string()),
    ])
    .await;
    let file_url = |p: &Path| url::Url::from_file_path(p).unwrap().to_string();
    let same = format!(
        "file access denied: path must be under {}",
        uploads.display()
    );
    for path in [
        root.join("outside.zip"),        // an existing file
        root.join("missing.zip"),        // a missing one
        root.join("outdir.zip"),         // an existing directory
        root.join("nodir/x.zip"),        // under a missing directory
        uploads.join("link.zip"),        // a symlink to an existing file outside
        uploads.join("dangling.zip"),    // a symlink to a missing file outside
        uploads.join("out/outside.zip"), // through a symlinked directory
        uploads.join("out/missing.zip"),
        uploads.join("../outside.zip"), // `..` forms
        uploads.join("../missing.zip"),
        uploads.join("sub/../../missing.zip"),
        PathBuf::from("/proc/self/missing.zip"),
    ] {
        let url = file_url(&path);
        let (status, body) = create(&base, "sinks", "q", &url).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(download_error(&body, &url), same, "{}", path.display());
    }
    // Inside the folder, a missing file and a directory say what they are.
    let url = file_url(&uploads.join("sub/nope.zip"));
    let (status, body) = create(&base, "sinks", "q", &url).await;
    assert_eq!(status, 400);
    assert_eq!(
        download_error(&body, &url),
        format!(
            "file access denied: {} does not exist",
            uploads.join("sub/nope.zip").display()
        )
    );
    let url = file_url(&uploads.join("dir.zip"));
    let (status, body) = create(&base, "sinks", "q", &url).await;
    assert_eq!(status, 400);
    assert!(
        download_error(&body, &url).ends_with("dir.zip is not a regular file"),
        "{body}"
    );
    assert!(list(&base, "sinks").await.is_empty());
}

#[tokio::test]
async fn non_loopback_listen_needs_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let store = (
        "KUIPER_STORE",
        dir.path().join("data").display().to_string(),
    );
    let err = start_fails(&[store.clone(), ("KUIPER_LISTEN", "0.0.0.0:0".into())]).await;
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before touching the store"
    );

    // With keys configured, it starts (and requests need tokens).
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (name, pem) = kuiper_harness::auth::trusted_public_key();
    std::fs::write(keys.join(name), pem).unwrap();
    let (_child, base) = start(&[
        store.clone(),
        ("KUIPER_LISTEN", "0.0.0.0:0".into()),
        ("KUIPER_AUTH_KEYS_DIR", keys.display().to_string()),
    ])
    .await;
    let port = base.rsplit(':').next().unwrap();
    let r = reqwest::get(format!("http://127.0.0.1:{port}/plugins/sinks"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // An empty keys directory is refused at startup.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = start_fails(&[store, ("KUIPER_AUTH_KEYS_DIR", empty.display().to_string())]).await;
    assert!(err.contains("holds no RSA public key"), "{err}");
}

async fn killed_mid_create_leaves_no_plugin(envs: Vec<(&'static str, String)>) {
    let files = FileHost::start().await;
    let url = files
        .serve_slow(
            "/sinks/slow.zip",
            plugin_zip("slow"),
            Duration::from_secs(20),
        )
        .await;
    let (mut child, base) = start(&envs).await;
    let pending = tokio::spawn({
        let (base, url) = (base.clone(), url.clone());
        async move { create(&base, "sinks", "slow", &url).await }
    });
    // Wait until the download has started, then kill the process outright.
    for _ in 0..200 {
        if files.hits("/sinks/slow.zip").await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        files.hits("/sinks/slow.zip").await,
        1,
        "the create was under way"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let _ = pending.await;
    let (_again, base) = start(&envs).await;
    assert!(
        list(&base, "sinks").await.is_empty(),
        "no half-created plugin"
    );
    let r = reqwest::get(format!("{base}/plugins/sinks/slow"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn killed_mid_create_local() {
    let dir = tempfile::tempdir().unwrap();
    killed_mid_create_leaves_no_plugin(vec![(
        "KUIPER_STORE",
        dir.path().join("data").display().to_string(),
    )])
    .await;
}

#[tokio::test]
async fn killed_mid_create_s3() {
    let server = S3Server::start("plugins").await;
    killed_mid_create_leaves_no_plugin(s3_env(&server, "s3://plugins", SECRET_KEY)).await;
}

async fn gc_command(envs: Vec<(&'static str, String)>, blobs_dir: std::path::PathBuf) {
    let files = FileHost::start().await;
    let v1 = files.serve("/sinks/g1.zip", plugin_zip("gc")).await;
    let v2 = files
        .serve(
            "/sinks/g2.zip",
            ZipBuilder::new()
                .file("Gc@v2.so", example_so("print"))
                .build(),
        )
        .await;
    let (_child, base) = start(&envs).await;
    assert_eq!(create(&base, "sinks", "gc", &v1).await.0, 201);
    let r = reqwest::Client::new()
        .put(format!("{base}/plugins/sinks/gc"))
        .body(json!({"file": v2}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let count = || {
        std::fs::read_dir(&blobs_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(count(), 2, "v1's zip is now unreferenced");

    let run_gc = |args: Vec<&'static str>| {
        let mut cmd = command(&envs);
        cmd.arg("gc").args(args);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        }
    };
    // Young zips are spared by default.
    let report = run_gc(vec![]).await;
    assert_eq!(
        report["blobsRemoved"].as_array().unwrap().len(),
        0,
        "{report}"
    );
    assert_eq!(
        report["blobsTooYoung"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    let report = run_gc(vec!["--min-age-secs", "0", "--dry-run"]).await;
    assert_eq!(
        report["blobsRemoved"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(count(), 2, "a dry run removes nothing");
    let report = run_gc(vec!["--min-age-secs", "0"]).await;
    assert_eq!(
        report["blobsRemoved"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(report["blobsReferenced"], 1);
    assert_eq!(count(), 1);
    let d: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{base}/plugins/sinks/gc"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(d["version"], "2", "the plugin is intact");
    assert!(
        blobs_dir
            .parent()
            .unwrap()
            .join(d["blob"].as_str().unwrap())
            .is_file(),
        "the zip the plugin points at is kept"
    );
}

#[tokio::test]
async fn gc_removes_only_unreferenced_zips_local() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    gc_command(
        vec![("KUIPER_STORE", data.display().to_string())],
        data.join("blobs"),
    )
    .await;
}

#[tokio::test]
async fn gc_removes_only_unreferenced_zips_s3() {
    let server = S3Server::start("plugins").await;
    let blobs = server.bucket_dir().join("blobs");
    gc_command(s3_env(&server, "s3://plugins", SECRET_KEY), blobs).await;
}

/// Server time limits for the slow-client tests: `set` short, the rest long
/// enough never to matter.
fn limits(store: &Path, set: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut envs = vec![
        ("KUIPER_STORE", store.display().to_string()),
        ("KUIPER_HEADER_TIMEOUT_SECS", "600".to_string()),
        ("KUIPER_BODY_TIMEOUT_SECS", "600".to_string()),
        ("KUIPER_IDLE_TIMEOUT_SECS", "600".to_string()),
        ("KUIPER_SHUTDOWN_TIMEOUT_SECS", "600".to_string()),
    ];
    for (k, v) in set {
        envs.retain(|(name, _)| name != k);
        envs.push((k, v.to_string()));
    }
    envs
}

/// A raw connection to the service at `base`.
async fn connect(base: &str) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Far longer than any limit the tests set: a connection still open, or a
/// process still running, after this is held indefinitely.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Sends `head` then `trickle` one byte at a time, 20 bytes a second, until
/// the service answers or closes; returns what it sent back. Panics when it
/// keeps listening for GIVE_UP.
async fn trickle(sock: &mut tokio::net::TcpStream, head: &[u8], trickle: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(head).await.unwrap();
    let until = tokio::time::Instant::now() + GIVE_UP;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for &byte in trickle.iter().cycle() {
        assert!(
            tokio::time::Instant::now() < until,
            "the service still listens to a trickling client after {GIVE_UP:?}"
        );
        if sock.write_all(&[byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(50), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until the service closes the connection; returns what it sent.
/// Panics when it stays open for GIVE_UP.
async fn read_to_close(sock: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(GIVE_UP, async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection is still open after {GIVE_UP:?}"
    );
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one answer to `GET /ping` (its head and its Content-Length bytes).
async fn read_answer(sock: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if body.len() >= len {
                return text;
            }
        }
        let n = tokio::time::timeout(GIVE_UP, sock.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let envs = limits(
        &dir.path().join("data"),
        &[("KUIPER_HEADER_TIMEOUT_SECS", "1")],
    );
    let (_child, base) = start(&envs).await;
    let mut sock = connect(&base).await;
    let got = trickle(&mut sock, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"a").await;
    assert!(!got.contains("200 OK"), "{got}");
    // The service is still there for well-behaved clients.
    let r = reqwest::get(format!("{base}/ping")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn a_client_trickling_its_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let envs = limits(
        &dir.path().join("data"),
        &[("KUIPER_BODY_TIMEOUT_SECS", "1")],
    );
    let (_child, base) = start(&envs).await;
    let mut sock = connect(&base).await;
    let got = trickle(
        &mut sock,
        b"POST /plugins/sinks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"name\": \"",
        b"a",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    let rest = read_to_close(&mut sock).await;
    let body = format!("{got}{rest}");
    assert!(
        body.contains(
            r#"{"error":1000,"message":"the request body did not arrive within 1 s (KUIPER_BODY_TIMEOUT_SECS)"}"#
        ),
        "{body}"
    );
    assert!(list(&base, "sinks").await.is_empty());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let envs = limits(
        &dir.path().join("data"),
        &[("KUIPER_IDLE_TIMEOUT_SECS", "1")],
    );
    let (_child, base) = start(&envs).await;
    let mut sock = connect(&base).await;
    // Two requests on one connection: it is kept alive between them.
    for _ in 0..2 {
        sock.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut sock).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }
    // Then it sits idle, and the service closes it.
    assert_eq!(read_to_close(&mut sock).await, "");
}

#[tokio::test]
async fn sigterm_with_a_stuck_client_exits_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let envs = limits(
        &dir.path().join("data"),
        &[("KUIPER_SHUTDOWN_TIMEOUT_SECS", "1")],
    );
    let (mut child, base) = start(&envs).await;
    let mut sock = connect(&base).await;
    // A request whose body stops coming: `100 Continue` says its handler is
    // reading the body.
    sock.write_all(b"POST /plugins/sinks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(GIVE_UP, sock.read(&mut buf))
        .await
        .expect("100 Continue")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    sock.write_all(b"{\"name\": \"stuck").await.unwrap();
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(GIVE_UP, child.wait())
        .await
        .unwrap_or_else(|_| panic!("plugin-api still runs {GIVE_UP:?} after SIGTERM"))
        .unwrap();
    assert!(status.success(), "{status}");
}
