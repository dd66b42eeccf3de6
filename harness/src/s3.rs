//! An in-process S3-protocol server on 127.0.0.1 (s3s + s3s-fs) with SigV4
//! authentication, for tests that need a real S3 endpoint.
//!
//! s3s-fs checks `If-None-Match` / `If-Match` but not atomically, and writes an
//! object's data and ETag separately, while AWS S3 and MinIO are atomic; this
//! server serialises writes and reads per key so that race tests test the
//! registry, not that gap. s3s-fs 0.14 also lists objects without their
//! ETags, which this server fills in as AWS S3 and MinIO list them. s3s-fs
//! ignores `If-Match` on DeleteObject and does not implement
//! ListMultipartUploads; this server checks the one (under the key's lock,
//! 412 on another tag, 404 on an absent key, as AWS S3 answers) and answers
//! the other from the uploads it saw started and not yet completed or
//! aborted. It can also be told to fail every request with a status, to test
//! store outages, and to ignore conditional requests, as some S3-compatible
//! servers do ([`S3Server::ignore_conditions`], [`S3Server::ignore_delete_conditions`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Access key id the server accepts.
pub const ACCESS_KEY: &str = "kuiper-test-access";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "kuiper-test-secret-key-0123456789";
/// The region clients should sign for.
pub const REGION: &str = "us-east-1";

/// Request counters and fault switch shared with the server.
#[derive(Debug, Default)]
pub struct Stats {
    /// GetObject calls.
    pub gets: AtomicU64,
    /// GetObject calls for zips (keys containing `blobs/`).
    pub blob_gets: AtomicU64,
    /// PutObject calls (and multipart completions).
    pub puts: AtomicU64,
    /// ListObjects(V2) calls.
    pub lists: AtomicU64,
    /// HeadObject calls.
    pub heads: AtomicU64,
    /// DeleteObject calls.
    pub deletes: AtomicU64,
    /// When non-zero, every request fails with this status (500 or 503).
    pub fail_with: AtomicU16,
    /// When set, PutObject of keys containing this text fails with 503.
    pub fail_puts_containing: Mutex<Option<String>>,
    /// When set, PutObject and DeleteObject ignore `If-None-Match` and `If-Match`.
    pub ignore_conditions: AtomicBool,
    /// When set, DeleteObject ignores `If-Match` (as MinIO does).
    pub ignore_delete_conditions: AtomicBool,
}

struct Serialized {
    inner: s3s_fs::FileSystem,
    /// s3s-fs's root directory (where it keeps per-object internal files).
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Multipart uploads started and not yet completed nor aborted:
    /// upload id -> (bucket, key, when started).
    uploads: Mutex<HashMap<String, (String, String, std::time::SystemTime)>>,
    stats: Arc<Stats>,
}

impl Serialized {
    fn lock_for(&self, bucket: &str, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().expect("lock map");
        map.entry(format!("{bucket}/{key}")).or_default().clone()
    }

    /// The ETag s3s-fs recorded when it wrote `key` (what GetObject returns),
    /// read from its per-object `internal.json` file; `None` for objects
    /// written behind the server's back.
    async fn stored_etag(&self, bucket: &str, key: &str) -> Option<ETag> {
        use base64::Engine as _;
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let path = self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            encode(bucket),
            encode(key)
        ));
        let bytes = tokio::fs::read(path).await.ok()?;
        let info: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        info.get("e_tag")?
            .as_str()
            .map(|t| ETag::Strong(t.to_string()))
    }

    fn fault(&self) -> S3Result<()> {
        match self.stats.fail_with.load(Ordering::SeqCst) {
            0 => Ok(()),
            503 => Err(s3_error!(ServiceUnavailable, "injected outage")),
            _ => Err(s3_error!(InternalError, "injected failure")),
        }
    }
}

#[async_trait::async_trait]
impl S3 for Serialized {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fault()?;
        self.inner.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fault()?;
        self.inner.head_bucket(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.fault()?;
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        if req.input.key.contains("blobs/") {
            self.stats.blob_gets.fetch_add(1, Ordering::Relaxed);
        }
        // s3s-fs writes an object's data and its ETag separately; reading under
        // the key's lock gives the atomic reads AWS S3 and MinIO give.
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _guard = lock.lock().await;
        self.inner.get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fault()?;
        self.stats.heads.fetch_add(1, Ordering::Relaxed);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _guard = lock.lock().await;
        self.inner.head_object(req).await
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.fault()?;
        if self.stats.ignore_conditions.load(Ordering::SeqCst) {
            req.input.if_none_match = None;
            req.input.if_match = None;
        }
        let doomed = self
            .stats
            .fail_puts_containing
            .lock()
            .expect("fault lock")
            .as_ref()
            .is_some_and(|needle| req.input.key.contains(needle.as_str()));
        if doomed {
            return Err(s3_error!(
                ServiceUnavailable,
                "injected outage for this key"
            ));
        }
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _guard = lock.lock().await;
        self.inner.put_object(req).await
    }

