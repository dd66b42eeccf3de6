//! The same conformance suite for every `Store` backend: the local directory
//! and S3 (against the in-process S3-protocol server).

use std::sync::Arc;

use bytes::Bytes;
use kuiper_harness::minio::{Minio, MINIO_ACCESS_KEY, MINIO_REGION, MINIO_SECRET_KEY};
use kuiper_harness::s3::{S3Server, ACCESS_KEY, REGION, SECRET_KEY};
use kuiper_registry::store::local::LocalStore;
use kuiper_registry::store::s3::{S3Settings, S3Store};
use kuiper_registry::store::{Condition, Store, StoreError, MAX_SMALL_OBJECT_BYTES};

async fn s3_store(server: &S3Server, bucket: &str, prefix: &str, secret: &str) -> S3Store {
    S3Store::new(S3Settings {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        endpoint: Some(server.endpoint().to_string()),
        region: Some(REGION.into()),
        credentials: Some((ACCESS_KEY.into(), secret.into())),
        allow_unsafe: false,
    })
    .await
}

async fn get_put_delete<S: Store>(s: &S) {
    assert!(s.get("plugins/sinks/a.json").await.unwrap().is_none());
    assert!(!s.exists("plugins/sinks/a.json").await.unwrap());
    s.put(
        "plugins/sinks/a.json",
        Bytes::from_static(b"one"),
        Condition::None,
    )
    .await
    .unwrap();
    let o = s
        .get("plugins/sinks/a.json")
        .await
        .unwrap()
        .expect("present");
    assert_eq!(&o.body[..], b"one");
    assert!(s.exists("plugins/sinks/a.json").await.unwrap());
    s.put(
        "plugins/sinks/a.json",
        Bytes::from_static(b"two"),
        Condition::None,
    )
    .await
    .unwrap();
    let o2 = s.get("plugins/sinks/a.json").await.unwrap().unwrap();
    assert_eq!(&o2.body[..], b"two");
    assert_ne!(o.etag, o2.etag, "new content, new etag");
    s.delete("plugins/sinks/a.json").await.unwrap();
    assert!(s.get("plugins/sinks/a.json").await.unwrap().is_none());
    s.delete("plugins/sinks/a.json")
        .await
        .expect("deleting an absent key succeeds");
}

