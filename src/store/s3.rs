//! The S3 backend (`aws-sdk-s3`): AWS S3, MinIO and other S3-compatible servers.
//!
//! Create-only writes send `If-None-Match: *`, compare-and-swap writes send
//! `If-Match: <etag>`; both are atomic on AWS S3 and MinIO. Conditional
//! deletes send `If-Match` on DeleteObject where the store honours it (AWS
//! S3), and write a deletion marker first where it does not (MinIO; see
//! [`markers`]); which is which, and whether the store honours conditional
//! writes at all, is checked once per bucket ([`conditions`]) before the
//! first conditional request. Unfinished uploads are the bucket's incomplete
//! multipart uploads under the prefix (ListMultipartUploads), plus deletion
//! markers a dead process left. Keys under [`keys::RESERVED_PREFIX`] are
//! never listed. With a custom
//! endpoint the client uses path-style addressing, and checksums are only sent
//! or checked where the API requires them, so servers without the newest
//! checksum headers still work.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::OnceCell;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{
    check_small, keys, Condition, ETag, Listed, Object, Page, Store, StoreError, Unfinished,
    UploadChunk,
};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

mod client;
pub mod conditions;
pub mod markers;
use client::build_client;
pub use conditions::StoreConditions;

/// How to reach the bucket. Unset fields come from the standard AWS
/// environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL_S3`, ...).
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/`.
    pub prefix: String,
    /// Custom endpoint (MinIO, a test server); implies path-style addressing.
    pub endpoint: Option<String>,
    /// Region; `us-east-1` when neither this nor the environment gives one.
    pub region: Option<String>,
    /// Static access key id and secret.
    pub credentials: Option<(String, String)>,
    /// Use a store that fails the check of conditional requests
    /// ([`S3Store::conditions`]) anyway, with a warning, instead of refusing it.
    pub allow_unsafe: bool,
}

/// A store in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    /// Built on first use: building it loads the AWS configuration and the
    /// system's trust store, which would otherwise delay every cold start.
    client: Arc<OnceCell<Client>>,
    /// What the store does with conditional requests, known on first need.
    conditions: Arc<OnceCell<StoreConditions>>,
    settings: Arc<S3Settings>,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// A store configured from the environment plus `settings`; the client
    /// is built (and the environment read) when the first request is made.
    pub async fn new(settings: S3Settings) -> Self {
        S3Store {
            client: Arc::new(OnceCell::new()),
            conditions: Arc::new(OnceCell::new()),
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            settings: Arc::new(settings),
        }
    }

    /// The client, built the first time it is needed.
    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| build_client(&self.settings))
            .await
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn unprefix<'a>(&self, key: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }
}

impl S3Store {
    /// GetObject; `None` when the key is absent (or holds a deletion marker).
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, StoreError> {
        match self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
        {
            Ok(o) if markers::is_marker(o.metadata()) => Ok(None),
            Ok(o) => Ok(Some(o)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_err("get object", e)),
        }
    }

    /// PutObject of a small object under a precondition, without the check
    /// of conditional requests.
    async fn put_object_unguarded(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<(), StoreError> {
        let mut req = self
            .client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type("application/json")
            .body(ByteStream::from(body));
        let if_match = matches!(condition, Condition::IfMatch(_));
        req = match condition {
            Condition::None => req,
            Condition::IfNoneMatch => req.if_none_match("*"),
            Condition::IfMatch(ETag(etag)) => req.if_match(etag),
        };
        match req.send().await {
            Ok(_) => Ok(()),
            // AWS S3 answers 404 to If-Match on an absent key.
            Err(e) if if_match && status(&e) == Some(404) => Err(StoreError::PreconditionFailed),
            Err(e) => Err(map_err("put object", e)),
        }
    }

    /// DeleteObject with `If-Match`, as the store handles it.
    async fn delete_object_if(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        // AWS S3 answers 412 when the tag differs and 404 when the key is
        // absent; either way nothing was deleted.
        match self
            .client()
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .if_match(&etag.0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(StoreError::PreconditionFailed),
            Err(e) => Err(map_err("delete object", e)),
        }
    }

    /// DeleteObject of the full key `full`; an absent key is not an error.
    async fn delete_unconditional(&self, full: &str) -> Result<(), StoreError> {
        match self
            .client()
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_err("delete object", e)),
        }
    }

    /// Whether a listed object is a deletion marker, which listings leave
    /// out. Only an object of a marker's size can be one; a HEAD tells.
    async fn is_marker(&self, listed: &Listed) -> Result<bool, StoreError> {
        Ok(listed.size == markers::MARKER_LEN
            && matches!(
                self.at_key(&self.key(&listed.key)).await?,
                markers::AtKey::Marker(..)
            ))
    }

    /// Every key under `prefix` but the reserved ones, markers included.
    async fn list_raw(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut pages = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.key(prefix))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err("list objects", e))?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| self.unprefix(k)) else {
                    continue;
                };
                if key.starts_with(keys::RESERVED_PREFIX) {
                    continue;
                }
                out.push(listed(key, obj));
            }
        }
        // S3 lists in UTF-8 binary order; sorted here as well, so every
        // backend answers in one order whatever the server does.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// A listed object as the store reports it.
fn listed(key: &str, obj: &aws_sdk_s3::types::Object) -> Listed {
    Listed {
        key: key.to_string(),
        size: obj.size().unwrap_or(0).max(0) as u64,
        modified: obj.last_modified().map_or(0, |t| t.secs().max(0) as u64),
        etag: obj.e_tag().map(|t| ETag(t.to_string())),
    }
}

/// The largest streamed upload sent as one PutObject (S3's limit is 5 GiB).
const MAX_SINGLE_PUT: u64 = 5 << 30;

/// The body of a single-request streamed upload: passes chunks on, keeping
/// the latest one back until `End` arrives; fails (so the request fails and
/// nothing is stored) when the channel closes without `End` or the byte
/// count differs from the announced size.
struct HeldBackBody {
    chunks: tokio::sync::mpsc::Receiver<UploadChunk>,
    held: Option<Bytes>,
    remaining: u64,
    finished: bool,
}

impl HeldBackBody {
    fn new(chunks: tokio::sync::mpsc::Receiver<UploadChunk>, size: u64) -> Self {
        HeldBackBody {
            chunks,
            held: None,
            remaining: size,
            finished: false,
        }
    }

    fn fail(&mut self, why: &str) -> std::io::Error {
        self.finished = true;
        self.held = None;
        std::io::Error::other(why.to_string())
    }
}

impl http_body::Body for HeldBackBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            match std::task::ready!(self.chunks.poll_recv(cx)) {
                Some(UploadChunk::Data(b)) if b.is_empty() => {}
                Some(UploadChunk::Data(b)) => {
                    let Some(rest) = self.remaining.checked_sub(b.len() as u64) else {
                        return Poll::Ready(Some(Err(self.fail("more bytes than announced"))));
                    };
                    self.remaining = rest;
                    if let Some(previous) = self.held.replace(b) {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(previous))));
                    }
                }
                Some(UploadChunk::Size(_)) => {}
                Some(UploadChunk::End) if self.remaining != 0 => {
                    return Poll::Ready(Some(Err(self.fail("fewer bytes than announced"))));
                }
                Some(UploadChunk::End) => {
                    self.finished = true;
                    if let Some(last) = self.held.take() {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(last))));
                    }
                }
                None => return Poll::Ready(Some(Err(self.fail("upload aborted")))),
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held = self.held.as_ref().map_or(0, |b| b.len() as u64);
        http_body::SizeHint::with_exact(self.remaining + held)
    }
}

/// Size of the parts of a streamed upload (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;

/// Parts of one streamed upload sent while the next one fills. A streamed
/// upload holds at most `(PARTS_IN_FLIGHT + 1) * PART_SIZE` bytes.
pub const PARTS_IN_FLIGHT: usize = 1;

impl S3Store {
    /// Uploads the parts of a multipart upload as chunks arrive; returns the
    /// completed parts once `End` arrives, or an error if the stream stops.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Option<UploadChunk>,
        chunks: &mut tokio::sync::mpsc::Receiver<UploadChunk>,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        // Parts upload while the next one fills, at most PARTS_IN_FLIGHT at a
        // time, so the producer (a download) is not held up by each round trip.
        let mut in_flight = FuturesUnordered::new();
        let mut parts = Vec::new();
        let mut buf = bytes::BytesMut::with_capacity(PART_SIZE);
        let mut next_number = 1;
        let mut end = false;
        match first {
            Some(UploadChunk::Data(b)) => buf.extend_from_slice(&b),
            Some(UploadChunk::End) => end = true,
            Some(UploadChunk::Size(_)) | None => {}
        }
        loop {
            // Cut full parts (and the last one) from the buffer.
            while in_flight.len() < PARTS_IN_FLIGHT
                && (buf.len() >= PART_SIZE || (end && (!buf.is_empty() || next_number == 1)))
            {
                let take = buf.len().min(PART_SIZE);
                let body = buf.split_to(take).freeze();
                let number = next_number;
                next_number += 1;
                in_flight.push(async move {
                    let out = self
                        .client()
                        .await
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body))
                        .customize()
                        // A part in memory would otherwise be hashed for the
                        // signature here and again by the server; streamed
                        // uploads (put_file) are sent this way already. The
                        // zip's SHA-256 is recorded from the download and
                        // verified by every node before it installs anything.
                        .disable_payload_signing()
                        .send()
                        .await
                        .map_err(|e| map_err("upload part", e))?;
                    Ok::<_, StoreError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .build(),
                    )
                });
            }
            if end && buf.is_empty() && in_flight.is_empty() {
                parts.sort_by_key(|p: &CompletedPart| p.part_number());
                return Ok(parts);
            }
            let can_receive = !end && buf.len() < PART_SIZE;
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => parts.push(done?),
                chunk = chunks.recv(), if can_receive => match chunk {
                    Some(UploadChunk::Data(b)) => buf.extend_from_slice(&b),
                    Some(UploadChunk::Size(_)) => {}
                    Some(UploadChunk::End) => end = true,
                    None => return Err(StoreError::Other("upload aborted".into())),
                },
            }
        }
    }
}

/// The HTTP status of a failed call, when the server answered.
fn status<E, R: HasStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HasStatus::status_code)
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Maps an SDK failure: 412 and 409 to a failed precondition, no answer or 5xx to
/// unavailable, anything else to an error naming the server's code.
fn map_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    op: &str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    match status(&e) {
        Some(412) | Some(409) => StoreError::PreconditionFailed,
        Some(s) if s >= 500 => StoreError::Unavailable(format!("{op}: server answered {s}")),
        Some(s) => {
            let code = e.code().unwrap_or("unknown").to_string();
            let msg = e.message().unwrap_or_default().to_string();
            StoreError::Other(format!("{op}: {s} {code} {msg}").trim_end().to_string())
        }
        None => StoreError::Unavailable(format!("{op}: {}", error_chain(&e))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl Store for S3Store {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        match self.client().await.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(match status(&e) {
                Some(404) => StoreError::Other(format!("bucket {} does not exist", self.bucket)),
                Some(301) => StoreError::Other(format!(
                    "bucket {} is in another region: set AWS_REGION to the bucket's region",
                    self.bucket
                )),
                Some(400) | Some(401) | Some(403) => StoreError::Other(format!(
                    "access to bucket {} denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy",
                    self.bucket
                )),
                _ => map_err("head bucket", e),
            }),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let Some(out) = self.get_object(key).await? else {
            return Ok(None);
        };
        let etag = ETag(out.e_tag().unwrap_or_default().to_string());
        let announced = out.content_length().unwrap_or(0).max(0) as u64;
        check_small(key, announced)?;
        // Counted as it arrives too, in case the length was not announced.
        let mut body = bytes::BytesMut::with_capacity(announced as usize);
        let mut stream = out.body;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| StoreError::Unavailable(format!("get object body: {e}")))?
        {
            check_small(key, (body.len() + chunk.len()) as u64)?;
            body.extend_from_slice(&chunk);
        }
        Ok(Some(Object {
            body: body.freeze(),
            etag,
        }))
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<(), StoreError> {
        check_small(key, body.len() as u64)?;
        if condition != Condition::None {
            // A store that ignores conditions is refused before its first
            // conditional write (the record is read once per process).
            self.safe_conditions().await?;
        }
        let create = condition == Condition::IfNoneMatch;
        match self
            .put_object_unguarded(key, body.clone(), condition)
            .await
        {
            // What is there may be a deletion marker: absent to readers.
            Err(StoreError::PreconditionFailed) if create => {
                self.create_over_marker(key, |marker| {
                    let condition = match marker {
                        Some(etag) => Condition::IfMatch(ETag(etag)),
                        None => Condition::IfNoneMatch,
                    };
                    self.put_object_unguarded(key, body.clone(), condition)
                })
                .await
            }
            other => other,
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StoreError::Other(format!("read {}: {e}", path.display())))?;
        self.client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .content_type("application/zip")
            .body(body)
            .send()
            .await
            .map_err(|e| map_err("put object", e))?;
        Ok(())
    }

    async fn put_stream(
        &self,
        key: &str,
        mut chunks: tokio::sync::mpsc::Receiver<UploadChunk>,
    ) -> Result<(), StoreError> {
        let full_key = self.key(key);
        // With a known size, one PutObject: no parts to buffer and no
        // server-side assembly. Its last bytes are held back until `End`, so
        // an upload that must not commit never completes (S3 stores nothing
        // from a PutObject whose body stops short).
        let first = match chunks.recv().await {
            Some(UploadChunk::Size(n)) if n <= MAX_SINGLE_PUT => {
                self.client()
                    .await
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full_key)
                    .content_type("application/zip")
                    .content_length(n as i64)
                    .body(ByteStream::from_body_1_x(HeldBackBody::new(chunks, n)))
                    .send()
                    .await
                    .map_err(|e| map_err("put object", e))?;
                return Ok(());
            }
            Some(UploadChunk::Size(_)) => None,
            Some(other) => Some(other),
            None => return Err(StoreError::Other("upload aborted".into())),
        };
        let created = self
            .client()
            .await
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full_key)
            .content_type("application/zip")
            .send()
            .await
            .map_err(|e| map_err("create multipart upload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Other("no upload id".into()))?
            .to_string();
        let result = self
            .upload_parts(&full_key, &upload_id, first, &mut chunks)
            .await;
        match result {
            Ok(parts) => {
                let done = CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build();
                self.client()
                    .await
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full_key)
                    .upload_id(&upload_id)
                    .multipart_upload(done)
                    .send()
                    .await
                    .map_err(|e| map_err("complete multipart upload", e))?;
                Ok(())
            }
            Err(e) => {
                let _ = self
                    .client()
                    .await
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full_key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(e)
            }
        }
    }

    async fn get_to_file(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        let Some(out) = self.get_object(key).await? else {
            return Ok(false);
        };
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| StoreError::Other(format!("create {}: {e}", dest.display())))?;
        let mut body = out.body;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StoreError::Unavailable(format!("get object body: {e}")))?
        {
            file.write_all(&chunk)
                .await
                .map_err(|e| StoreError::Other(format!("write {}: {e}", dest.display())))?;
        }
        file.flush()
            .await
            .map_err(|e| StoreError::Other(format!("write {}: {e}", dest.display())))?;
        Ok(true)
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(matches!(
            self.at_key(&self.key(key)).await?,
            markers::AtKey::Object
        ))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.delete_unconditional(&self.key(key)).await
    }

    async fn delete_if(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        if self.safe_conditions().await?.delete_if_match {
            self.delete_object_if(key, etag).await
        } else {
            self.delete_by_marker(key, &etag.0).await
        }
    }

    async fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        // The whole bucket's uploads, filtered here: MinIO takes the prefix
        // of ListMultipartUploads for a whole key and lists nothing under a
        // key prefix (AWS S3 filters by it).
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        let mut out = Vec::new();
        loop {
            let page = self
                .client()
                .await
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| map_err("list multipart uploads", e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let Some(short) = self.unprefix(key) else {
                    continue;
                };
                out.push(Unfinished {
                    name: format!("{short} (upload {id})"),
                    since: upload.initiated().map_or(0, |t| t.secs().max(0) as u64),
                    in_use: false,
                    handle: (key.to_string(), id.to_string()),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        if !self.safe_conditions().await?.delete_if_match {
            out.extend(self.unfinished_markers().await?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn abort_unfinished(&self, upload: &Unfinished) -> Result<(), StoreError> {
        if let Some(done) = self.abort_marker(upload).await {
            return done;
        }
        let (key, id) = &upload.handle;
        match self
            .client()
            .await
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_err("abort multipart upload", e)),
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Page, StoreError> {
        let max = max.clamp(1, 1000);
        let mut req = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.key(prefix))
            .max_keys(max as i32);
        if let Some(after) = after {
            req = req.start_after(self.key(after));
        }
        let page = req.send().await.map_err(|e| map_err("list objects", e))?;
        let mut items = Vec::new();
        for obj in page.contents() {
            let Some(key) = obj.key().and_then(|k| self.unprefix(k)) else {
                continue;
            };
            if key.starts_with(keys::RESERVED_PREFIX) {
                continue;
            }
            let listed = listed(key, obj);
            if !self.is_marker(&listed).await? {
                items.push(listed);
            }
        }
        items.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Page {
            items,
            more: page.is_truncated().unwrap_or(false),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        for listed in self.list_raw(prefix).await? {
            if !self.is_marker(&listed).await? {
                out.push(listed);
            }
        }
        Ok(out)
    }
}
