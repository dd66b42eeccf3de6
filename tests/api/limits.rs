//! Limits and file host faults: each is a 400 that says what happened, and
//! nothing is stored.

use std::time::Duration;

use kuiper_harness::raw::{RawHost, RawReply};
use serde_json::json;

use crate::common::{plugin_zip, Backend, TestEnv};

async fn refused(env: &TestEnv, file: &str, expected: &str) {
    let r = env
        .post("/plugins/sinks", json!({"name": "limited", "file": file}))
        .await;
    assert_eq!(r.status, 400, "{file}: {}", r.body);
    let msg = r.error_message();
    assert!(
        msg.starts_with(&format!(
            "sinks plugins create command error: fail to download file {file}: "
        )) && msg.contains(expected),
        "{file}:\n  got      {msg}\n  expected {expected}"
    );
    assert!(
        env.stored_files().await.is_empty(),
        "nothing stored: {:?}",
        env.stored_files().await
    );
    assert!(env.list("sinks").await.is_empty());
}

async fn download_limits_and_faults(backend: Backend) {
    let env = TestEnv::start_with(
        backend,
        &[
            "--max-download-bytes",
            "100000",
            "--download-timeout-secs",
            "2",
            "--read-timeout-secs",
            "1",
        ],
    )
    .await;
    // Over the cap, announced by Content-Length.
    let big = plugin_zip("sinks", "limited", "Limited.so");
    assert!(big.len() > 100_000);
    let url = env.files.serve("/sinks/big.zip", big.clone()).await;
    refused(
        &env,
        &url,
        "the file is larger than the download limit of 100000 bytes",
    )
    .await;
    // Over the cap without Content-Length honesty: announced small, sends more.
    let liar = RawHost::start(RawReply::Bytes(RawHost::response(10, &big))).await;
    let url = liar.url("/liar.zip");
    let r = env
        .post("/plugins/sinks", json!({"name": "limited", "file": url}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(env.stored_files().await.is_empty());
    // Truncated: announces more than it sends, then closes.
    let small = b"PK\x03\x04 not much".to_vec();
    let truncated = RawHost::start(RawReply::Bytes(RawHost::response(5000, &small))).await;
    refused(&env, &truncated.url("/t.zip"), "").await;
    // Stalls after the headers: the read timeout fires.
    let stall = RawHost::start(RawReply::BytesThenStall(RawHost::response(5000, &small))).await;
    refused(&env, &stall.url("/s.zip"), "timed out").await;
    // Slow to answer at all: the overall download timeout fires.
    let url = env
        .files
        .serve_slow("/sinks/slow.zip", small.clone(), Duration::from_secs(5))
        .await;
    refused(&env, &url, "timed out after").await;
    // Connection closed without an answer.
    let closer = RawHost::start(RawReply::Close).await;
    refused(&env, &closer.url("/c.zip"), "").await;
    // The service is still healthy.
    assert_eq!(env.get("/ping").await.status, 200);
    let ok = env
        .files
        .serve(
            "/sinks/ok.zip",
            kuiper_harness::zips::ZipBuilder::new()
                .file("Ok.so", b"\x7fELF".to_vec())
                .build(),
        )
        .await;
    let r = env
        .post("/plugins/sinks", json!({"name": "ok", "file": ok}))
        .await;
    assert!(
        r.error_message().contains("not an ELF shared library"),
        "{}",
        r.body
    );
}

async fn zip_limits(backend: Backend) {
    let env = TestEnv::start_with(
        backend,
        &[
            "--max-zip-entries",
            "3",
            "--max-uncompressed-bytes",
            "2000000",
        ],
    )
    .await;
    let so = crate::common::real_so("sinks");
    let many = kuiper_harness::zips::ZipBuilder::new()
        .file("Lim.so", so.clone())
        .dir("etc/")
        .file("etc/a", "a")
        .file("etc/b", "b")
        .build();
    let url = env.files.serve("/sinks/many.zip", many).await;
    let r = env
        .post("/plugins/sinks", json!({"name": "lim", "file": url}))
        .await;
    assert_eq!(r.error_message(), "sinks plugins create command error: fail to install plugin: invalid zip file: more than 3 entries");
    // A bomb: highly compressible data far over the uncompressed limit.
    let bomb = kuiper_harness::zips::ZipBuilder::new()
        .file("Lim.so", so)
        .file("etc/zeros", vec![0u8; 50_000_000])
        .build();
    assert!(bomb.len() < 2_000_000);
    let url = env.files.serve("/sinks/bomb.zip", bomb).await;
    let r = env
        .post("/plugins/sinks", json!({"name": "lim", "file": url}))
        .await;
    let msg = r.error_message();
    assert!(
        msg.contains("decompresses to more than 2000000 bytes")
            || msg.contains("compression ratio above"),
        "{msg}"
    );
    assert!(env.list("sinks").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_limits_and_faults_local() {
    download_limits_and_faults(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_limits_and_faults_s3() {
    download_limits_and_faults(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_limits_local() {
    zip_limits(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_limits_s3() {
    zip_limits(Backend::S3).await;
}

/// Creates beyond the zips scanned at once (`max_scans`) do not wait for a
/// scan slot: they are checked in full after their download, with the same
/// result. Here there is no slot at all: a damaged zip is refused and a valid
/// one accepted, as always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_without_a_scan_slot_are_checked_after_the_download() {
    use kuiper_registry::fetch::{policy::AddressPolicy, FetchSettings, Fetcher};
    use kuiper_registry::package::PluginType;
    use kuiper_registry::registry::{PluginRequest, Registry, RegistrySettings};
    use kuiper_registry::store::local::LocalStore;

    let dir = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(FetchSettings {
        policy: AddressPolicy {
            allow_private: true,
            ..AddressPolicy::default()
        },
        ..FetchSettings::default()
    })
    .unwrap();
    let registry = Registry::new(
        LocalStore::new(dir.path().join("store")).unwrap(),
        fetcher,
        RegistrySettings {
            tmp_dir: dir.path().to_path_buf(),
            max_scans: 0,
            ..RegistrySettings::default()
        },
    );
    let files = kuiper_harness::files::FileHost::start().await;
    let zip = plugin_zip("sinks", "noscan", "Noscan.so");
    let request = |file: String| PluginRequest {
        name: "noscan".into(),
        file,
        ..PluginRequest::default()
    };
    let mut damaged = zip.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    // A create that waited for a slot would never finish: fail instead.
    let create = |url: String| {
        let create = registry.create(PluginType::Sink, request(url));
        async move {
            tokio::time::timeout(Duration::from_secs(60), create)
                .await
                .expect("a create without a scan slot does not wait for one")
        }
    };
    let url = files.serve("/damaged/noscan.zip", damaged).await;
    let message = create(url).await.expect_err("a damaged zip").to_string();
    assert!(message.contains("Noscan.so"), "{message}");

    let url = files.serve("/noscan.zip", zip).await;
    create(url).await.unwrap();
    let meta = registry.describe(PluginType::Sink, "noscan").await.unwrap();
    assert_eq!(meta.so_file, "Noscan.so");
    assert_eq!(meta.files.len(), 1);
}