async fn conditions<S: Store>(s: &S) {
    let k = "plugins/functions/f.json";
    s.put(k, Bytes::from_static(b"v1"), Condition::IfNoneMatch)
        .await
        .unwrap();
    assert!(matches!(
        s.put(k, Bytes::from_static(b"x"), Condition::IfNoneMatch)
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    let v1 = s.get(k).await.unwrap().unwrap();
    assert_eq!(&v1.body[..], b"v1", "a refused write changes nothing");
    s.put(
        k,
        Bytes::from_static(b"v2"),
        Condition::IfMatch(v1.etag.clone()),
    )
    .await
    .unwrap();
    assert!(matches!(
        s.put(
            k,
            Bytes::from_static(b"v3"),
            Condition::IfMatch(v1.etag.clone())
        )
        .await,
        Err(StoreError::PreconditionFailed)
    ));
    assert_eq!(&s.get(k).await.unwrap().unwrap().body[..], b"v2");
    s.delete(k).await.unwrap();
    assert!(matches!(
        s.put(k, Bytes::from_static(b"v4"), Condition::IfMatch(v1.etag))
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    assert!(s.get(k).await.unwrap().is_none());
}

async fn listing<S: Store>(s: &S) {
    assert!(s.list("plugins/sources/").await.unwrap().is_empty());
    for k in [
        "plugins/sources/b.json",
        "plugins/sources/a.json",
        "plugins/sinks/c.json",
        "udfs/x.json",
        "plugins/sources-x/d.json",
    ] {
        s.put(k, Bytes::from(k.to_string()), Condition::None)
            .await
            .unwrap();
    }
    let keys: Vec<_> = s
        .list("plugins/sources/")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(
        keys,
        vec!["plugins/sources/a.json", "plugins/sources/b.json"]
    );
    let l = s.list("udfs/").await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].size, "udfs/x.json".len() as u64);
    assert!(l[0].modified > 1_600_000_000);
    let all = s.list("plugins/").await.unwrap();
    assert_eq!(all.len(), 4);
    for l in &all {
        if let Some(etag) = &l.etag {
            assert_eq!(
                etag,
                &s.get(&l.key).await.unwrap().unwrap().etag,
                "a listed entity tag is the one a read returns"
            );
        }
    }
    let keys = s.list_keys("plugins/").await.unwrap();
    assert_eq!(keys, all.iter().map(|l| l.key.clone()).collect::<Vec<_>>());
}

/// Pages of a listing: in order, none missed or repeated, `more` exact.
async fn pages<S: Store>(s: &S) {
    let mut want = Vec::new();
    for i in 0..25 {
        let k = format!("nodes/n{i:03}.json");
        s.put(&k, Bytes::from(k.clone()), Condition::None)
            .await
            .unwrap();
        want.push(k);
    }
    // Neighbours that must never appear in the page.
    for k in ["nodesx/a.json", "node/b.json"] {
        s.put(k, Bytes::from_static(b"x"), Condition::None)
            .await
            .unwrap();
    }
    for size in [1, 7, 25, 1000] {
        let (mut got, mut after, mut requests) = (Vec::new(), None::<String>, 0);
        loop {
            let page = s.list_page("nodes/", after.as_deref(), size).await.unwrap();
            requests += 1;
            assert!(page.items.len() <= size);
            got.extend(page.items.iter().map(|l| l.key.clone()));
            if !page.more {
                break;
            }
            after = page.items.last().map(|l| l.key.clone());
            assert!(after.is_some(), "a page with more after it is not empty");
        }
        assert_eq!(got, want, "page size {size}");
        assert!(
            requests <= want.len().div_ceil(size) + 1,
            "page size {size}"
        );
    }
    let tail = s
        .list_page("nodes/", Some("nodes/n022.json"), 10)
        .await
        .unwrap();
    assert_eq!(tail.items.len(), 2);
    assert!(!tail.more);
    assert!(tail.items.iter().all(|l| l.size > 0 && l.modified > 0));
    let one = s.list_page("nodes/n003.json", None, 2).await.unwrap();
    let keys: Vec<_> = one.items.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["nodes/n003.json"], "a whole key lists only itself");
    let empty = s.list_page("nodes/", Some("nodes/zzz"), 10).await.unwrap();
    assert_eq!(empty, Default::default());
}

async fn files<S: Store>(s: &S) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.zip");
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    s.put_file("blobs/sha256/abc.zip", &src).await.unwrap();
    let dest = dir.path().join("out.zip");
    assert!(s.get_to_file("blobs/sha256/abc.zip", &dest).await.unwrap());
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!s
        .get_to_file("blobs/sha256/none.zip", &dir.path().join("none"))
        .await
        .unwrap());
    assert_eq!(
        s.list("blobs/sha256/").await.unwrap()[0].size,
        data.len() as u64
    );
}

