//! Deletion markers: conditional deletes on a store that ignores `If-Match`
//! on DeleteObject (MinIO), found by the check of [`super::conditions`].
//!
//! Such a delete first overwrites the object with a marker by a PutObject
//! with `If-Match: <etag>`, which these stores do honour: of concurrent
//! deletes of one version exactly one wins, and a version written since is
//! never replaced. It then deletes the key unconditionally; nothing can have
//! been written there in between, as creates (`If-None-Match: *`) and
//! updates (`If-Match` with an earlier tag) fail on the marker. Every read
//! (get, exists, list, downloads) takes a marker for an absent key. A marker
//! left by a process that died between its two requests is replaced by the
//! next create of the key once it is [`MARKER_STALE`] old (a younger one is
//! waited for, briefly), and removed by `plugin-api gc` as an unfinished
//! write.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{map_err, status, S3Store};
use crate::store::{StoreError, Unfinished};

/// The user metadata (`x-amz-meta-kuiper-deletion-marker`) that makes an object a marker.
pub const MARKER_META: &str = "kuiper-deletion-marker";

const MARKER_TEXT: &str = "kuiper-registry deletion marker ";

/// Size of every marker: a listed object of another size is not one.
pub const MARKER_LEN: u64 = (MARKER_TEXT.len() + 32 + 1) as u64;

/// Age after which a marker belongs to a delete that died between its two
/// requests (seconds apart at most when alive), and a create may replace
/// it. Above the 15 minutes of clock skew S3 signatures tolerate.
pub const MARKER_STALE: Duration = Duration::from_secs(20 * 60);

/// How long a create waits for a younger marker to be removed by its delete.
const MARKER_WAIT: Duration = Duration::from_secs(2);

/// Prefix of the upload-id part of an unfinished marker's handle.
const MARKER_HANDLE: &str = "deletion-marker ";

/// A fresh marker's body: unique, so that two markers of one key have two tags.
fn marker_body() -> Bytes {
    Bytes::from(format!("{MARKER_TEXT}{}\n", uuid::Uuid::new_v4().simple()))
}

/// Whether user metadata marks a deletion marker.
pub(super) fn is_marker(metadata: Option<&std::collections::HashMap<String, String>>) -> bool {
    metadata.is_some_and(|m| m.contains_key(MARKER_META))
}

/// What is at a key, as a HEAD request sees it.
pub(super) enum AtKey {
    /// Nothing.
    Absent,
    /// An object that is not a marker.
    Object,
    /// A marker with this tag, last written this long ago.
    Marker(String, Duration),
}

impl S3Store {
    /// HEAD of the full key `full`.
    pub(super) async fn at_key(&self, full: &str) -> Result<AtKey, StoreError> {
        match self
            .client()
            .await
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(out) if is_marker(out.metadata()) => {
                let modified = out.last_modified().map_or(0, |t| t.secs().max(0) as u64);
                let age = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .saturating_sub(Duration::from_secs(modified));
                Ok(AtKey::Marker(
                    out.e_tag().unwrap_or_default().to_string(),
                    age,
                ))
            }
            Ok(_) => Ok(AtKey::Object),
            Err(e) if status(&e) == Some(404) => Ok(AtKey::Absent),
            Err(e) => Err(map_err("head object", e)),
        }
    }

    /// Writes a fresh marker at the full key `full` if the object there has tag `etag`.
    async fn put_marker(&self, full: &str, etag: &str) -> Result<(), StoreError> {
        match self
            .client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_type("text/plain")
            .metadata(MARKER_META, "1")
            .if_match(etag)
            .body(ByteStream::from(marker_body()))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // AWS S3 answers 404 to If-Match on an absent key.
            Err(e) if status(&e) == Some(404) => Err(StoreError::PreconditionFailed),
            Err(e) => Err(map_err("put deletion marker", e)),
        }
    }

    /// A conditional delete by marker (see the module docs).
    pub(super) async fn delete_by_marker(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        let full = self.key(key);
        self.put_marker(&full, etag).await?;
        // The delete is done: readers see the key as absent. Removing the
        // marker only tidies (and lets creates write at once).
        let mut last = None;
        for _ in 0..3 {
            match self.delete_unconditional(&full).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(e) = last {
            tracing::warn!(key = full, error = %e, "deletion marker left in place; a later create or gc replaces it");
        }
        Ok(())
    }

    /// A create-only write refused by the store: succeeds if what is there
    /// is a marker that was stale or became absent, by writing again
    /// (create-only, or over the stale marker's tag). Waits up to
    /// [`MARKER_WAIT`] for a younger marker to go.
    pub(super) async fn create_over_marker<F, Fut>(
        &self,
        key: &str,
        mut write: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let full = self.key(key);
        let deadline = tokio::time::Instant::now() + MARKER_WAIT;
        loop {
            let retry = match self.at_key(&full).await? {
                AtKey::Object => return Err(StoreError::PreconditionFailed),
                AtKey::Absent => write(None).await,
                AtKey::Marker(etag, age) if age >= MARKER_STALE => write(Some(etag)).await,
                AtKey::Marker(..) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    Err(StoreError::PreconditionFailed)
                }
                AtKey::Marker(..) => return Err(StoreError::PreconditionFailed),
            };
            match retry {
                Err(StoreError::PreconditionFailed) if tokio::time::Instant::now() < deadline => {}
                other => return other,
            }
        }
    }

    /// Markers under the store's prefix, as unfinished writes.
    pub(super) async fn unfinished_markers(&self) -> Result<Vec<Unfinished>, StoreError> {
        let mut out = Vec::new();
        for listed in self.list_raw("").await? {
            if listed.size != MARKER_LEN {
                continue;
            }
            let full = self.key(&listed.key);
            if let AtKey::Marker(etag, _) = self.at_key(&full).await? {
                out.push(Unfinished {
                    name: format!("{} (deletion marker)", listed.key),
                    since: listed.modified,
                    in_use: false,
                    handle: (full, format!("{MARKER_HANDLE}{etag}")),
                });
            }
        }
        Ok(out)
    }

    /// Removes an unfinished marker, if it is still the one listed, by the
    /// same two steps as a delete: a create that replaced it meanwhile stays.
    /// `None` when the handle is not a marker's.
    pub(super) async fn abort_marker(&self, upload: &Unfinished) -> Option<Result<(), StoreError>> {
        let (full, id) = &upload.handle;
        let etag = id.strip_prefix(MARKER_HANDLE)?;
        Some(match self.put_marker(full, etag).await {
            Ok(()) => self.delete_unconditional(full).await,
            Err(StoreError::PreconditionFailed) => Ok(()),
            Err(e) => Err(e),
        })
    }
}
