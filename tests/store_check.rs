//! The check of an S3 store's conditional requests: probed once per bucket
//! and prefix and recorded there, read by later starts; a store that ignores
//! conditional writes is refused (plugin-api does not start) unless allowed,
//! with a warning on every start.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kuiper_harness::minio::{Minio, MINIO_ACCESS_KEY, MINIO_REGION, MINIO_SECRET_KEY};
use kuiper_harness::s3::{S3Server, ACCESS_KEY, REGION, SECRET_KEY};
use kuiper_registry::store::s3::{S3Settings, S3Store};
use kuiper_registry::store::{keys, Condition, Store, StoreError};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_plugin-api");

fn settings(server: &S3Server, prefix: &str, allow_unsafe: bool) -> S3Settings {
    S3Settings {
        bucket: server.bucket().to_string(),
        prefix: prefix.to_string(),
        endpoint: Some(server.endpoint().to_string()),
        region: Some(REGION.into()),
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        allow_unsafe,
    }
}

fn minio_settings(minio: &Minio, bucket: &str, prefix: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        endpoint: Some(minio.endpoint()),
        region: Some(MINIO_REGION.into()),
        credentials: Some((MINIO_ACCESS_KEY.into(), MINIO_SECRET_KEY.into())),
        allow_unsafe: false,
    }
}

/// (puts, gets, heads, deletes) the server has answered so far.
fn requests(server: &S3Server) -> (u64, u64, u64, u64) {
    let s = server.stats();
    (
        s.puts.load(Ordering::SeqCst),
        s.gets.load(Ordering::SeqCst),
        s.heads.load(Ordering::SeqCst),
        s.deletes.load(Ordering::SeqCst),
    )
}

#[tokio::test]
async fn the_check_is_probed_once_per_bucket_and_prefix_and_then_read() {
    let server = S3Server::start("plugins").await;
    let first = S3Store::new(settings(&server, "team", false)).await;
    let c = first.conditions().await.unwrap();
    assert!(c.if_none_match && c.if_match && c.delete_if_match, "{c:?}");
    let record = server.bucket_dir().join("team").join(keys::STORE_CHECK);
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("the result is recorded")).unwrap();
    assert_eq!(recorded["check"], 1);
    assert_eq!(recorded["ifNoneMatch"], true);
    assert_eq!(recorded["deleteIfMatch"], true);
    assert!(recorded["checkedAt"].as_str().unwrap().ends_with('Z'));
    let probes: Vec<_> = std::fs::read_dir(server.bucket_dir().join("team/.kuiper"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(probes, ["store-check.json"], "the probe is removed");

    // A later process (a cold start) reads the record: one request, no probe.
    let before = requests(&server);
    let later = S3Store::new(settings(&server, "team", false)).await;
    assert_eq!(later.conditions().await.unwrap(), c);
    let after = requests(&server);
    assert_eq!(
        (
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
            after.3 - before.3
        ),
        (0, 1, 0, 0),
        "(puts, gets, heads, deletes) of a start that finds the record"
    );
    // And once known, conditional writes send no further check.
    later
        .put(
            "plugins/sinks/a.json",
            Bytes::from_static(b"{}"),
            Condition::IfNoneMatch,
        )
        .await
        .unwrap();
    assert_eq!(requests(&server).1, after.1, "no further read");

    // Another prefix is another store: probed and recorded on its own.
    let other = S3Store::new(settings(&server, "other", false)).await;
    other.conditions().await.unwrap();
    assert!(server
        .bucket_dir()
        .join("other")
        .join(keys::STORE_CHECK)
        .is_file());
    assert!(requests(&server).0 > after.0 + 1, "probed");

    // The reserved keys are never listed.
    let listed = first.list("").await.unwrap();
    assert!(
        listed.iter().all(|l| !l.key.starts_with(".kuiper")),
        "{listed:?}"
    );
}

#[tokio::test]
async fn a_store_that_ignores_conditions_is_refused_before_any_conditional_write() {
    let server = S3Server::start("plugins").await;
    server.ignore_conditions(true);
    let store = S3Store::new(settings(&server, "", false)).await;
    let c = store.conditions().await.unwrap();
    assert!(
        !c.if_none_match && !c.if_match && !c.delete_if_match,
        "{c:?}"
    );
    let why = store.refusal(&c).expect("refused");
    assert!(
        why.starts_with(
            "store s3://plugins ignores If-None-Match on PutObject: two creates of one name could both win"
        ),
        "{why}"
    );
    assert!(why.contains("KUIPER_ALLOW_UNSAFE_STORE=true"), "{why}");
    let key = "plugins/sinks/a.json";
    let err = store
        .put(key, Bytes::from_static(b"{}"), Condition::IfNoneMatch)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Other(m) if m.contains("ignores If-None-Match")),
        "{err}"
    );
    assert!(!store.exists(key).await.unwrap(), "nothing was written");

    // Allowed anyway: it works as far as such a store can.
    let allowed = S3Store::new(settings(&server, "", true)).await;
    assert!(allowed
        .refusal(&allowed.conditions().await.unwrap())
        .is_none());
    allowed
        .put(key, Bytes::from_static(b"{}"), Condition::IfNoneMatch)
        .await
        .unwrap();
    assert!(allowed.exists(key).await.unwrap());
}

