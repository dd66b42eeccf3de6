//! Storage: the one narrow [`Store`] trait the registry and the nodes use, the
//! key layout of the bucket (documented in `docs/storage.md`), and the store
//! URL that picks a backend.
//!
//! Backends: [`local::LocalStore`] (a directory) and [`s3::S3Store`] (AWS S3,
//! MinIO or any S3-compatible server). Both pass the same conformance tests.

pub mod local;
pub mod s3;

use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::package::PluginType;

/// An object's entity tag, as the backend reports it (opaque).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(pub String);

/// A small object read whole, with its entity tag.
#[derive(Debug, Clone)]
pub struct Object {
    /// The object's bytes.
    pub body: Bytes,
    /// Its entity tag, for a later [`Condition::IfMatch`].
    pub etag: ETag,
}

/// A key returned by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The full key (without the store's own prefix).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, seconds since the Unix epoch.
    pub modified: u64,
    /// The entity tag, when the backend's listing carries it (S3 does; the
    /// local store does not, as its tags are content hashes).
    pub etag: Option<ETag>,
}

/// One page of a listing ([`Store::list_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Keys in lexicographic order, at most the page size.
    pub items: Vec<Listed>,
    /// Whether more keys follow the last one.
    pub more: bool,
}

/// A piece of a streamed upload ([`Store::put_stream`]).
#[derive(Debug, Clone)]
pub enum UploadChunk {
    /// The exact number of bytes that will follow, when the source announced
    /// it; sent before any data. A backend may then upload in one request.
    Size(u64),
    /// More bytes.
    Data(Bytes),
    /// Everything was sent and may be committed.
    End,
}

/// An upload that was started and never completed nor aborted, left by a
/// process that died part-way: a partial object in the local store's
/// temporary folder, an incomplete multipart upload on S3, or a deletion
/// marker of an S3 store without conditional deletes (`store::s3::markers`).
/// Listings of keys never show one; [`Store::unfinished`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// What it is, for reports: `.tmp/obj-...` (local), `{key} (upload {id})`
    /// or `{key} (deletion marker)` (S3).
    pub name: String,
    /// When it was last written (local) or started (S3), seconds since the Unix epoch.
    pub since: u64,
    /// Known to be in progress in a live process on this machine (a local
    /// temporary file whose lock is held); `gc` leaves such an upload alone.
    pub in_use: bool,
    /// The backend's handle: the temporary file's name, or key and upload id.
    pub(crate) handle: (String, String),
}

/// The precondition of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Write whatever is there.
    None,
    /// Create only: fail with [`StoreError::PreconditionFailed`] when the key exists.
    IfNoneMatch,
    /// Compare and swap: fail unless the key exists with this entity tag.
    IfMatch(ETag),
}

/// The largest object [`Store::get`] reads and [`Store::put`] writes whole:
/// metadata, function-name claims and name indexes (the index of 10,000
/// plugins is about 150 kB, so this allows about a million). Zips go through
/// the streaming calls, which have no such cap. A bigger object is refused
/// rather than read into memory.
pub const MAX_SMALL_OBJECT_BYTES: u64 = 16 * 1024 * 1024;

