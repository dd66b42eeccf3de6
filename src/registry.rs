//! The registry: create, list, describe, update, delete plugins and manage
//! function names, over any [`Store`].
//!
//! The commit protocol: a zip is downloaded, checked, and stored under a fresh
//! key (`blobs/{id}.zip`, its SHA-256 recorded in the metadata) first; function names are claimed with
//! create-only writes (`udfs/{fn}.json`); the plugin's metadata
//! (`plugins/{type}/{name}.json`) is written last, create-only for a create and
//! compare-and-swap for an update. Until the metadata is written nothing is
//! visible, so a failure at any step leaves the old state. Zips are never
//! deleted by requests (metadata may point at them); `gc` removes zips nothing
//! points at.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::fetch::{FetchError, Fetcher, Tee};
use crate::package::{self, NameError, PackageError, PackageFile, PluginType, ZipLimits};
use crate::store::{keys, Condition, Object, Store, StoreError, UploadChunk};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::io::{StreamReader, SyncIoBridge};

/// Blocks of a download (8 MiB) queued for the scan of its entries. When
/// the scan falls further behind (inflating is slower than a download on
/// loopback), the download waits for it: that work has to be done before the
/// checks either way. 1 MiB made creates of deflated zips about 10% slower.
const SCAN_QUEUE: usize = 32;

pub mod index;
pub use index::Names;

/// A plugin's metadata as stored in `plugins/{type}/{name}.json` and shown by describe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginMeta {
    /// Plugin name.
    pub name: String,
    /// Version from the library's file name (`""` when none).
    pub version: String,
    /// Plugin type.
    #[serde(rename = "type")]
    pub plugin_type: PluginType,
    /// Identity of this plugin instance; a re-created plugin gets a new one.
    pub id: String,
    /// Hex SHA-256 of the zip.
    pub sha256: String,
    /// Size of the zip in bytes.
    pub size: u64,
    /// Architecture of the library (`x86_64`, `aarch64`, ...).
    pub arch: String,
    /// The library's entry in the zip, e.g. `Random@v1.0.0.so`.
    pub so_file: String,
    /// Store key of the zip.
    pub blob: String,
    /// Where the zip was downloaded from (query string and credentials removed).
    pub source: String,
    /// When the plugin was created (RFC 3339).
    pub created: String,
    /// When it was last updated (RFC 3339).
    pub updated: String,
    /// Function names it provides (function plugins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<String>>,
    /// Parameters for `install.sh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell_paras: Vec<String>,
    /// Every file of the zip, as validated.
    pub files: Vec<PackageFile>,
}

/// The body of a create or update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginRequest {
    /// Plugin name (for an update: empty or the path's name).
    #[serde(default)]
    pub name: String,
    /// URL of the zip.
    #[serde(default)]
    pub file: String,
    /// URL to `GET` once the action succeeded.
    #[serde(default)]
    pub callback: Option<String>,
    /// Function names (function plugins).
    #[serde(default)]
    pub functions: Option<Vec<String>>,
    /// Parameters for `install.sh`.
    #[serde(default)]
    pub shell_paras: Vec<String>,
}

/// What [`Registry::gc`] found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Zips some metadata points at.
    pub blobs_referenced: usize,
    /// Unreferenced zips removed (or that would be, with `dry_run`).
    pub blobs_removed: Vec<String>,
    /// Unreferenced zips kept because they are younger than the minimum age.
    pub blobs_too_young: Vec<String>,
    /// Staging uploads left by interrupted requests, removed.
    pub uploads_removed: Vec<String>,
    /// Stale function-name claims removed.
    pub claims_removed: Vec<String>,
    /// Nothing was deleted.
    pub dry_run: bool,
}

/// Which plugin owns a function name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UdfOwner {
    /// The function name.
    pub name: String,
    /// The function plugin that provides it.
    pub plugin: String,
}

