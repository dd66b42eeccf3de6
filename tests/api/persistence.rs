//! Everything survives a restart of the service: the store is the state.

use serde_json::json;

use kuiper_registry::store::local::LocalStore;

use crate::common::{Backend, TestEnv};

both_stores!(
    state_survives_restart,
    gc_removes_what_killed_creates_left,
    restart_removes_stale_temporary_files
);

async fn state_survives_restart(mut env: TestEnv) {
    env.create_ok("sources", "random2").await;
    env.create_ok("sinks", "file2").await;
    let url = env.serve_plugin("functions", "echo2").await;
    let r = env
        .post(
            "/plugins/functions",
            json!({"name": "echo2", "file": url, "functions": ["echo2", "echo3"]}),
        )
        .await;
    assert_eq!(r.status, 201);
    let described = env.get("/plugins/sources/random2").await.body;
    let old_base = env.base.clone();

    env.restart().await;
    assert_ne!(env.base, old_base, "a new server instance");
    assert_eq!(env.list("sources").await, vec!["random2"]);
    assert_eq!(env.list("sinks").await, vec!["file2"]);
    assert_eq!(env.list("functions").await, vec!["echo2"]);
    assert_eq!(env.get("/plugins/sources/random2").await.body, described);
    assert_eq!(
        env.get("/plugins/udfs/echo3").await.json(),
        json!({"name": "echo3", "plugin": "echo2"})
    );
    // Duplicates are still duplicates after a restart.
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "file2", "file": env.files.url("/sinks/file2.zip")}),
        )
        .await;
    assert!(r.error_message().ends_with("invalid name file2: duplicate"));
}

/// Writes `body` at store key `key` behind the service's back (as an earlier
/// version, an operator or a dead process left it).
pub async fn put_object(env: &TestEnv, key: &str, body: Vec<u8>) {
    use kuiper_registry::store::{Condition, Store};
    match env.backend {
        Backend::Local => LocalStore::new(env.objects_dir())
            .unwrap()
            .put(key, body.into(), Condition::None)
            .await
            .unwrap(),
        Backend::S3 | Backend::Minio => env
            .s3_store()
            .await
            .put(key, body.into(), Condition::None)
            .await
            .unwrap(),
    }
}

/// Reads store key `key` behind the service's back.
pub async fn get_object(env: &TestEnv, key: &str) -> Option<Vec<u8>> {
    use kuiper_registry::store::Store;
    let obj = match env.backend {
        Backend::Local => LocalStore::new(env.objects_dir())
            .unwrap()
            .get(key)
            .await
            .unwrap(),
        Backend::S3 | Backend::Minio => env.s3_store().await.get(key).await.unwrap(),
    };
    obj.map(|o| o.body.to_vec())
}

/// Deletes store key `key` behind the service's back.
pub async fn delete_object(env: &TestEnv, key: &str) {
    use kuiper_registry::store::Store;
    match env.backend {
        Backend::Local => LocalStore::new(env.objects_dir())
            .unwrap()
            .delete(key)
            .await
            .unwrap(),
        Backend::S3 | Backend::Minio => env.s3_store().await.delete(key).await.unwrap(),
    }
}

/// Runs `plugin-api gc` in process, as the subcommand does.
async fn gc(
    env: &TestEnv,
    min_age_secs: u64,
    dry_run: bool,
) -> kuiper_registry::registry::GcReport {
    let min_age = std::time::Duration::from_secs(min_age_secs);
    let config = env.config();
    match env.backend {
        Backend::Local => {
            let store = LocalStore::new(env.objects_dir()).unwrap();
            kuiper_registry::server::build_registry(store, &config)
                .unwrap()
                .gc(min_age, dry_run)
                .await
        }
        Backend::S3 | Backend::Minio => {
            kuiper_registry::server::build_registry(env.s3_store().await, &config)
                .unwrap()
                .gc(min_age, dry_run)
                .await
        }
    }
    .unwrap()
}

/// A plain S3 client of the test server or MinIO, and the bucket, for what
/// the registry never does.
fn raw_s3(env: &TestEnv) -> (aws_sdk_s3::Client, String) {
    use aws_sdk_s3::config::{Credentials, Region};
    use kuiper_harness::s3::{ACCESS_KEY, REGION, SECRET_KEY};
    if let Some((minio, bucket)) = &env.minio {
        return (minio.client(), bucket.clone());
    }
    let s3 = env.s3.as_ref().expect("s3 backend");
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(s3.endpoint())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .force_path_style(true)
            .build(),
    );
    (client, s3.bucket().to_string())
}

