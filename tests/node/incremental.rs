//! Syncing again costs little: with nothing changed, one listing of the store
//! and no reads; after a change, only what changed is read and downloaded.
//! Manifests written before the node recorded metadata tags still work.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use kuiper_registry::node::{self, Progress, SyncOptions};
use kuiper_registry::store::local::LocalStore;
use kuiper_registry::store::{Condition, Listed, Object, Store, StoreError, UploadChunk};
use serde_json::{json, Value};

use crate::common::{c_lib, lib, random_zip, so_zip, Backend, Env, NodeRun};

on_both_stores!(
    manifest_of_an_earlier_version_still_works,
    invalid_zip_key_is_refused
);

/// S3 requests so far: (list requests, metadata reads, zip reads).
fn requests(env: &Env) -> (u64, u64, u64) {
    let s = env.s3.as_ref().expect("S3 store").stats();
    let gets = s.gets.load(Ordering::SeqCst);
    let zips = s.blob_gets.load(Ordering::SeqCst);
    (s.lists.load(Ordering::SeqCst), gets - zips, zips)
}

/// Runs `kuiper-node sync` and returns its report with the S3 requests it
/// made: (list requests, metadata reads, zip reads).
async fn sync_counting(env: &Env) -> (NodeRun, (u64, u64, u64)) {
    let before = requests(env);
    let run = env.sync(&[]).await;
    let after = requests(env);
    (
        run,
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sync_lists_once_and_reads_only_what_changed() {
    let env = Env::start(Backend::S3).await;
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    env.publish("functions", "echo", so_zip("Echo.so", lib("echo")))
        .await;
    // The listing shows each object's ETag (as AWS S3 and MinIO do), so
    // unchanged plugins cost no read at all.
    assert!(env.listing_has_tags().await);

    // First sync: one listing for all types, each metadata and zip read once.
    let (first, n) = sync_counting(&env).await;
    first.assert_ok();
    assert_eq!(first.list("installed").len(), 3, "{}", first.report);
    assert_eq!(n, (1, 3, 3), "(lists, metadata reads, zip reads)");

    // Nothing changed: one list request, nothing downloaded.
    let (second, n) = sync_counting(&env).await;
    second.assert_ok();
    assert_eq!(
        second.list("unchanged"),
        ["functions/echo@", "sinks/print@", "sources/random@"]
    );
    for l in ["installed", "updated", "removed"] {
        assert_eq!(second.report[l], json!([]), "{l}: {}", second.report);
    }
    assert_eq!(n, (1, 0, 0), "(lists, metadata reads, zip reads)");

    // One plugin updated: only its metadata and its zip are read.
    let v2 = c_lib("print", 1, "2.0.0");
    env.update("sinks", "print", so_zip("Print@v2.0.0.so", v2.clone()))
        .await;
    let (third, n) = sync_counting(&env).await;
    third.assert_ok();
    assert_eq!(third.list("updated"), ["sinks/print@2.0.0"]);
    assert_eq!(
        third.list("unchanged"),
        ["functions/echo@", "sources/random@"]
    );
    assert_eq!(n, (1, 1, 1), "(lists, metadata reads, zip reads)");
    assert_eq!(env.node_file("plugins/sinks/Print@v2.0.0.so"), v2);
    assert!(!env.root().join("plugins/sinks/Print.so").exists());

    // And then nothing again.
    let (fourth, n) = sync_counting(&env).await;
    assert_eq!(fourth.list("unchanged").len(), 3, "{}", fourth.report);
    assert_eq!(n, (1, 0, 0), "(lists, metadata reads, zip reads)");

    // A file removed by hand is put back although the metadata is unchanged.
    std::fs::remove_file(env.root().join("plugins/sources/Random.so")).unwrap();
    let (fifth, n) = sync_counting(&env).await;
    fifth.assert_ok();
    assert_eq!(fifth.list("updated"), ["sources/random@"]);
    assert_eq!(n, (1, 1, 1), "(lists, metadata reads, zip reads)");
    assert_eq!(env.node_file("plugins/sources/Random.so"), lib("random"));

    // Dropped from the registry: removed, nothing downloaded.
    env.drop_plugin("functions", "echo").await;
    let (sixth, n) = sync_counting(&env).await;
    sixth.assert_ok();
    assert_eq!(sixth.list("removed"), ["functions/echo@"]);
    assert_eq!(
        sixth.list("unchanged"),
        ["sinks/print@2.0.0", "sources/random@"]
    );
    assert_eq!(n, (1, 0, 0), "(lists, metadata reads, zip reads)");
    assert!(!env.root().join("plugins/functions/Echo.so").exists());
}

/// The local store, counting requests. Its listing carries no entity tags,
/// as with S3-compatible stores that leave them out.
struct CountingStore {
    inner: LocalStore,
    lists: AtomicU64,
    reads: AtomicU64,
}

impl CountingStore {
    fn counts(&self) -> (u64, u64) {
        (
            self.lists.swap(0, Ordering::SeqCst),
            self.reads.swap(0, Ordering::SeqCst),
        )
    }
}

impl Store for CountingStore {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<(), StoreError> {
        self.inner.put(key, body, condition).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        self.inner.put_file(key, path).await
    }

    async fn put_stream(
        &self,
        key: &str,
        chunks: tokio::sync::mpsc::Receiver<UploadChunk>,
    ) -> Result<(), StoreError> {
        self.inner.put_stream(key, chunks).await
    }

    async fn get_to_file(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_to_file(key, dest).await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.exists(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn delete_if(
        &self,
        key: &str,
        etag: &kuiper_registry::store::ETag,
    ) -> Result<(), StoreError> {
        self.inner.delete_if(key, etag).await
    }

    async fn unfinished(&self) -> Result<Vec<kuiper_registry::store::Unfinished>, StoreError> {
        self.inner.unfinished().await
    }

    async fn abort_unfinished(
        &self,
        upload: &kuiper_registry::store::Unfinished,
    ) -> Result<(), StoreError> {
        self.inner.abort_unfinished(upload).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix).await
    }
}

/// Against a store whose listing carries no tags, an unchanged plugin costs
/// one metadata read and no download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_listing_reads_only_the_metadata_of_unchanged_plugins() {
    let env = Env::start(Backend::Local).await;
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    let store = CountingStore {
        inner: LocalStore::new(env.local_store_dir().unwrap()).unwrap(),
        lists: AtomicU64::new(0),
        reads: AtomicU64::new(0),
    };
    let opts = SyncOptions::new(env.root());
    let progress = Progress::hidden();
    let names = |l: &[node::PluginRef]| -> Vec<String> {
        l.iter()
            .map(|p| format!("{}/{}", p.plugin_type, p.name))
            .collect()
    };

    let first = node::sync(&store, &opts, &progress).await.unwrap();
    assert!(first.report.ok(), "{:?}", first.report);
    assert_eq!(
        names(&first.report.installed),
        ["sources/random", "sinks/print"]
    );
    // One listing; each plugin's metadata and zip.
    assert_eq!(store.counts(), (1, 4));

    let second = node::sync(&store, &opts, &progress).await.unwrap();
    assert!(second.report.ok(), "{:?}", second.report);
    assert_eq!(
        names(&second.report.unchanged),
        ["sources/random", "sinks/print"]
    );
    assert_eq!(store.counts(), (1, 2));

    let v2 = c_lib("print", 1, "2.0.0");
    env.update("sinks", "print", so_zip("Print@v2.0.0.so", v2.clone()))
        .await;
    let third = node::sync(&store, &opts, &progress).await.unwrap();
    assert!(third.report.ok(), "{:?}", third.report);
    assert_eq!(names(&third.report.updated), ["sinks/print"]);
    assert_eq!(names(&third.report.unchanged), ["sources/random"]);
    assert_eq!(store.counts(), (1, 3));
    assert_eq!(env.node_file("plugins/sinks/Print@v2.0.0.so"), v2);

    let fourth = node::sync(&store, &opts, &progress).await.unwrap();
    assert_eq!(
        names(&fourth.report.unchanged),
        ["sources/random", "sinks/print"]
    );
    assert_eq!(store.counts(), (1, 2));
}

/// The node's manifest as JSON.
fn manifest(env: &Env) -> Value {
    serde_json::from_slice(&std::fs::read(env.root().join(".kuiper-node/manifest.json")).unwrap())
        .expect("manifest is JSON")
}

/// Whether every plugin in the manifest has a recorded metadata tag.
fn all_tagged(m: &Value) -> bool {
    m["plugins"]
        .as_object()
        .unwrap()
        .values()
        .all(|e| e["metaEtag"].as_str().is_some_and(|t| !t.is_empty()))
}

async fn manifest_of_an_earlier_version_still_works(env: Env) {
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    env.sync(&[]).await.assert_ok();
    let mut m = manifest(&env);
    assert!(all_tagged(&m), "{m}");

    // The manifest as a node agent that recorded no tags wrote it.
    for e in m["plugins"].as_object_mut().unwrap().values_mut() {
        e.as_object_mut().unwrap().remove("metaEtag");
    }
    std::fs::write(
        env.root().join(".kuiper-node/manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();

    let tagged = env.listing_has_tags().await;
    let before = env.s3.as_ref().map(|_| requests(&env));
    let run = env.sync(&[]).await;
    run.assert_ok();
    assert_eq!(run.list("unchanged"), ["sinks/print@", "sources/random@"]);
    if let Some(before) = before {
        // The metadata is read once more, no zip is downloaded.
        let after = requests(&env);
        assert_eq!((after.1 - before.1, after.2 - before.2), (2, 0));
    }
    // The tags are recorded again.
    assert!(all_tagged(&manifest(&env)), "{}", manifest(&env));
    if tagged {
        // (Requests are counted on the in-process server only.)
        let before = env.s3.as_ref().map(|_| requests(&env));
        let again = env.sync(&[]).await;
        again.assert_ok();
        assert_eq!(again.list("unchanged").len(), 2, "{}", again.report);
        if let Some(before) = before {
            assert_eq!(requests(&env).1 - before.1, 0);
        }
    }

    // An update after that is installed.
    let v2 = c_lib("print", 1, "2.0.0");
    env.update("sinks", "print", so_zip("Print@v2.0.0.so", v2.clone()))
        .await;
    let run = env.sync(&[]).await;
    run.assert_ok();
    assert_eq!(run.list("updated"), ["sinks/print@2.0.0"]);
    assert_eq!(run.list("unchanged"), ["sources/random@"]);
    assert_eq!(env.node_file("plugins/sinks/Print@v2.0.0.so"), v2);
}

async fn invalid_zip_key_is_refused(env: Env) {
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    // The metadata is made to point outside the zips.
    let key = "plugins/sinks/print.json";
    let mut meta: Value = serde_json::from_slice(&env.read_object(key).await).unwrap();
    meta["blob"] = json!("blobs/../plugins/sinks/print.json");
    env.write_object(key, serde_json::to_vec(&meta).unwrap())
        .await;

    let run = env.sync(&[]).await;
    run.assert_failed();
    let err = run.error_of("sinks/print");
    assert!(err.contains("invalid zip key"), "{err}");
    assert!(err.contains("blobs/../plugins/sinks/print.json"), "{err}");
    assert_eq!(run.failures().len(), 1, "{}", run.report);
    assert_eq!(run.list("installed"), ["sources/random@"]);
    assert!(
        env.node_files().iter().all(|f| !f.contains("sinks")),
        "{:?}",
        env.node_files()
    );
}