async fn streams<S: Store>(s: &S) {
    use kuiper_registry::store::UploadChunk;
    // A completed stream of several parts' worth of data.
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let feed = {
        let data = data.clone();
        async move {
            for chunk in data.chunks(1 << 20) {
                tx.send(UploadChunk::Data(Bytes::copy_from_slice(chunk)))
                    .await
                    .unwrap();
            }
            tx.send(UploadChunk::End).await.unwrap();
        }
    };
    let (_, put) = tokio::join!(feed, s.put_stream("uploads/a.zip", rx));
    put.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.zip");
    assert!(s.get_to_file("uploads/a.zip", &out).await.unwrap());
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // An empty stream is an empty object.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(UploadChunk::End).await.unwrap();
    s.put_stream("uploads/empty.zip", rx).await.unwrap();
    assert!(s
        .get("uploads/empty.zip")
        .await
        .unwrap()
        .unwrap()
        .body
        .is_empty());
    // A stream that stops without End stores nothing.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let feed = async move {
        tx.send(UploadChunk::Data(Bytes::from(vec![1u8; 9 << 20])))
            .await
            .unwrap();
        drop(tx);
    };
    let (_, put) = tokio::join!(feed, s.put_stream("uploads/aborted.zip", rx));
    assert!(put.is_err());
    assert!(
        s.get("uploads/aborted.zip").await.unwrap().is_none(),
        "an aborted upload stores nothing"
    );
    s.delete("uploads/a.zip").await.unwrap();
    s.delete("uploads/empty.zip").await.unwrap();

    // With the size announced first (a single request on S3).
    let sized = |data: Vec<u8>, announced: u64, end: bool| async move {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let feed = async move {
            tx.send(UploadChunk::Size(announced)).await.unwrap();
            for chunk in data.chunks(3 << 20) {
                tx.send(UploadChunk::Data(Bytes::copy_from_slice(chunk)))
                    .await
                    .unwrap();
            }
            if end {
                tx.send(UploadChunk::End).await.unwrap();
            }
        };
        let (_, put) = tokio::join!(feed, s.put_stream("blobs/sized.zip", rx));
        put
    };
    sized(data.clone(), data.len() as u64, true).await.unwrap();
    assert!(s.get_to_file("blobs/sized.zip", &out).await.unwrap());
    assert_eq!(std::fs::read(&out).unwrap(), data);
    s.delete("blobs/sized.zip").await.unwrap();
    assert!(sized(data.clone(), data.len() as u64, false).await.is_err());
    assert!(
        s.get("blobs/sized.zip").await.unwrap().is_none(),
        "a sized upload stopped before End stores nothing"
    );
    sized(Vec::new(), 0, true).await.unwrap();
    assert!(s
        .get("blobs/sized.zip")
        .await
        .unwrap()
        .unwrap()
        .body
        .is_empty());
    s.delete("blobs/sized.zip").await.unwrap();
}