    async fn delete_object(
        &self,
        mut req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fault()?;
        if self.stats.ignore_conditions.load(Ordering::SeqCst)
            || self.stats.ignore_delete_conditions.load(Ordering::SeqCst)
        {
            req.input.if_match = None;
        }
        self.stats.deletes.fetch_add(1, Ordering::Relaxed);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _guard = lock.lock().await;
        if let Some(condition) = &req.input.if_match {
            // s3s-fs keeps an object's recorded ETag after deleting it: the
            // object's own file tells whether it exists.
            let path = self.root.join(&req.input.bucket).join(&req.input.key);
            let exists = tokio::fs::try_exists(&path).await.unwrap_or(false);
            let current = match exists {
                true => self.stored_etag(&req.input.bucket, &req.input.key).await,
                false => None,
            };
            match current {
                None => return Err(s3_error!(NoSuchKey)),
                Some(current) => {
                    let matches = match condition.as_etag() {
                        Some(expected) => current.strong_cmp(expected),
                        None => true, // `If-Match: *`: any existing object
                    };
                    if !matches {
                        return Err(s3_error!(PreconditionFailed, "ETag does not match"));
                    }
                }
            }
        }
        self.inner.delete_object(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fault()?;
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fault()?;
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        let bucket = req.input.bucket.clone();
        let mut resp = self.inner.list_objects_v2(req).await?;
        // s3s-fs 0.14 lists objects without their ETags; AWS S3 and MinIO
        // list them, and clients (kuiper-node) rely on it to skip reads.
        for object in resp.output.contents.iter_mut().flatten() {
            if object.e_tag.is_none() {
                if let Some(key) = &object.key {
                    object.e_tag = self.stored_etag(&bucket, key).await;
                }
            }
        }
        Ok(resp)
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fault()?;
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let resp = self.inner.create_multipart_upload(req).await?;
        if let Some(id) = &resp.output.upload_id {
            self.uploads
                .lock()
                .expect("uploads lock")
                .insert(id.clone(), (bucket, key, std::time::SystemTime::now()));
        }
        Ok(resp)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.fault()?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads: Vec<MultipartUpload> = self
            .uploads
            .lock()
            .expect("uploads lock")
            .iter()
            .filter(|(_, (bucket, key, _))| *bucket == input.bucket && key.starts_with(&prefix))
            .map(|(id, (_, key, started))| MultipartUpload {
                key: Some(key.clone()),
                upload_id: Some(id.clone()),
                initiated: Some(Timestamp::from(*started)),
                ..Default::default()
            })
            .collect();
        uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.fault()?;
        self.inner.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.fault()?;
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _guard = lock.lock().await;
        let id = req.input.upload_id.clone();
        let resp = self.inner.complete_multipart_upload(req).await?;
        self.uploads.lock().expect("uploads lock").remove(&id);
        Ok(resp)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fault()?;
        let id = req.input.upload_id.clone();
        // AWS S3 answers 404 NoSuchUpload for an upload already completed
        // or aborted; s3s-fs answers 403.
        if !self.uploads.lock().expect("uploads lock").contains_key(&id) {
            return Err(s3_error!(NoSuchUpload));
        }
        let resp = self.inner.abort_multipart_upload(req).await?;
        self.uploads.lock().expect("uploads lock").remove(&id);
        Ok(resp)
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.fault()?;
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _guard = lock.lock().await;
        self.inner.copy_object(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.fault()?;
        self.inner.list_parts(req).await
    }
}

/// A running S3-protocol server with one bucket.
pub struct S3Server {
    endpoint: String,
    bucket: String,
    root: tempfile::TempDir,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl S3Server {
    /// Starts a server on 127.0.0.1:0 with an empty bucket named `bucket`.
    pub async fn start(bucket: &str) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join(bucket)).expect("bucket dir");
        let stats = Arc::new(Stats::default());
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(Serialized {
                inner: fs,
                root: root.path().to_path_buf(),
                locks: Mutex::new(HashMap::new()),
                uploads: Mutex::new(HashMap::new()),
                stats: stats.clone(),
            });
            b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind s3");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                // As S3 and MinIO do: without it, Nagle's algorithm and
                // delayed ACKs add ~40 ms to some responses.
                let _ = sock.set_nodelay(true);
                let svc = service.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        S3Server {
            endpoint,
            bucket: bucket.to_string(),
            root,
            stats,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The directory holding the bucket's objects (`{root}/{bucket}/{key}`).
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(&self.bucket)
    }

    /// The server's root directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Request counters and the fault switch.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Makes every request fail with `status` (500 or 503); `None` heals.
    pub fn fail_with(&self, status: Option<u16>) {
        self.stats
            .fail_with
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Makes PutObject fail with 503 for keys containing `needle` (`None` heals):
    /// a store that fails in the middle of a request.
    pub fn fail_puts_containing(&self, needle: Option<&str>) {
        *self.stats.fail_puts_containing.lock().expect("fault lock") = needle.map(str::to_string);
    }

    /// Makes PutObject and DeleteObject ignore `If-None-Match` and `If-Match`
    /// (`false` heals): an S3-compatible store on which two creates of one
    /// key could both win.
    pub fn ignore_conditions(&self, ignore: bool) {
        self.stats.ignore_conditions.store(ignore, Ordering::SeqCst);
    }

    /// Makes DeleteObject ignore `If-Match` (`false` heals), as MinIO does.
    pub fn ignore_delete_conditions(&self, ignore: bool) {
        self.stats
            .ignore_delete_conditions
            .store(ignore, Ordering::SeqCst);
    }

    /// Stops accepting connections (the endpoint then refuses them).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