/// What a create killed mid-way leaves: a partial object (local store) or an
/// incomplete multipart upload (S3), and its download spool file.
async fn leave_killed_create(env: &TestEnv) -> (String, std::path::PathBuf) {
    let spool = env.tmp.path().join("kuiper-spool-killed.zip");
    std::fs::write(&spool, b"PK\x03\x04 half a download").unwrap();
    let unfinished = match env.backend {
        Backend::Local => {
            let partial = env.objects_dir().join(".tmp/obj-killed");
            std::fs::write(&partial, b"PK\x03\x04 half an upload").unwrap();
            ".tmp/obj-killed".to_string()
        }
        Backend::S3 | Backend::Minio => {
            let (client, bucket) = raw_s3(env);
            let up = client
                .create_multipart_upload()
                .bucket(&bucket)
                .key("registry/blobs/killed.zip")
                .send()
                .await
                .unwrap();
            let id = up.upload_id().unwrap().to_string();
            client
                .upload_part()
                .bucket(&bucket)
                .key("registry/blobs/killed.zip")
                .upload_id(&id)
                .part_number(1)
                .body(aws_sdk_s3::primitives::ByteStream::from_static(
                    b"half an upload",
                ))
                .send()
                .await
                .unwrap();
            format!("blobs/killed.zip (upload {id})")
        }
    };
    (unfinished, spool)
}

/// The store's unfinished uploads that no live process holds.
async fn unfinished_uploads(env: &TestEnv) -> Vec<String> {
    use kuiper_registry::store::Store;
    let list = match env.backend {
        Backend::Local => {
            LocalStore::new(env.objects_dir())
                .unwrap()
                .unfinished()
                .await
        }
        Backend::S3 | Backend::Minio => env.s3_store().await.unfinished().await,
    };
    list.unwrap()
        .into_iter()
        .filter(|u| !u.in_use)
        .map(|u| u.name)
        .collect()
}

/// `gc` finds the partial objects, incomplete uploads and spool files of
/// killed creates past the minimum age; a dry run only reports them.
async fn gc_removes_what_killed_creates_left(env: TestEnv) {
    env.create_ok("sinks", "kept").await;
    let (unfinished, spool) = leave_killed_create(&env).await;
    // Files of a download and an upload in progress on this machine (their
    // locks held) are left alone, whatever their age.
    let live_spool = env.tmp.path().join("kuiper-spool-live.zip");
    let live_partial = env.objects_dir().join(".tmp/obj-live");
    let mut live = vec![live_spool.clone()];
    if env.backend == Backend::Local {
        live.push(live_partial.clone());
    }
    let _held: Vec<std::fs::File> = live
        .iter()
        .map(|path| {
            std::fs::write(path, b"in progress").unwrap();
            let file = std::fs::File::open(path).unwrap();
            file.lock().unwrap();
            file
        })
        .collect();
    assert_eq!(unfinished_uploads(&env).await, vec![unfinished.clone()]);
    let young = gc(&env, 3600, true).await;
    assert!(young.unfinished_uploads_removed.is_empty(), "{young:?}");
    assert!(young.spool_files_removed.is_empty(), "{young:?}");

    let dry = gc(&env, 0, true).await;
    assert!(dry.dry_run);
    assert_eq!(dry.unfinished_uploads_removed, vec![unfinished.clone()]);
    assert_eq!(dry.spool_files_removed, vec![spool.display().to_string()]);
    assert!(spool.exists(), "a dry run removes nothing");
    assert_eq!(unfinished_uploads(&env).await, vec![unfinished.clone()]);

    let done = gc(&env, 0, false).await;
    assert_eq!(done.unfinished_uploads_removed, vec![unfinished]);
    assert_eq!(done.spool_files_removed, vec![spool.display().to_string()]);
    assert!(!spool.exists());
    assert!(unfinished_uploads(&env).await.is_empty());
    if env.backend == Backend::Local {
        assert!(!env.objects_dir().join(".tmp/obj-killed").exists());
    }
    assert_eq!(env.get("/plugins/sinks/kept").await.status, 200);
    assert!(gc(&env, 0, true)
        .await
        .unfinished_uploads_removed
        .is_empty());
    for path in &live {
        assert!(path.exists(), "{} is in use and stays", path.display());
    }
}

/// Sets a file's modification time `secs` seconds back.
fn age(path: &std::path::Path, secs: u64) {
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// A starting service removes the temporary files dead processes left on
/// its machine, once they are older than any request; recent ones (another
/// process's, in progress) stay.
async fn restart_removes_stale_temporary_files(mut env: TestEnv) {
    let stale_spool = env.tmp.path().join("kuiper-spool-stale.zip");
    let fresh_spool = env.tmp.path().join("kuiper-spool-fresh.zip");
    let other = env.tmp.path().join("someone-elses.zip");
    let mut stale = vec![stale_spool.clone()];
    let mut fresh = vec![fresh_spool.clone(), other.clone()];
    if env.backend == Backend::Local {
        stale.push(env.objects_dir().join(".tmp/obj-stale"));
        fresh.push(env.objects_dir().join(".tmp/obj-fresh"));
    }
    for f in stale.iter().chain(&fresh) {
        std::fs::write(f, b"left behind").unwrap();
    }
    // An old spool file whose download is still going (its lock held) stays.
    let long_download = env.tmp.path().join("kuiper-spool-long.zip");
    std::fs::write(&long_download, b"still downloading").unwrap();
    let held = std::fs::File::open(&long_download).unwrap();
    held.lock().unwrap();
    fresh.push(long_download.clone());
    for f in stale.iter().chain([&other, &long_download]) {
        age(f, 2 * 3600);
    }
    env.restart().await;
    for f in &stale {
        assert!(!f.exists(), "{} is removed", f.display());
    }
    for f in &fresh {
        assert!(f.exists(), "{} stays", f.display());
    }
}