/// Refuses an object of `size` bytes at `key` that is over
/// [`MAX_SMALL_OBJECT_BYTES`], with an error naming both.
pub fn check_small(key: &str, size: u64) -> Result<(), StoreError> {
    if size > MAX_SMALL_OBJECT_BYTES {
        return Err(StoreError::Other(format!(
            "object {key} is {size} bytes; objects read or written whole are at most {MAX_SMALL_OBJECT_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write's [`Condition`] did not hold.
    #[error("precondition failed")]
    PreconditionFailed,
    /// The backend could not be reached or answered with a server error; retrying may help.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else (access denied, misconfiguration, local I/O error).
    #[error("storage error: {0}")]
    Other(String),
}

/// The storage operations the registry and the nodes need, and nothing more.
///
/// Keys are `/`-separated relative paths built by [`keys`]. Implementations
/// must make conditional writes atomic: of two concurrent create-only writes to
/// one key, exactly one succeeds.
pub trait Store: Send + Sync + 'static {
    /// A human-readable location, e.g. `s3://bucket/prefix` or `/var/lib/kuiper`.
    fn location(&self) -> String;

    /// Checks that the store is usable (exists, reachable, writable).
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads a small object whole; `None` when absent. An object over
    /// [`MAX_SMALL_OBJECT_BYTES`] is an error (see [`check_small`]).
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Object>, StoreError>> + Send;

    /// Writes a small object under a precondition; a body over
    /// [`MAX_SMALL_OBJECT_BYTES`] is refused and nothing is written.
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Uploads a (possibly large) file, streaming it; unconditional.
    fn put_file(
        &self,
        key: &str,
        path: &Path,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Uploads what arrives on `chunks` to `key`, holding a bounded amount in
    /// memory (on S3: one PutObject whose last bytes are held back until
    /// `End` when a [`UploadChunk::Size`] came first, a multipart upload
    /// otherwise). The upload completes only when
    /// [`UploadChunk::End`] arrives; if the channel closes before that, it is
    /// aborted and nothing is stored.
    fn put_stream(
        &self,
        key: &str,
        chunks: tokio::sync::mpsc::Receiver<UploadChunk>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Downloads an object into `dest` (created or truncated), streaming it.
    /// Returns `false` when the key is absent.
    fn get_to_file(
        &self,
        key: &str,
        dest: &Path,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether the key exists.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes a key; deleting an absent key succeeds.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a key only if it exists with entity tag `etag`, atomically:
    /// fails with [`StoreError::PreconditionFailed`] when it is absent or has
    /// another tag (then nothing is deleted). Of concurrent conditional
    /// deletes of one version, exactly one succeeds. (An S3 store whose
    /// server ignores `If-Match` on DeleteObject does it with a deletion
    /// marker, see [`s3::markers`].)
    fn delete_if(
        &self,
        key: &str,
        etag: &ETag,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Uploads started and never completed nor aborted (see [`Unfinished`]).
    fn unfinished(&self) -> impl Future<Output = Result<Vec<Unfinished>, StoreError>> + Send;

    /// Aborts an unfinished upload, removing what it stored; one already
    /// gone is not an error.
    fn abort_unfinished(
        &self,
        upload: &Unfinished,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the backend's own temporary files on this machine that were
    /// last written more than `older_than` ago and are not in use (a service calls it as it
    /// starts), returning their names. Backends without any (S3) do nothing.
    fn remove_stale_temp_files(&self, older_than: std::time::Duration) -> Vec<String> {
        let _ = older_than;
        Vec::new()
    }

    /// Every key under `prefix` (which ends in `/`), in lexicographic order.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<Listed>, StoreError>> + Send;

    /// At most `max` (1 to 1,000) keys that start with `prefix` (a folder
    /// ending in `/`, or one whole key, to list only it) and sort after
    /// `after` (from the start when `None`), in lexicographic order: one
    /// request on S3. A backend without paged listings lists everything and
    /// cuts the page out.
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send {
        async move {
            let max = max.clamp(1, 1000);
            let mut items: Vec<Listed> = self
                .list(prefix)
                .await?
                .into_iter()
                .filter(|l| after.is_none_or(|a| l.key.as_str() > a))
                .collect();
            let more = items.len() > max;
            items.truncate(max);
            Ok(Page { items, more })
        }
    }

    /// Only the keys under `prefix`, sorted: what listing plugin names needs,
    /// which a backend may produce more cheaply than [`Store::list`].
    fn list_keys(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        async move {
            Ok(self
                .list(prefix)
                .await?
                .into_iter()
                .map(|l| l.key)
                .collect())
        }
    }
}

/// The bucket layout. `docs/storage.md` describes it for operators and nodes.
pub mod keys {
    use super::PluginType;

    /// Prefix of all plugin metadata objects of one type: `plugins/{type}/`.
    pub fn plugins_prefix(ty: PluginType) -> String {
        format!("plugins/{}/", ty.as_str())
    }

    /// A plugin's metadata, the commit point of a create: `plugins/{type}/{name}.json`.
    pub fn plugin(ty: PluginType, name: &str) -> String {
        format!("plugins/{}/{name}.json", ty.as_str())
    }

    /// The name in a metadata key listed under [`plugins_prefix`].
    pub fn plugin_name(ty: PluginType, key: &str) -> Option<&str> {
        key.strip_prefix("plugins/")?
            .strip_prefix(ty.as_str())?
            .strip_prefix('/')?
            .strip_suffix(".json")
            .filter(|n| !n.contains('/'))
    }

    /// The name index of a type (`index/{type}.json`), kept by the registry
    /// so that listing names is one read (see `registry::index`).
    pub fn name_index(ty: PluginType) -> String {
        format!("index/{}.json", ty.as_str())
    }

    /// Prefix of all stored zips: `blobs/`.
    pub const BLOBS_PREFIX: &str = "blobs/";

    /// A zip, named by the id of the upload that stored it: `blobs/{id}.zip`.
    /// Its SHA-256 is in the metadata that points at it. (Stores written by
    /// earlier versions hold content-addressed `blobs/sha256/{hex}.zip`, which
    /// stay valid: readers follow the metadata's `blob` field.)
    pub fn blob(id: &str) -> String {
        format!("{BLOBS_PREFIX}{id}.zip")
    }

    /// Whether `key` is a zip key a metadata object may point at: under
    /// `blobs/`, ending in `.zip`, made of `[A-Za-z0-9._-]` segments with no
    /// `.` or `..` segment. Readers check this before following a `blob` field.
    pub fn is_blob_key(key: &str) -> bool {
        let Some(rest) = key.strip_prefix(BLOBS_PREFIX) else {
            return false;
        };
        rest.ends_with(".zip")
            && rest.len() <= 512
            && rest.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            })
    }

    /// Prefix of the function-name claims: `udfs/`.
    pub const UDFS_PREFIX: &str = "udfs/";

    /// The claim that makes a function name unique without regard to case:
    /// `udfs/{function in lower case}.json` (names are ASCII). Stores written
    /// by earlier versions may also hold claims under the name as spelt.
    pub fn udf(function: &str) -> String {
        format!("{UDFS_PREFIX}{}.json", function.to_ascii_lowercase())
    }

    /// Prefix of the stored eKuiper build fingerprints: `fingerprints/`.
    pub const FINGERPRINTS_PREFIX: &str = "fingerprints/";

    /// A stored eKuiper build fingerprint: `fingerprints/{name}.json`.
    pub fn fingerprint(name: &str) -> String {
        format!("{FINGERPRINTS_PREFIX}{name}.json")
    }

    /// Prefix of the node reports: `nodes/`. A node writes only its own
    /// report there; the service only reads them.
    pub const NODES_PREFIX: &str = "nodes/";

    /// The report of one node: `nodes/{node-id}.json`.
    pub fn node_report(id: &str) -> String {
        format!("{NODES_PREFIX}{id}.json")
    }

    /// The node id in a key listed under [`NODES_PREFIX`].
    pub fn node_id(key: &str) -> Option<&str> {
        key.strip_prefix(NODES_PREFIX)?
            .strip_suffix(".json")
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }

    /// Prefix of the store's own objects (`.kuiper/`), never listed: the
    /// record of the store check and its probes. No plugin key starts with `.`.
    pub const RESERVED_PREFIX: &str = ".kuiper/";

    /// The record of the check of a store's conditional requests
    /// (`.kuiper/store-check.json`, see `store::s3::conditions`).
    pub const STORE_CHECK: &str = ".kuiper/store-check.json";

    /// Prefix where earlier versions staged zips while checking them
    /// (`uploads/{id}.zip`); `gc` still clears what they left behind.
    pub const UPLOADS_PREFIX: &str = "uploads/";
}

/// Where the store is, as given by `KUIPER_STORE` or `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `s3://BUCKET[/PREFIX]`
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// `file:///abs/path` or a plain path.
    Local(PathBuf),
}

impl StoreUrl {
    /// Parses `s3://bucket[/prefix]`, `file:///abs/path` or a plain path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "invalid store {s:?}: the bucket name is missing (s3://BUCKET[/PREFIX])"
                ));
            }
            let prefix = prefix.trim_matches('/').to_string();
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if s.starts_with("file://") {
            let url = url::Url::parse(s).map_err(|e| format!("invalid store {s:?}: {e}"))?;
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(format!(
                    "invalid store {s:?}: file URLs must not name a host (file:///abs/path)"
                ));
            }
            let path = url
                .to_file_path()
                .map_err(|_| format!("invalid store {s:?}: not an absolute file path"))?;
            return Ok(StoreUrl::Local(path));
        }
        if s.contains("://") {
            return Err(format!("invalid store {s:?}: use s3://BUCKET[/PREFIX], file:///abs/path or a directory path"));
        }
        if s.is_empty() {
            return Err("invalid store \"\": give s3://BUCKET[/PREFIX] or a directory".into());
        }
        Ok(StoreUrl::Local(PathBuf::from(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("s3://b/p/q/").unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://b").unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            StoreUrl::parse("file:///tmp/x").unwrap(),
            StoreUrl::Local("/tmp/x".into())
        );
        assert_eq!(
            StoreUrl::parse("./data").unwrap(),
            StoreUrl::Local("./data".into())
        );
        assert!(StoreUrl::parse("s3://").is_err());
        assert!(StoreUrl::parse("gs://x").is_err());
        assert!(StoreUrl::parse("file://host/x").is_err());
    }

    #[test]
    fn plugin_keys_round_trip() {
        let k = keys::plugin(PluginType::Sink, "file2");
        assert_eq!(k, "plugins/sinks/file2.json");
        assert_eq!(keys::plugin_name(PluginType::Sink, &k), Some("file2"));
        assert_eq!(keys::plugin_name(PluginType::Source, &k), None);
    }
}