#[tokio::test]
async fn minio_honours_conditional_writes_and_deletes_use_markers() {
    let minio = Minio::shared();
    let bucket = minio.new_bucket().await;
    let store = S3Store::new(minio_settings(minio, &bucket, "fleet")).await;
    let c = store.conditions().await.unwrap();
    assert!(c.if_none_match, "{c:?}");
    assert!(c.if_match, "{c:?}");
    assert!(
        !c.delete_if_match,
        "MinIO deletes despite If-Match with another tag: {c:?}"
    );
    assert!(store.refusal(&c).is_none(), "MinIO is usable");
    let record_key = format!("fleet/{}", keys::STORE_CHECK);
    let head = |client: aws_sdk_s3::Client| {
        let (bucket, key) = (bucket.clone(), record_key.clone());
        async move {
            let h = client
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("the result is recorded");
            (h.e_tag().unwrap().to_string(), h.last_modified().cloned())
        }
    };
    let recorded = head(minio.client()).await;
    let reserved = minio
        .client()
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("fleet/.kuiper/")
        .send()
        .await
        .unwrap();
    let names: Vec<_> = reserved.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(names, [record_key.as_str()], "the probe is removed");

    // A later start reads the record and leaves it as it was.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = S3Store::new(minio_settings(minio, &bucket, "fleet")).await;
    assert_eq!(later.conditions().await.unwrap(), c);
    assert_eq!(head(minio.client()).await, recorded, "not probed again");
}

/// plugin-api with `envs`, a clean environment otherwise.
fn command(envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUIPER_LISTEN", "127.0.0.1:0")
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

fn s3_env(endpoint: &str, store: &str, keys: (&str, &str, &str)) -> Vec<(&'static str, String)> {
    vec![
        ("KUIPER_STORE", store.to_string()),
        ("AWS_ENDPOINT_URL_S3", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", keys.0.to_string()),
        ("AWS_SECRET_ACCESS_KEY", keys.1.to_string()),
        ("AWS_REGION", keys.2.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

/// Starts plugin-api and waits until its stderr shows a line containing
/// `expect`; returns the process (still running), its base URL and the
/// lines of stderr so far (the last one contains `expect`).
async fn start_until(
    envs: &[(&str, String)],
    expect: &str,
) -> (tokio::process::Child, String, Vec<String>) {
    let mut child = command(envs).spawn().expect("spawn plugin-api");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), out.next_line())
        .await
        .expect("plugin-api did not start")
        .unwrap()
        .expect("a first line");
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let lines = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = Vec::new();
        while let Some(line) = err.next_line().await.unwrap() {
            let done = line.contains(expect);
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("stderr ended without {expect:?}: {seen:?}")
    })
    .await
    .unwrap_or_else(|_| panic!("no {expect:?} on stderr"));
    // The rest is drained, so that the service's logging never meets a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
    (child, base, lines)
}

#[tokio::test]
async fn plugin_api_refuses_a_store_that_ignores_conditions_unless_allowed() {
    let server = S3Server::start("plugins").await;
    server.ignore_conditions(true);
    let envs = s3_env(
        server.endpoint(),
        "s3://plugins/fleet",
        (ACCESS_KEY, SECRET_KEY, REGION),
    );
    let out = tokio::time::timeout(Duration::from_secs(60), command(&envs).output())
        .await
        .expect("plugin-api did not exit")
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "it refuses to run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "plugin-api: store s3://plugins/fleet ignores If-None-Match on PutObject: two creates of one name could both win; set KUIPER_ALLOW_UNSAFE_STORE=true (or pass --allow-unsafe-store) to run anyway"
        ),
        "{stderr}"
    );

    // Allowed: it serves, and warns on every start, also when it only reads
    // the recorded result.
    let mut allowed = envs.clone();
    allowed.push(("KUIPER_ALLOW_UNSAFE_STORE", "true".into()));
    for start in 0..2 {
        let before = server.stats().puts.load(Ordering::SeqCst);
        let (mut child, base, lines) = start_until(&allowed, "ignores If-None-Match").await;
        let warning = lines.last().unwrap();
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.contains("KUIPER_ALLOW_UNSAFE_STORE"), "{warning}");
        let list = reqwest::get(format!("{base}/plugins/sinks")).await.unwrap();
        assert_eq!(list.status(), 200);
        if start == 1 {
            assert_eq!(
                server.stats().puts.load(Ordering::SeqCst),
                before,
                "the second start reads the record and probes nothing"
            );
        }
        child.kill().await.unwrap();
        child.wait().await.unwrap();
    }
    // The flag does the same as the variable.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        command(&envs)
            .args(["--allow-unsafe-store", "true", "gc", "--dry-run"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ignores If-None-Match"));
}

#[tokio::test]
async fn plugin_api_on_minio_probes_once_then_reads_the_record() {
    let minio = Minio::shared();
    let bucket = minio.new_bucket().await;
    let envs = s3_env(
        &minio.endpoint(),
        &format!("s3://{bucket}/fleet"),
        (MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_REGION),
    );
    let mut envs_info = envs.clone();
    envs_info.push(("RUST_LOG", "info".into()));
    for start in 0..2 {
        let (mut child, base, lines) = start_until(&envs_info, "deletion marker").await;
        assert!(
            lines
                .last()
                .unwrap()
                .contains("the store ignores If-Match on DeleteObject"),
            "{lines:?}"
        );
        let probed = lines.iter().any(|l| l.contains("probed and recorded"));
        assert_eq!(
            probed,
            start == 0,
            "probed on the first start only: {lines:?}"
        );
        let list = reqwest::get(format!("{base}/plugins/sinks")).await.unwrap();
        assert_eq!(list.status(), 200);
        child.kill().await.unwrap();
        child.wait().await.unwrap();
    }
}