/// A domain failure. `Display` is the message after the operation's prefix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A malformed plugin or function name.
    #[error("{0}")]
    InvalidName(#[from] NameError),
    /// The `file` URL is not acceptable.
    #[error("invalid uri {uri}: {reason}")]
    InvalidUri {
        /// The URL as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The callback URL is not acceptable.
    #[error("invalid callback uri {uri}: {reason}")]
    InvalidCallback {
        /// The URL as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Other invalid input.
    #[error("{0}")]
    InvalidInput(String),
    /// Create of a name that exists.
    #[error("invalid name {0}: duplicate")]
    Duplicate(String),
    /// Delete, update or register of a name that does not exist.
    #[error("invalid name {0}: not exist")]
    NotExist(String),
    /// Describe of something that does not exist.
    #[error("not found")]
    NotFound,
    /// The download failed.
    #[error("fail to download file {uri}: {source}")]
    Download {
        /// The URL.
        uri: String,
        /// Why.
        source: FetchError,
    },
    /// The zip is not a valid plugin package.
    #[error("fail to install plugin: {0}")]
    Package(#[from] PackageError),
    /// A function name is owned by another plugin.
    #[error("function name {name} already exists in plugin {owner}")]
    FunctionExists {
        /// The function name.
        name: String,
        /// Its owner.
        owner: String,
    },
    /// The action succeeded; the callback did not.
    #[error("action succeeded but callback failed: {0}")]
    CallbackFailed(String),
    /// A concurrent request changed the plugin first.
    #[error("plugin {0} was changed by another request at the same time; nothing was changed by this one, retry it")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local failure of the service (temporary files, tasks).
    #[error("internal error: {0}")]
    Internal(String),
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Where downloads are spooled.
    pub tmp_dir: PathBuf,
    /// Zip limits.
    pub zip_limits: ZipLimits,
    /// Whether `file://` URLs may be used at all (local store only).
    pub allow_file_urls: bool,
    /// How long a function-name claim without a committed owner is honoured.
    pub claim_grace: Duration,
    /// Most zips scanned while they download at once. Each scan holds one of
    /// tokio's blocking threads (512 by default) for its whole download, and
    /// spool writes need them too; creates beyond this are checked in full
    /// after their download.
    pub max_scans: usize,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            tmp_dir: std::env::temp_dir(),
            zip_limits: ZipLimits::default(),
            allow_file_urls: false,
            claim_grace: Duration::from_secs(600),
            max_scans: 64,
        }
    }
}

/// The content of a function-name claim `udfs/{fn}.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    plugin: String,
    id: String,
    claimed_at: u64,
}

/// The plugin registry over a store.
#[derive(Debug)]
pub struct Registry<S> {
    store: S,
    fetcher: Fetcher,
    settings: RegistrySettings,
    /// Free scan slots (see [`RegistrySettings::max_scans`]).
    scans: Arc<Semaphore>,
}

/// A checked package, stored and ready to be committed.
struct Staged {
    blob: String,
    sha256: String,
    size: u64,
    info: package::PackageInfo,
    source: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The URL without its query string, fragment and credentials, for display.
fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn parse_callback(fetcher: &Fetcher, cb: Option<&str>) -> Result<Option<Url>> {
    let Some(cb) = cb.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let bad = |reason: &str| RegistryError::InvalidCallback {
        uri: cb.to_string(),
        reason: reason.to_string(),
    };
    let url = Url::parse(cb).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("only http and https URLs with a host are accepted"));
    }
    fetcher.check_destination(&url).map_err(|e| bad(&e))?;
    Ok(Some(url))
}