async fn create_only_race<S: Store>(s: Arc<S>) {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.put(
                "plugins/sinks/race.json",
                Bytes::from(format!("{i}")),
                Condition::IfNoneMatch,
            )
            .await
            .map(|_| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(StoreError::PreconditionFailed) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create-only write wins");
    let body = s
        .get("plugins/sinks/race.json")
        .await
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(
        body,
        Bytes::from(winners[0].to_string()),
        "the stored value is the winner's"
    );
}

async fn compare_and_swap_loses_no_update<S: Store>(s: Arc<S>) {
    let k = "plugins/sinks/counter.json";
    s.put(k, Bytes::from_static(b"0"), Condition::None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let cur = s.get(k).await.unwrap().unwrap();
                let n: u32 = std::str::from_utf8(&cur.body).unwrap().parse().unwrap();
                match s
                    .put(
                        k,
                        Bytes::from((n + 1).to_string()),
                        Condition::IfMatch(cur.etag),
                    )
                    .await
                {
                    Ok(()) => break,
                    Err(StoreError::PreconditionFailed) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        &s.get(k).await.unwrap().unwrap().body[..],
        b"8",
        "no increment is lost"
    );
}

async fn conditional_delete<S: Store>(s: Arc<S>) {
    let k = "plugins/sinks/cond.json";
    s.put(k, Bytes::from_static(b"v1"), Condition::None)
        .await
        .unwrap();
    let v1 = s.get(k).await.unwrap().unwrap();
    s.put(k, Bytes::from_static(b"v2"), Condition::None)
        .await
        .unwrap();
    assert!(matches!(
        s.delete_if(k, &v1.etag).await,
        Err(StoreError::PreconditionFailed)
    ));
    let v2 = s
        .get(k)
        .await
        .unwrap()
        .expect("a refused delete deletes nothing");
    assert_eq!(&v2.body[..], b"v2");
    // Of concurrent deletes of one version, exactly one succeeds.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (s, etag) = (s.clone(), v2.etag.clone());
        tasks.push(tokio::spawn(async move { s.delete_if(k, &etag).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::PreconditionFailed) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one conditional delete wins");
    assert!(s.get(k).await.unwrap().is_none());
    // An absent key fails the condition too.
    assert!(matches!(
        s.delete_if(k, &v2.etag).await,
        Err(StoreError::PreconditionFailed)
    ));
    assert!(s.get(k).await.unwrap().is_none());
}

/// An upload in progress is listed as unfinished until it completes;
/// aborting it removes it, and the upload then stores nothing.
async fn unfinished_uploads<S: Store>(s: Arc<S>) {
    use kuiper_registry::store::UploadChunk;
    assert!(s.unfinished().await.unwrap().is_empty());
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let upload = {
        let s = s.clone();
        tokio::spawn(async move { s.put_stream("blobs/unfinished.zip", rx).await })
    };
    tx.send(UploadChunk::Data(Bytes::from(vec![7u8; 1 << 20])))
        .await
        .unwrap();
    let mut listed = Vec::new();
    for _ in 0..500 {
        listed = s.unfinished().await.unwrap();
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        listed.len(),
        1,
        "the upload in progress is listed: {listed:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        listed[0].since + 600 > now && listed[0].since <= now + 5,
        "{listed:?}"
    );
    s.abort_unfinished(&listed[0]).await.unwrap();
    assert!(s.unfinished().await.unwrap().is_empty(), "aborted");
    s.abort_unfinished(&listed[0])
        .await
        .expect("aborting one already gone is not an error");
    drop(tx);
    assert!(upload.await.unwrap().is_err());
    assert!(s.get("blobs/unfinished.zip").await.unwrap().is_none());
    assert!(s.unfinished().await.unwrap().is_empty());
}

async fn small_objects_are_capped<S: Store>(s: &S) {
    let key = "index/sinks.json";
    let cap = MAX_SMALL_OBJECT_BYTES as usize;
    let big = Bytes::from(vec![b'x'; cap + 1]);
    let err = s.put(key, big.clone(), Condition::None).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Other(m) if m.contains(&format!("is {} bytes", cap + 1))),
        "{err}"
    );
    assert!(
        !s.exists(key).await.unwrap(),
        "a refused put writes nothing"
    );
    // Exactly the cap is written and read.
    s.put(key, big.slice(..cap), Condition::None).await.unwrap();
    assert_eq!(s.get(key).await.unwrap().unwrap().body.len(), cap);
    // An oversized object that got there another way is refused, not read
    // into memory; the streaming read still has it.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    std::fs::write(&src, &big).unwrap();
    s.put_file(key, &src).await.unwrap();
    let err = s.get(key).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Other(m) if m.contains(&format!("object {key} is {} bytes", cap + 1))),
        "{err}"
    );
    let out = dir.path().join("out");
    assert!(s.get_to_file(key, &out).await.unwrap());
    assert_eq!(std::fs::metadata(&out).unwrap().len(), cap as u64 + 1);
    s.delete(key).await.unwrap();
}

