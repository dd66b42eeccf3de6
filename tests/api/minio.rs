//! MinIO stopped in the middle of a create (while the zip uploads, or just
//! before the metadata commit), then started again: the create answers 503
//! and leaves nothing visible; the next create of the name succeeds.

use std::sync::Arc;

use kuiper_harness::minio::Minio;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};

use crate::common::{real_so, TestEnv};

const UNAVAILABLE: &str = "the plugin store is unavailable; nothing was changed, retry later";

/// A file host that sends the first half of `zip` (with its full length
/// announced), then waits for `release` before sending the rest.
struct HalfwayHost {
    url: String,
    sent_half: Arc<Semaphore>,
    release: Arc<Notify>,
}

impl HalfwayHost {
    async fn start(zip: Vec<u8>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/halfway.zip", listener.local_addr().unwrap());
        let sent_half = Arc::new(Semaphore::new(0));
        let release = Arc::new(Notify::new());
        let (sent, go) = (sent_half.clone(), release.clone());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "the registry closed before asking");
                head.extend_from_slice(&buf[..n]);
            }
            let mid = zip.len() / 2;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                zip.len()
            );
            sock.write_all(answer.as_bytes()).await.unwrap();
            sock.write_all(&zip[..mid]).await.unwrap();
            sock.flush().await.unwrap();
            sent.add_permits(1);
            go.notified().await;
            let _ = sock.write_all(&zip[mid..]).await;
            let _ = sock.shutdown().await;
        });
        HalfwayHost {
            url,
            sent_half,
            release,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_stopped_mid_create_is_503_and_the_next_create_succeeds() {
    // A server of this test's own, as it is stopped; it lives as long as the
    // test binary (its process dies with it).
    let minio: &'static Minio = Box::leak(Box::new(Minio::start()));
    let env = TestEnv::start_on_minio(minio).await;
    env.create_ok("sinks", "before").await;

    // A zip of a few MiB, so that its upload is in flight when MinIO stops.
    let zip = kuiper_harness::zips::ZipBuilder::new()
        .stored()
        .file("Mid.so", real_so("sinks"))
        .file("padding.bin", kuiper_harness::zips::noise(6 << 20, 19))
        .build();
    let host = HalfwayHost::start(zip).await;
    let create = {
        let (http, base, url) = (env.http.clone(), env.base.clone(), host.url.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{base}/plugins/sinks"))
                .header("content-type", "application/json")
                .body(json!({"name": "mid", "file": url}).to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        })
    };
    let _half = host.sent_half.acquire().await.unwrap();
    // The registry streams what it downloads into the store as it arrives.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    minio.stop();
    host.release.notify_one();
    let (status, body) = create.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], 1003, "{body}");
    assert_eq!(
        v["message"],
        format!("sinks plugins create command error: {UNAVAILABLE}")
    );
    // While MinIO is down, reads answer 503 too.
    assert_eq!(env.get("/plugins/sinks").await.status, 503);

    minio.restart();
    assert_eq!(env.list("sinks").await, ["before"], "nothing half-visible");
    assert_eq!(env.get("/plugins/sinks/mid").await.status, 404);
    let stored = env.stored_files().await;
    assert!(
        !stored.iter().any(|k| k.contains("mid")),
        "no metadata of the failed create: {stored:?}"
    );
    let blobs = env.stored_blobs().await;
    assert_eq!(blobs.len(), 1, "only the zip of `before`: {blobs:?}");

    // The next create of the same name succeeds, from a host that answers at once.
    env.create_ok("sinks", "mid").await;
    assert_eq!(env.list("sinks").await, ["before", "mid"]);
    let d = env.get("/plugins/sinks/mid").await.json();
    assert_eq!(d["name"], "mid");
}

/// A TCP proxy to `minio` that stops MinIO when a request containing
/// `trigger` (a request line) comes through, before passing it on. Returns
/// its endpoint.
async fn stopping_proxy(minio: &'static Minio, trigger: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let upstream = minio.endpoint().trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (upstream, trigger) = (upstream.clone(), trigger.clone());
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if String::from_utf8_lossy(&buf[..n]).contains(&trigger) {
                            tokio::task::spawn_blocking(|| minio.stop()).await.unwrap();
                            return;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_stopped_before_the_metadata_commit_leaves_no_plugin() {
    let minio: &'static Minio = Box::leak(Box::new(Minio::start()));
    let mut env = TestEnv::start_on_minio(minio).await;
    env.create_ok("sinks", "before").await;
    let bucket = env.minio.as_ref().unwrap().1.clone();
    // MinIO stops as the create sends the metadata: the zip is stored, the
    // create-only write of plugins/sinks/late.json never arrives.
    env.minio_via = Some(
        stopping_proxy(
            minio,
            format!("PUT /{bucket}/registry/plugins/sinks/late.json"),
        )
        .await,
    );
    env.restart().await;
    let url = env.serve_plugin("sinks", "late").await;
    let r = env
        .post("/plugins/sinks", json!({"name": "late", "file": url}))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], 1003);
    assert_eq!(
        r.error_message(),
        format!("sinks plugins create command error: {UNAVAILABLE}")
    );

    minio.restart();
    assert_eq!(env.list("sinks").await, ["before"], "nothing half-visible");
    assert_eq!(env.get("/plugins/sinks/late").await.status, 404);
    let stored = env.stored_files().await;
    assert!(
        !stored
            .iter()
            .any(|k| k.starts_with("plugins/") && k.contains("late")),
        "no metadata: {stored:?}"
    );
    assert_eq!(
        env.stored_blobs().await.len(),
        2,
        "the zip was stored before the commit point, and nothing points at it"
    );

    // The next create of the name succeeds (the proxy is out of the way).
    env.minio_via = None;
    env.restart().await;
    env.create_ok("sinks", "late").await;
    assert_eq!(env.list("sinks").await, ["before", "late"]);
    assert_eq!(env.get("/plugins/sinks/late").await.json()["name"], "late");
}
