//! On a store that ignores `If-Match` on DeleteObject (MinIO), a delete
//! first overwrites the metadata with a deletion marker. A delete that died
//! right after that leaves the marker: the node takes the plugin as deleted,
//! as the registry does.

use kuiper_registry::store::s3::markers::{MARKER_LEN, MARKER_META};

use crate::common::{lib, random_zip, so_zip, Backend, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_marker_left_on_minio_is_a_deleted_plugin() {
    let env = Env::start(Backend::Minio).await;
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    env.sync(&[]).await.assert_ok();
    assert!(env.node_files().iter().any(|f| f.contains("sinks/Print")));

    let (minio, bucket) = env.minio.as_ref().expect("MinIO backend");
    let body = format!("kuiper-registry deletion marker {}\n", "5a".repeat(16));
    assert_eq!(body.len() as u64, MARKER_LEN);
    minio
        .client()
        .put_object()
        .bucket(bucket)
        .key("registry/plugins/sinks/print.json")
        .metadata(MARKER_META, "1")
        .body(body.into_bytes().into())
        .send()
        .await
        .unwrap();

    let run = env.sync(&[]).await;
    run.assert_ok();
    assert_eq!(run.list("removed"), ["sinks/print@"]);
    assert_eq!(run.list("unchanged"), ["sources/random@"]);
    assert!(
        env.node_files().iter().all(|f| !f.contains("sinks")),
        "{:?}",
        env.node_files()
    );
}