impl<S: Store> Registry<S> {
    /// A registry over `store`, downloading with `fetcher`.
    pub fn new(store: S, fetcher: Fetcher, settings: RegistrySettings) -> Self {
        Registry {
            store,
            fetcher,
            scans: Arc::new(Semaphore::new(settings.max_scans)),
            settings,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Checks a `file` URL: http(s) with a host, or `file://` where allowed,
    /// whose path ends in `.zip` (a query string may follow).
    pub fn check_file_url(&self, file: &str) -> Result<Url> {
        let bad = |reason: &str| RegistryError::InvalidUri {
            uri: file.to_string(),
            reason: reason.to_string(),
        };
        if file.trim().is_empty() {
            return Err(bad(
                "the file URL is empty; give the http(s) URL of the plugin zip",
            ));
        }
        let url = Url::parse(file)
            .map_err(|e| bad(&format!("{e}; give the http(s) URL of the plugin zip")))?;
        match url.scheme() {
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(bad("the URL has no host"));
                }
            }
            "file" => {
                if !self.settings.allow_file_urls || self.fetcher.settings().uploads_dir.is_none() {
                    return Err(bad(
                        "file:// URLs are only accepted by a local store with KUIPER_UPLOADS_DIR set; use http or https",
                    ));
                }
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(bad(
                        "file:// URLs must not name a host (file:///abs/path.zip)",
                    ));
                }
            }
            _ => return Err(bad("only http and https URLs are accepted")),
        }
        if !url.path().ends_with(".zip") {
            return Err(bad("the path must end with .zip"));
        }
        Ok(url)
    }

    fn check_functions(functions: &[String]) -> Result<()> {
        let mut seen = BTreeSet::new();
        for f in functions {
            package::validate_name(f)?;
            if !seen.insert(f.as_str()) {
                return Err(RegistryError::InvalidInput(format!(
                    "function name {f} is listed twice"
                )));
            }
        }
        Ok(())
    }

    /// Downloads, checks and stores the zip; nothing is visible yet.
    async fn stage(
        &self,
        ty: PluginType,
        name: &str,
        url: &Url,
        given: &str,
        shell_paras: &[String],
    ) -> Result<Staged> {
        // Download, hash, check and upload overlap: chunks go to the store as
        // they arrive (one upload, straight to the zip's final key), and the
        // upload is completed only once the zip has passed the checks;
        // otherwise it is aborted and nothing is stored. The key is fresh, so
        // nothing points at it until the metadata is written. The entries are
        // decompressed as they arrive too (on a blocking thread), so the
        // checks after the download read little more than the central
        // directory.
        let blob = keys::blob(&uuid::Uuid::new_v4().simple().to_string());
        let (tx, rx) = mpsc::channel::<UploadChunk>(8);
        let (scan_tx, scan) = self.start_scan().unzip();
        let started = std::time::Instant::now();
        let fetch_and_check = async move {
            let tee = Tee {
                upload: Some(&tx),
                scan: scan_tx,
            };
            let download = self
                .fetcher
                .download(url, &self.settings.tmp_dir, tee)
                .await
                .map_err(|source| RegistryError::Download {
                    uri: given.to_string(),
                    source,
                })?;
            let downloaded = started.elapsed();
            let scanned = match scan {
                Some(scan) => scan.await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "the zip scan stopped; the checks read the whole zip");
                    package::Scanned::default()
                }),
                None => package::Scanned::default(),
            };
            let scanned_ms = started.elapsed();
            let info = self
                .check_download(&download, ty, name, shell_paras, scanned)
                .await?;
            tracing::debug!(
                bytes = download.size,
                download_ms = downloaded.as_millis() as u64,
                scanned_ms = scanned_ms.as_millis() as u64,
                checked_ms = started.elapsed().as_millis() as u64,
                "zip downloaded and checked"
            );
            tx.send(UploadChunk::End)
                .await
                .map_err(|_| RegistryError::Internal("the upload stopped".into()))?;
            Ok::<_, RegistryError>((download, info))
        };
        let (checked, uploaded) = tokio::join!(fetch_and_check, self.store.put_stream(&blob, rx));
        let (download, info) = match (checked, uploaded) {
            (Ok(done), Ok(())) => done,
            (Ok(_), Err(store)) => return Err(store.into()),
            (Err(e), Ok(())) => {
                let _ = self.store.delete(&blob).await;
                return Err(e);
            }
            // The upload failing first makes the download stop: report the store.
            (Err(e), Err(store)) => {
                let upload_stopped = matches!(
                    &e,
                    RegistryError::Download {
                        source: FetchError::Local(_),
                        ..
                    }
                ) || matches!(&e, RegistryError::Internal(_));
                return Err(if upload_stopped { store.into() } else { e });
            }
        };
        tracing::debug!(
            key = %blob,
            stored_ms = started.elapsed().as_millis() as u64,
            "zip stored"
        );
        Ok(Staged {
            blob,
            sha256: download.sha256.clone(),
            size: download.size,
            info,
            source: display_url(url),
        })
    }

    /// Starts a scan of a zip's entries as its blocks arrive (see
    /// [`package::scan_entries`]) on a blocking thread, when a scan slot is
    /// free: the sender to feed it and the scan's result.
    fn start_scan(
        &self,
    ) -> Option<(
        mpsc::Sender<Bytes>,
        tokio::task::JoinHandle<package::Scanned>,
    )> {
        let slot = Arc::clone(&self.scans).try_acquire_owned().ok()?;
        let (blocks, mut scan_rx) = mpsc::channel::<Bytes>(SCAN_QUEUE);
        let stream = futures_util::stream::poll_fn(move |cx| {
            scan_rx
                .poll_recv(cx)
                .map(|block| block.map(Ok::<_, std::io::Error>))
        });
        let zip_stream = SyncIoBridge::new(StreamReader::new(stream));
        let limits = self.settings.zip_limits;
        let scan = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            package::scan_entries(zip_stream, &limits)
        });
        Some((blocks, scan))
    }

    /// Runs the zip checks on a downloaded file (on a blocking thread),
    /// without decompressing again the entries `scanned` found intact.
    async fn check_download(
        &self,
        download: &crate::fetch::Download,
        ty: PluginType,
        name: &str,
        shell_paras: &[String],
        scanned: package::Scanned,
    ) -> Result<package::PackageInfo> {
        let file = download
            .reopen()
            .map_err(|e| RegistryError::Internal(format!("reopen download: {e}")))?;
        let limits = self.settings.zip_limits;
        let (n, paras) = (name.to_string(), shell_paras.to_vec());
        let info = tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::new(file);
            package::inspect_zip_scanned(reader, ty, &n, &paras, &limits, &scanned)
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("zip check failed: {e}")))??;
        Ok(info)
    }

    fn meta_from(
        ty: PluginType,
        name: &str,
        id: String,
        staged: Staged,
        functions: Option<Vec<String>>,
        shell_paras: Vec<String>,
        created: String,
    ) -> PluginMeta {
        PluginMeta {
            name: name.to_string(),
            version: staged.info.version,
            plugin_type: ty,
            id,
            blob: staged.blob,
            sha256: staged.sha256,
            size: staged.size,
            arch: staged.info.arch,
            so_file: staged.info.so_file,
            source: staged.source,
            updated: now_rfc3339(),
            created,
            functions,
            shell_paras,
            files: staged.info.files,
        }
    }

    async fn read_meta(&self, ty: PluginType, name: &str) -> Result<Option<(PluginMeta, Object)>> {
        let Some(obj) = self.store.get(&keys::plugin(ty, name)).await? else {
            return Ok(None);
        };
        let meta: PluginMeta = serde_json::from_slice(&obj.body).map_err(|e| {
            RegistryError::Internal(format!("metadata of {ty} plugin {name} is unreadable: {e}"))
        })?;
        Ok(Some((meta, obj)))
    }

    async fn callback(&self, cb: Option<Url>) -> Result<()> {
        if let Some(url) = cb {
            self.fetcher
                .callback(&url)
                .await
                .map_err(RegistryError::CallbackFailed)?;
        }
        Ok(())
    }

    /// Creates a plugin: validate, download, check, store, commit, callback.
    pub async fn create(&self, ty: PluginType, req: PluginRequest) -> Result<()> {
        package::validate_name(&req.name)?;
        let url = self.check_file_url(&req.file)?;
        let callback = parse_callback(&self.fetcher, req.callback.as_deref())?;
        let functions = match ty {
            PluginType::Function => {
                let list = req
                    .functions
                    .clone()
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| vec![req.name.clone()]);
                Self::check_functions(&list)?;
                Some(list)
            }
            _ => None,
        };
        if ty != PluginType::Function && req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(RegistryError::InvalidInput(format!(
                "functions are only allowed for function plugins, not {ty}"
            )));
        }
        let name = req.name.as_str();
        // Cheap checks first, so nothing is downloaded for a request that cannot succeed.
        if self.store.exists(&keys::plugin(ty, name)).await? {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        for f in functions.iter().flatten() {
            if let Some(owner) = self.committed_owner(f).await? {
                return Err(RegistryError::FunctionExists {
                    name: f.clone(),
                    owner,
                });
            }
        }
        let staged = self
            .stage(ty, name, &url, &req.file, &req.shell_paras)
            .await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let claimed = match &functions {
            Some(list) => self.claim_all(name, &id, list).await?,
            None => Vec::new(),
        };
        let now = now_rfc3339();
        let meta = Self::meta_from(
            ty,
            name,
            id.clone(),
            staged,
            functions,
            req.shell_paras,
            now,
        );
        let body = Bytes::from(serde_json::to_vec_pretty(&meta).expect("metadata serialises"));
        let lease = match index::lease(&self.store, ty, name).await {
            Ok(lease) => lease,
            Err(e) => {
                self.release_all(&id, &claimed).await;
                return Err(e.into());
            }
        };
        let committed = self
            .store
            .put(&keys::plugin(ty, name), body, Condition::IfNoneMatch)
            .await;
        self.settle(ty, name, &lease).await;
        if let Err(e) = committed {
            self.release_all(&id, &claimed).await;
            return Err(match e {
                StoreError::PreconditionFailed => RegistryError::Duplicate(name.to_string()),
                other => other.into(),
            });
        }
        tracing::info!(plugin_type = %ty, name, sha256 = %meta.sha256, "plugin created");
        self.callback(callback).await
    }

    /// Replaces a plugin's zip (and optionally its function list). The new
    /// version is downloaded, checked and stored before the metadata is swapped;
    /// a failure leaves the old version in place.
    pub async fn update(&self, ty: PluginType, name: &str, mut req: PluginRequest) -> Result<()> {
        package::validate_name(name)?;
        if !req.name.is_empty() && req.name != name {
            return Err(RegistryError::InvalidInput(format!(
                "invalid name {}: the body name must be empty or equal the plugin name {name} in the path",
                req.name
            )));
        }
        let url = self.check_file_url(&req.file)?;
        let callback = parse_callback(&self.fetcher, req.callback.as_deref())?;
        if let Some(list) = req.functions.as_ref().filter(|l| !l.is_empty()) {
            if ty != PluginType::Function {
                return Err(RegistryError::InvalidInput(format!(
                    "functions are only allowed for function plugins, not {ty}"
                )));
            }
            Self::check_functions(list)?;
        }
        let Some((current, obj)) = self.read_meta(ty, name).await? else {
            return Err(RegistryError::NotExist(name.to_string()));
        };
        let staged = self
            .stage(ty, name, &url, &req.file, &req.shell_paras)
            .await?;
        let functions = match ty {
            PluginType::Function => Some(
                req.functions
                    .take()
                    .filter(|l| !l.is_empty())
                    .or_else(|| current.functions.clone())
                    .unwrap_or_else(|| vec![name.to_string()]),
            ),
            _ => None,
        };
        self.swap_meta(&current, obj, functions, |old, functions| {
            Self::meta_from(
                ty,
                name,
                old.id.clone(),
                staged,
                functions,
                req.shell_paras,
                old.created.clone(),
            )
        })
        .await?;
        tracing::info!(plugin_type = %ty, name, "plugin updated");
        self.callback(callback).await
    }

    /// Claims any new function names, swaps the metadata with compare-and-swap,
    /// then releases names the plugin no longer has.
    async fn swap_meta(
        &self,
        current: &PluginMeta,
        obj: Object,
        functions: Option<Vec<String>>,
        build: impl FnOnce(&PluginMeta, Option<Vec<String>>) -> PluginMeta,
    ) -> Result<()> {
        let old: Vec<String> = current.functions.clone().unwrap_or_default();
        let new: Vec<String> = functions.clone().unwrap_or_default();
        let added: Vec<String> = new.iter().filter(|f| !old.contains(f)).cloned().collect();
        let removed: Vec<String> = old.iter().filter(|f| !new.contains(f)).cloned().collect();
        let claimed = self.claim_all(&current.name, &current.id, &added).await?;
        let meta = build(current, functions);
        let body = Bytes::from(serde_json::to_vec_pretty(&meta).expect("metadata serialises"));
        let key = keys::plugin(current.plugin_type, &current.name);
        if let Err(e) = self
            .store
            .put(&key, body, Condition::IfMatch(obj.etag))
            .await
        {
            self.release_all(&current.id, &claimed).await;
            return Err(match e {
                StoreError::PreconditionFailed => RegistryError::Conflict(current.name.clone()),
                other => other.into(),
            });
        }
        self.release_all(&current.id, &removed).await;
        Ok(())
    }

    /// Drops a plugin from the registry; nodes remove it when they restart.
    pub async fn delete(&self, ty: PluginType, name: &str, callback: Option<&str>) -> Result<()> {
        package::validate_name(name)?;
        let callback = parse_callback(&self.fetcher, callback)?;
        let Some((meta, _)) = self.read_meta(ty, name).await? else {
            return Err(RegistryError::NotExist(name.to_string()));
        };
        let lease = index::lease(&self.store, ty, name).await?;
        let deleted = self.store.delete(&keys::plugin(ty, name)).await;
        self.settle(ty, name, &lease).await;
        deleted?;
        if let Some(functions) = &meta.functions {
            self.release_all(&meta.id, functions).await;
        }
        tracing::info!(plugin_type = %ty, name, "plugin deleted");
        self.callback(callback).await
    }

    /// Ends a name-index lease. A failure leaves the lease, which makes lists
    /// read the metadata keys until it expires: slower, still exact.
    async fn settle(&self, ty: PluginType, name: &str, lease: &str) {
        if let Err(e) = index::settle(&self.store, ty, name, lease).await {
            tracing::warn!(plugin_type = %ty, name, error = %e, "could not update the name index; lists will read the metadata keys until the lease expires");
        }
    }

    /// Names of the plugins of a type, sorted, from the name index (one read)
    /// or, while a change is in flight, from the metadata keys.
    pub async fn names(&self, ty: PluginType) -> Result<Names> {
        Ok(index::names(&self.store, ty).await?)
    }

    /// Names of the plugins of a type, sorted (see [`Registry::names`]).
    pub async fn list(&self, ty: PluginType) -> Result<Vec<String>> {
        Ok(self.names(ty).await?.to_vec())
    }

    /// A plugin's metadata.
    pub async fn describe(&self, ty: PluginType, name: &str) -> Result<PluginMeta> {
        package::validate_name(name)?;
        match self.read_meta(ty, name).await? {
            Some((meta, _)) => Ok(meta),
            None => Err(RegistryError::NotFound),
        }
    }

    /// Every function name of every function plugin, sorted.
    pub async fn udfs(&self) -> Result<Vec<String>> {
        let mut all = BTreeSet::new();
        for name in self.list(PluginType::Function).await? {
            if let Some((meta, _)) = self.read_meta(PluginType::Function, &name).await? {
                all.extend(meta.functions.unwrap_or_default());
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Which plugin provides function `function`.
    pub async fn describe_udf(&self, function: &str) -> Result<UdfOwner> {
        package::validate_name(function)?;
        let Some(obj) = self.store.get(&keys::udf(function)).await? else {
            return Err(RegistryError::NotFound);
        };
        let claim: Claim = serde_json::from_slice(&obj.body).map_err(|e| {
            RegistryError::Internal(format!("claim of {function} is unreadable: {e}"))
        })?;
        match self.read_meta(PluginType::Function, &claim.plugin).await? {
            Some((meta, _))
                if meta.id == claim.id
                    && meta
                        .functions
                        .as_ref()
                        .is_some_and(|f| f.iter().any(|x| x == function)) =>
            {
                Ok(UdfOwner {
                    name: function.to_string(),
                    plugin: claim.plugin,
                })
            }
            _ => Err(RegistryError::NotFound),
        }
    }

    /// Replaces the function list of a function plugin. A clash changes nothing.
    pub async fn register_functions(&self, name: &str, functions: Vec<String>) -> Result<()> {
        package::validate_name(name)?;
        if functions.is_empty() {
            return Err(RegistryError::InvalidInput(
                "property 'functions' must not be empty".into(),
            ));
        }
        Self::check_functions(&functions)?;
        let Some((current, obj)) = self.read_meta(PluginType::Function, name).await? else {
            return Err(RegistryError::NotFound);
        };
        self.swap_meta(&current, obj, Some(functions), |old, functions| {
            PluginMeta {
                functions,
                updated: now_rfc3339(),
                ..old.clone()
            }
        })
        .await
    }

    /// Claims each function name for plugin `owner` (instance `id`); on a clash
    /// releases what this call claimed and fails. Returns the names newly claimed.
    async fn claim_all(&self, owner: &str, id: &str, functions: &[String]) -> Result<Vec<String>> {
        let mut claimed = Vec::new();
        for f in functions {
            match self.claim(owner, id, f).await {
                Ok(true) => claimed.push(f.clone()),
                Ok(false) => {}
                Err(e) => {
                    self.release_all(id, &claimed).await;
                    return Err(e);
                }
            }
        }
        Ok(claimed)
    }

    /// Claims one function name. `Ok(true)` when newly claimed, `Ok(false)`
    /// when this plugin instance already held it.
    async fn claim(&self, owner: &str, id: &str, function: &str) -> Result<bool> {
        let key = keys::udf(function);
        let body = Bytes::from(
            serde_json::to_vec(&Claim {
                plugin: owner.to_string(),
                id: id.to_string(),
                claimed_at: now_secs(),
            })
            .expect("claim serialises"),
        );
        for _ in 0..5 {
            match self
                .store
                .put(&key, body.clone(), Condition::IfNoneMatch)
                .await
            {
                Ok(()) => return Ok(true),
                Err(StoreError::PreconditionFailed) => {}
                Err(e) => return Err(e.into()),
            }
            let Some(obj) = self.store.get(&key).await? else {
                continue;
            };
            let Ok(existing) = serde_json::from_slice::<Claim>(&obj.body) else {
                // An unreadable claim is stale: take it over.
                if self.take_over(&key, body.clone(), obj).await? {
                    return Ok(true);
                }
                continue;
            };
            if existing.id == id {
                return Ok(false);
            }
            let committed = match self
                .read_meta(PluginType::Function, &existing.plugin)
                .await?
            {
                Some((meta, _)) => {
                    meta.id == existing.id
                        && meta
                            .functions
                            .as_ref()
                            .is_some_and(|f| f.iter().any(|x| x == function))
                }
                None => false,
            };
            let fresh = now_secs().saturating_sub(existing.claimed_at)
                < self.settings.claim_grace.as_secs();
            if committed || fresh {
                return Err(RegistryError::FunctionExists {
                    name: function.to_string(),
                    owner: existing.plugin,
                });
            }
            if self.take_over(&key, body.clone(), obj).await? {
                return Ok(true);
            }
        }
        Err(RegistryError::Conflict(owner.to_string()))
    }

    /// The plugin that provides `function`, if a committed plugin does.
    async fn committed_owner(&self, function: &str) -> Result<Option<String>> {
        match self.describe_udf(function).await {
            Ok(owner) => Ok(Some(owner.plugin)),
            Err(RegistryError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn take_over(&self, key: &str, body: Bytes, stale: Object) -> Result<bool> {
        match self
            .store
            .put(key, body, Condition::IfMatch(stale.etag))
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::PreconditionFailed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Releases the claims of instance `id` on `functions` (best effort: a claim
    /// left behind is stale and is taken over by the next claimant).
    async fn release_all(&self, id: &str, functions: &[String]) {
        for f in functions {
            let key = keys::udf(f);
            let result = async {
                if let Some(obj) = self.store.get(&key).await? {
                    if serde_json::from_slice::<Claim>(&obj.body).is_ok_and(|c| c.id == id) {
                        self.store.delete(&key).await?;
                    }
                }
                Ok::<_, StoreError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(function = %f, error = %e, "could not release a function name claim");
            }
        }
    }

    /// Removes zips that no metadata points at, and function-name claims that
    /// no committed plugin holds, when older than `min_age` (which must exceed
    /// the longest request, so that a create in progress keeps what it wrote).
    pub async fn gc(&self, min_age: Duration, dry_run: bool) -> Result<GcReport> {
        let mut referenced = BTreeSet::new();
        let mut functions = BTreeSet::new();
        for ty in PluginType::ALL {
            if !dry_run {
                index::reindex(&self.store, ty).await?;
            }
            for name in index::listed_names(&self.store, ty).await? {
                if let Some((meta, _)) = self.read_meta(ty, &name).await? {
                    referenced.insert(meta.blob.clone());
                    for f in meta.functions.unwrap_or_default() {
                        functions.insert((f, meta.id.clone()));
                    }
                }
            }
        }
        let cutoff = now_secs().saturating_sub(min_age.as_secs());
        let mut report = GcReport {
            blobs_referenced: referenced.len(),
            dry_run,
            ..GcReport::default()
        };
        for blob in self.store.list(keys::BLOBS_PREFIX).await? {
            if referenced.contains(&blob.key) {
                continue;
            }
            if blob.modified > cutoff {
                report.blobs_too_young.push(blob.key);
                continue;
            }
            if !dry_run {
                self.store.delete(&blob.key).await?;
            }
            report.blobs_removed.push(blob.key);
        }
        for upload in self.store.list(keys::UPLOADS_PREFIX).await? {
            if upload.modified > cutoff {
                continue;
            }
            if !dry_run {
                self.store.delete(&upload.key).await?;
            }
            report.uploads_removed.push(upload.key);
        }
        for listed in self.store.list(keys::UDFS_PREFIX).await? {
            let Some(obj) = self.store.get(&listed.key).await? else {
                continue;
            };
            let function = listed
                .key
                .trim_start_matches(keys::UDFS_PREFIX)
                .trim_end_matches(".json")
                .to_string();
            let stale = match serde_json::from_slice::<Claim>(&obj.body) {
                Ok(c) => !functions.contains(&(function.clone(), c.id)) && c.claimed_at <= cutoff,
                Err(_) => listed.modified <= cutoff,
            };
            if stale {
                if !dry_run {
                    self.store.delete(&listed.key).await?;
                }
                report.claims_removed.push(function);
            }
        }
        Ok(report)
    }
}