async fn suite<S: Store>(s: S) {
    s.check().await.expect("store usable");
    get_put_delete(&s).await;
    conditions(&s).await;
    listing(&s).await;
    pages(&s).await;
    files(&s).await;
    streams(&s).await;
    small_objects_are_capped(&s).await;
    let s = Arc::new(s);
    create_only_race(s.clone()).await;
    conditional_delete(s.clone()).await;
    unfinished_uploads(s.clone()).await;
    compare_and_swap_loses_no_update(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    suite(LocalStore::new(dir.path().join("store")).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_conforms() {
    let server = S3Server::start("bucket").await;
    suite(s3_store(&server, "bucket", "", SECRET_KEY).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_with_prefix_conforms() {
    let server = S3Server::start("bucket").await;
    let store = s3_store(&server, "bucket", "team/prod", SECRET_KEY).await;
    suite(store).await;
    assert!(
        server
            .bucket_dir()
            .join("team/prod/plugins/sinks/counter.json")
            .exists(),
        "keys live under the prefix"
    );
}

#[tokio::test]
async fn s3_check_names_the_problem() {
    let server = S3Server::start("bucket").await;
    let missing = s3_store(&server, "nope", "", SECRET_KEY)
        .await
        .check()
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("bucket nope does not exist"),
        "{missing}"
    );
    let denied = s3_store(&server, "bucket", "", "wrong-secret")
        .await
        .check()
        .await
        .unwrap_err();
    assert!(
        denied
            .to_string()
            .contains("access to bucket bucket denied"),
        "{denied}"
    );
    server.stop();
    let down = s3_store(&server, "bucket", "", SECRET_KEY)
        .await
        .check()
        .await
        .unwrap_err();
    assert!(matches!(down, StoreError::Unavailable(_)), "{down}");
}

#[tokio::test]
async fn s3_outage_is_unavailable() {
    let server = S3Server::start("bucket").await;
    let s = s3_store(&server, "bucket", "", SECRET_KEY).await;
    server.fail_with(Some(503));
    let e = s.get("plugins/sinks/a.json").await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    server.fail_with(None);
    assert!(s.get("plugins/sinks/a.json").await.unwrap().is_none());
}

#[test]
fn local_store_refuses_unusable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let e = LocalStore::new(file.join("store")).unwrap_err();
    assert!(
        e.to_string().contains("cannot create store directory"),
        "{e}"
    );
}

async fn minio_store(minio: &Minio, bucket: &str, prefix: &str) -> S3Store {
    S3Store::new(S3Settings {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        endpoint: Some(minio.endpoint()),
        region: Some(MINIO_REGION.into()),
        credentials: Some((MINIO_ACCESS_KEY.into(), MINIO_SECRET_KEY.into())),
        allow_unsafe: false,
    })
    .await
}

/// The same messages as for the in-process server: MinIO answers a missing
/// bucket with 404 and a wrong secret with 403 (SignatureDoesNotMatch); a
/// stopped MinIO is unavailable, and usable again once restarted.
#[tokio::test]
async fn minio_check_names_the_problem() {
    let minio = Minio::start();
    let bucket = minio.new_bucket().await;
    let missing = minio_store(&minio, "nope", "")
        .await
        .check()
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("bucket nope does not exist"),
        "{missing}"
    );
    let wrong = S3Store::new(S3Settings {
        bucket: bucket.clone(),
        prefix: String::new(),
        endpoint: Some(minio.endpoint()),
        region: Some(MINIO_REGION.into()),
        credentials: Some((MINIO_ACCESS_KEY.into(), "wrong-secret".into())),
        allow_unsafe: false,
    })
    .await;
    let denied = wrong.check().await.unwrap_err();
    assert!(
        denied
            .to_string()
            .contains(&format!("access to bucket {bucket} denied")),
        "{denied}"
    );
    let store = minio_store(&minio, &bucket, "").await;
    store
        .put(
            "plugins/sinks/a.json",
            Bytes::from_static(b"{}"),
            Condition::IfNoneMatch,
        )
        .await
        .unwrap();
    minio.stop();
    let down = store.get("plugins/sinks/a.json").await.unwrap_err();
    assert!(matches!(down, StoreError::Unavailable(_)), "{down}");
    let down = store.check().await.unwrap_err();
    assert!(matches!(down, StoreError::Unavailable(_)), "{down}");
    minio.restart();
    assert!(store.get("plugins/sinks/a.json").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minio_store_conforms() {
    let minio = Minio::shared();
    let bucket = minio.new_bucket().await;
    suite(minio_store(minio, &bucket, "").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minio_store_with_prefix_conforms() {
    let minio = Minio::shared();
    let bucket = minio.new_bucket().await;
    suite(minio_store(minio, &bucket, "team/prod").await).await;
    let listed = minio
        .client()
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(
        keys.contains(&"team/prod/plugins/sinks/counter.json"),
        "keys live under the prefix: {keys:?}"
    );
}

/// The in-process server made to ignore `If-Match` on DeleteObject, as MinIO
/// does: the store finds it out and deletes by marker, and conforms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_with_deletion_markers_conforms() {
    let server = S3Server::start("bucket").await;
    server.ignore_delete_conditions(true);
    let store = s3_store(&server, "bucket", "p", SECRET_KEY).await;
    let c = store.conditions().await.unwrap();
    assert!(c.if_none_match && c.if_match && !c.delete_if_match, "{c:?}");
    suite(store).await;
}

/// A marker left by a delete that died between its two requests: absent to
/// every read; a create waits for a young one and replaces a stale one;
/// `unfinished` lists it and aborting it removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_markers_left_behind() {
    use kuiper_registry::store::s3::markers::{MARKER_LEN, MARKER_META, MARKER_STALE};
    let server = S3Server::start("bucket").await;
    server.ignore_delete_conditions(true);
    let store = s3_store(&server, "bucket", "", SECRET_KEY).await;
    let key = "plugins/sinks/m.json";
    let leave_marker = || async {
        let body = format!("kuiper-registry deletion marker {}\n", "ab".repeat(16));
        assert_eq!(body.len() as u64, MARKER_LEN);
        raw_client(&server)
            .put_object()
            .bucket("bucket")
            .key(key)
            .metadata(MARKER_META, "1")
            .body(body.into_bytes().into())
            .send()
            .await
            .unwrap();
    };
    let age = |secs: u64| {
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(server.bucket_dir().join(key))
            .unwrap()
            .set_modified(when)
            .unwrap();
    };
    store
        .put(key, Bytes::from_static(b"v1"), Condition::IfNoneMatch)
        .await
        .unwrap();
    leave_marker().await;
    assert!(store.get(key).await.unwrap().is_none());
    assert!(!store.exists(key).await.unwrap());
    assert!(store.list("plugins/").await.unwrap().is_empty());
    let dir = tempfile::tempdir().unwrap();
    assert!(!store.get_to_file(key, &dir.path().join("m")).await.unwrap());
    // A young marker belongs to a delete in progress: a create waits, then fails.
    let started = std::time::Instant::now();
    assert!(matches!(
        store
            .put(key, Bytes::from_static(b"v2"), Condition::IfNoneMatch)
            .await,
        Err(StoreError::PreconditionFailed)
    ));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    let listed = store.unfinished().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, format!("{key} (deletion marker)"));
    // A stale one belongs to a dead delete: the next create replaces it.
    age(MARKER_STALE.as_secs() + 60);
    store
        .put(key, Bytes::from_static(b"v2"), Condition::IfNoneMatch)
        .await
        .unwrap();
    assert_eq!(&store.get(key).await.unwrap().unwrap().body[..], b"v2");
    assert!(store.unfinished().await.unwrap().is_empty());
    // gc aborts a marker: it is removed, and a create then writes at once.
    leave_marker().await;
    age(3600);
    let listed = store.unfinished().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now - listed[0].since >= 3590, "{listed:?}");
    store.abort_unfinished(&listed[0]).await.unwrap();
    assert!(store.unfinished().await.unwrap().is_empty());
    assert!(!server.bucket_dir().join(key).exists(), "removed");
    store
        .put(key, Bytes::from_static(b"v3"), Condition::IfNoneMatch)
        .await
        .unwrap();
    // Aborting a marker already replaced by a create leaves the create alone.
    store.abort_unfinished(&listed[0]).await.unwrap();
    assert_eq!(&store.get(key).await.unwrap().unwrap().body[..], b"v3");
}

fn raw_client(server: &S3Server) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{Credentials, Region};
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(server.endpoint())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .force_path_style(true)
            .build(),
    )
}
