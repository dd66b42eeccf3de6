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
//! points at. A delete is conditional on the version it read.
//!
//! Names that differ only in case are one name: of plugins of a type (the
//! create's lease in [`index`] refuses a case variant) and of function names
//! (claims are keyed by the lower-cased name, see `functions`).
//!
//! Modules: `stage` (download, check, store a zip), `create` (create,
//! update), `delete`, `functions` (claims, udfs, register), `gc` (garbage
//! collection and the start-up clean-up), [`index`] (the name index),
//! [`nodes`] (fleet status from the nodes' reports).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::fetch::{FetchError, Fetcher};
use crate::package::{self, NameError, PackageError, PackageFile, PluginType, ZipLimits};
use crate::store::{keys, Object, Store, StoreError};
use tokio::sync::Semaphore;

mod create;
mod delete;
mod fingerprints;
mod functions;
mod gc;
pub mod index;
pub mod nodes;
mod stage;

pub use gc::{GcReport, STALE_TEMP_AGE};
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
    /// What the library was built with: its C library and, for Go plugins,
    /// its Go build information. Absent in metadata written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::package::BuildFingerprint>,
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

/// The eKuiper of a create's or update's `ekuiper` field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EkuiperTarget {
    /// The name of a stored fingerprint.
    Named(String),
    /// A fingerprint given inline (what `kuiper-node fingerprint` prints).
    Inline(crate::package::BuildFingerprint),
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
    /// The eKuiper the plugin must load into: a build fingerprint, or the
    /// name of one stored with `PUT /fingerprints/{name}`. A library that
    /// would not load into it is refused, naming each difference.
    #[serde(default)]
    pub ekuiper: Option<EkuiperTarget>,
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
    /// Create of a name that differs only in case from an existing plugin's
    /// of the type: both would need the same library file on every node.
    #[error("invalid name {name}: duplicate of {existing}")]
    DuplicateOf {
        /// The name asked for.
        name: String,
        /// The existing plugin's name.
        existing: String,
    },
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
    /// A function name differs only in case from one another plugin
    /// provides (eKuiper resolves SQL function names without case).
    #[error("function name {name} already exists in plugin {owner} as {existing}: function names are compared without case")]
    FunctionExistsAs {
        /// The function name asked for.
        name: String,
        /// The name as its owner provides it.
        existing: String,
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
    /// How long a node may go without reporting before `GET /nodes` shows
    /// it stale; `None`: three of the node's own report intervals.
    pub node_stale_after: Option<Duration>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            tmp_dir: std::env::temp_dir(),
            zip_limits: ZipLimits::default(),
            allow_file_urls: false,
            claim_grace: Duration::from_secs(600),
            max_scans: 64,
            node_stale_after: None,
        }
    }
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

    pub(super) async fn read_meta(
        &self,
        ty: PluginType,
        name: &str,
    ) -> Result<Option<(PluginMeta, Object)>> {
        let Some(obj) = self.store.get(&keys::plugin(ty, name)).await? else {
            return Ok(None);
        };
        let meta: PluginMeta = serde_json::from_slice(&obj.body).map_err(|e| {
            RegistryError::Internal(format!("metadata of {ty} plugin {name} is unreadable: {e}"))
        })?;
        Ok(Some((meta, obj)))
    }

    pub(super) async fn callback(&self, cb: Option<Url>) -> Result<()> {
        if let Some(url) = cb {
            self.fetcher
                .callback(&url)
                .await
                .map_err(RegistryError::CallbackFailed)?;
        }
        Ok(())
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
}
