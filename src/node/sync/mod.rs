//! Bringing a node's directory to the registry's state.
//!
//! One listing of `plugins/` (one request per 1,000 plugins on S3) gives every
//! plugin the store holds and, where the backend lists them, the entity tags
//! of their metadata. A plugin whose listed tag is the one the manifest
//! recorded when it was installed, and whose files are all present, is
//! unchanged: nothing more is read for it. The others have their metadata
//! read: unchanged (same zip, same `shellParas`, files present) plugins are
//! left alone; new or changed ones are downloaded (small zips into memory,
//! larger ones into `{root}/.kuiper-node/tmp/`), verified against the
//! metadata's SHA-256, checked again with [`inspect_zip`], extracted into
//! `{root}/.kuiper-node/tmp/` (only the entries the metadata lists),
//! optionally prepared by `install.sh`, and only then renamed into place.
//! Metadata is read ahead (four reads per download
//! slot); up to [`SyncOptions::jobs`] plugins are downloaded and staged at
//! once, while one committer moves the staged ones into place, a group at a
//! time.
//! Plugins the manifest lists but the store no longer has are removed, file
//! by file, as the manifest lists them.
//!
//! Crash safety: before the first file of a group of plugins is renamed into
//! place the manifest marks each of them `pending` and lists both its old and
//! new files; after the last old file is removed the entries are rewritten
//! with only the new files. A sync killed in between leaves `pending` entries
//! that the next sync installs again (and, if a plugin was dropped meanwhile,
//! removes file by file). Half-written files only ever exist under
//! `.kuiper-node/tmp/`, which every sync empties first, and never with a `.so`
//! name in `plugins/`. Staged files start being written to disk as soon as
//! they are extracted, and the committer flushes the file system once per
//! group before the first rename (and once after the renames), so that after
//! a power loss too a library in `plugins/` is whole.
//!
//! Plugins eKuiper cannot tell apart (names or function names equal without
//! regard to case) fail before anything is downloaded and are left as they
//! are ([`conflicts`]); nothing is written through a symbolic link inside
//! the root ([`super::beneath`]).
//!
//! Here: the listing, the pipeline and the manifest; [`fetch`] downloads,
//! [`stage`] verifies and extracts, [`script`] runs `install.sh`, [`commit`]
//! moves staged plugins into place.

mod commit;
mod conflicts;
mod fetch;
mod script;
mod stage;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::sync::{mpsc, Semaphore};

use self::commit::{commit, remove_file_and_empty_dirs};
use self::fetch::check_meta;
use super::beneath;
use super::layout::STATE_DIR;
use super::manifest::{self, Entry, Manifest};
use super::{Failure, PluginRef, Progress, Report};
use crate::package::{self, validate_name, PluginType, ZipLimits};
use crate::registry::PluginMeta;
use crate::store::{keys, Listed, Store};

/// Where every type's metadata is: listed once per sync.
const PLUGINS_PREFIX: &str = "plugins/";

/// The default of [`SyncOptions::memory_bytes`]: 64 MiB.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;

/// Largest zip downloaded into memory.
const IN_MEMORY_MAX: u64 = 16 << 20;
// Read with `Store::get`, which refuses anything bigger than this.
const _: () = assert!(IN_MEMORY_MAX <= crate::store::MAX_SMALL_OBJECT_BYTES);

/// Metadata objects read at once, per download slot ([`SyncOptions::jobs`]).
const METADATA_READS_PER_JOB: usize = 4;

/// Most staged plugins moved into place with one pair of manifest writes.
const GROUP_MAX: usize = 64;

/// How long a commit group waits for more staged plugins after its first.
/// Each group costs two file-system flushes and two manifest writes; without
/// the wait, a first sync of 200 plugins committed in some 60 groups of 3.
const GROUP_GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// How a sync behaves.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The node's directory (eKuiper's base directory).
    pub root: PathBuf,
    /// Most plugins downloaded and extracted at once.
    pub jobs: usize,
    /// Whether `install.sh` may run; plugins that have one fail without it.
    pub allow_install_scripts: bool,
    /// How long `install.sh` may run before it is killed.
    pub install_timeout: Duration,
    /// Limits for the zip check on the node.
    pub zip_limits: ZipLimits,
    /// The node's architecture, as ELF machines are named (`x86_64`, ...).
    pub arch: String,
    /// Most bytes of zips and decoded files held in memory at once (the
    /// memory budget). A zip that fits in what is left of it (and is at most
    /// 16 MiB) is downloaded into memory, hashed and extracted from there,
    /// never written to disk whole; the others are streamed to a file under
    /// `.kuiper-node/tmp/` first. A plugin whose largest file fits in what is
    /// left, twice over (its compressed bytes and its output), has its entries
    /// decoded whole ([`package::Extract::whole_entry_max`]), faster than as a
    /// stream. 0 streams everything through files: slower, least memory.
    /// The same files are installed whatever the budget.
    pub memory_bytes: usize,
    /// The build fingerprint of the node's stock eKuiper, when known: Go
    /// plugins it would refuse ([`package::refusals`]) are skipped before
    /// anything is downloaded. `None` checks nothing.
    pub ekuiper: Option<package::BuildFingerprint>,
}

impl SyncOptions {
    /// Defaults for `root`: 8 parallel downloads, no install scripts, a
    /// 5-minute script timeout, the default zip limits, this machine's
    /// architecture, a 64 MiB memory budget.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SyncOptions {
            root: root.into(),
            jobs: 8,
            allow_install_scripts: false,
            install_timeout: Duration::from_secs(300),
            zip_limits: ZipLimits::default(),
            arch: package::host_arch().to_string(),
            memory_bytes: DEFAULT_MEMORY_BYTES,
            ekuiper: None,
        }
    }
}

/// The outcome of a sync: the report, the manifest as left, and the root
/// (absolute) the manifest's paths are relative to.
#[derive(Debug)]
pub struct Synced {
    /// What happened.
    pub report: Report,
    /// What is installed now.
    pub manifest: Manifest,
    /// The absolute root directory.
    pub root: PathBuf,
    /// The entity tag of each plugin's metadata as this sync saw it (listed
    /// or read): what the node report's drift is computed from. Empty when
    /// nothing was synced.
    pub seen: Seen,
}

/// The metadata entity tag of each plugin a sync saw, by `(type, name)`.
pub type Seen = BTreeMap<(PluginType, String), String>;

/// What happened to one listed plugin.
enum Outcome {
    Installed(String),
    Updated(String),
    Unchanged(String),
}

/// What reading a plugin's metadata came to.
enum MetaRead {
    /// Nothing to download.
    Done(Outcome),
    /// The metadata disappeared between listing and reading it; handled.
    Gone,
    /// To be downloaded and staged.
    Fetch(Box<Fetch>),
}

/// A plugin to download, from the metadata just read.
struct Fetch {
    meta: PluginMeta,
    /// The metadata's entity tag.
    etag: String,
    /// Whether the node had a version of it before.
    existed: bool,
}

/// A plugin whose files are staged under `.kuiper-node/tmp/`.
struct Ready {
    meta: PluginMeta,
    /// The entity tag of the metadata it was staged from.
    etag: String,
    /// (relative destination, staged file)
    files: Vec<(String, PathBuf)>,
    /// Whether the node had a version of it before (an update, not an install).
    existed: bool,
    /// Deleted once the plugin is committed or failed.
    _work: WorkDir,
}

/// The plugins a listing shows, each with its metadata's entity tag when the
/// backend lists tags.
type Listing = BTreeMap<(PluginType, String), Option<String>>;

/// The manifest, in memory and on disk.
struct Book {
    path: PathBuf,
    manifest: Mutex<Manifest>,
    /// Held while a snapshot is written, so that snapshots reach the disk in
    /// the order they were taken.
    writing: Mutex<()>,
    /// Whether the manifest has changes that no write has to wait for
    /// (recorded metadata tags), not yet written.
    dirty: AtomicBool,
}

impl Book {
    fn lock(&self) -> MutexGuard<'_, Manifest> {
        self.manifest.lock().expect("manifest lock")
    }

    /// Writes the manifest as it is now (blocking).
    fn save(&self) -> Result<(), String> {
        let _writing = self.writing.lock().expect("manifest write lock");
        let body = {
            let m = self.lock();
            self.dirty.store(false, Ordering::SeqCst);
            m.to_bytes()?
        };
        manifest::write_atomic(&self.path, &body)
    }
}

struct Ctx<'a, S> {
    store: &'a S,
    opts: &'a SyncOptions,
    root: PathBuf,
    tmp: PathBuf,
    book: Arc<Book>,
    /// [`SyncOptions::memory_bytes`], in bytes.
    memory: Arc<Semaphore>,
    report: Mutex<Report>,
    /// [`Synced::seen`].
    seen: Mutex<Seen>,
    progress: &'a Progress,
}

/// Holds the root's lock file for the duration of a sync.
struct RootLock(File);

impl Drop for RootLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn lock_root(root: &Path) -> Result<RootLock, String> {
    let state = root.join(STATE_DIR);
    let path = state.join("lock");
    beneath::check(root, &format!("{STATE_DIR}/lock"), true)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(RootLock(file)),
        Err(fs::TryLockError::WouldBlock) => Err(format!(
            "another kuiper-node is syncing {} (lock {} is held); nothing was changed",
            root.display(),
            path.display()
        )),
        Err(fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Brings `opts.root` to the state of the registry in `store`.
///
/// Per-plugin problems are reported in the report's `failed` and never stop
/// the other plugins; `Err` means nothing could be synced at all (the root is
/// not usable, another sync holds it, the manifest is unreadable).
pub async fn sync<S: Store>(
    store: &S,
    opts: &SyncOptions,
    progress: &Progress,
) -> Result<Synced, String> {
    fs::create_dir_all(&opts.root)
        .map_err(|e| format!("cannot create {}: {e}", opts.root.display()))?;
    let root = opts
        .root
        .canonicalize()
        .map_err(|e| format!("cannot open {}: {e}", opts.root.display()))?;
    let state = root.join(STATE_DIR);
    beneath::create_dir_all(&root, Path::new(STATE_DIR)).map_err(|e| {
        format!(
            "cannot create {}: {e}; nothing was changed",
            state.display()
        )
    })?;
    let _lock = lock_root(&root)?;
    let tmp = state.join("tmp");
    // Removes a link there, never what it points to.
    match fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot empty {}: {e}", tmp.display())),
    }
    beneath::create_dir_all(&root, &Path::new(STATE_DIR).join("tmp"))
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let manifest_path = state.join("manifest.json");
    let manifest = Manifest::load(&manifest_path)?;

    let ctx = Ctx {
        store,
        opts,
        root: root.clone(),
        tmp,
        book: Arc::new(Book {
            path: manifest_path,
            manifest: Mutex::new(manifest),
            writing: Mutex::new(()),
            dirty: AtomicBool::new(false),
        }),
        memory: Arc::new(Semaphore::new(
            opts.memory_bytes.min(Semaphore::MAX_PERMITS),
        )),
        report: Mutex::new(Report::default()),
        seen: Mutex::new(Seen::new()),
        progress,
    };

    // What the registry holds, every type in one listing. When it cannot be
    // listed, the node is left exactly as it is.
    match store.list(PLUGINS_PREFIX).await {
        Ok(objects) => ctx.reconcile(plugins_listed(objects)).await,
        Err(e) => ctx.fail_global(format!(
            "cannot list {PLUGINS_PREFIX} in store {}: {e}; installed plugins were left as they are",
            store.location()
        )),
    }

    let _ = fs::remove_dir_all(&ctx.tmp);
    let Ctx {
        book, report, seen, ..
    } = ctx;
    let mut report = report.into_inner().expect("report lock");
    let seen = seen.into_inner().expect("seen lock");
    report.sort();
    let manifest = match Arc::try_unwrap(book) {
        Ok(book) => book.manifest.into_inner().expect("manifest lock"),
        Err(book) => book.lock().clone(),
    };
    Ok(Synced {
        report,
        manifest,
        root,
        seen,
    })
}

/// The plugins in a listing of `plugins/`; keys that are not
/// `plugins/{type}/{name}.json` are ignored.
fn plugins_listed(objects: Vec<Listed>) -> Listing {
    let mut out = Listing::new();
    for o in objects {
        let plugin = PluginType::ALL
            .into_iter()
            .find_map(|ty| keys::plugin_name(ty, &o.key).map(|n| (ty, n.to_string())));
        if let Some(plugin) = plugin {
            out.insert(plugin, o.etag.map(|t| t.0).filter(|t| !t.is_empty()));
        }
    }
    out
}

/// Deletes a plugin's temporary directory when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether every file of an installed plugin is there.
fn files_present(root: &Path, entry: &Entry) -> bool {
    entry
        .files
        .iter()
        .all(|f| root.join(f).symlink_metadata().is_ok())
}

impl<S: Store> Ctx<'_, S> {
    fn fail_global(&self, error: String) {
        self.progress.line(&format!("error: {error}"));
        self.report
            .lock()
            .expect("report lock")
            .failed
            .push(Failure {
                plugin_type: String::new(),
                name: String::new(),
                error,
            });
    }

    fn fail(&self, ty: PluginType, name: &str, error: String) {
        self.progress
            .line(&format!("failed    {ty}/{name}: {error}"));
        self.report
            .lock()
            .expect("report lock")
            .failed
            .push(Failure {
                plugin_type: ty.as_str().to_string(),
                name: name.to_string(),
                error,
            });
    }

    /// Why the node's eKuiper would refuse the plugin of `meta`, if it would.
    fn refused(&self, meta: &PluginMeta) -> Option<Vec<String>> {
        let node = self.opts.ekuiper.as_ref()?;
        let plugin = meta.build.as_ref()?;
        let reasons = package::refusals(node, plugin);
        (!reasons.is_empty()).then_some(reasons)
    }

    /// Reports a plugin the gate skipped: not downloaded, what the node had of it kept.
    fn skip(&self, ty: PluginType, name: &str, version: &str, reasons: Vec<String>) {
        self.progress.line(&format!(
            "skipped   {ty}/{name} {version}: the node's eKuiper would refuse it: {}; not installed",
            reasons.join("; ")
        ));
        self.report
            .lock()
            .expect("report lock")
            .skipped
            .push(crate::node::Skipped {
                plugin_type: ty,
                name: name.to_string(),
                version: version.to_string(),
                reasons,
            });
    }

    fn done(&self, ty: PluginType, name: &str, outcome: Outcome) {
        let (verb, version) = match outcome {
            Outcome::Installed(v) => ("installed", v),
            Outcome::Updated(v) => ("updated", v),
            Outcome::Unchanged(v) => ("unchanged", v),
        };
        self.progress
            .line(&format!("{verb:<9} {ty}/{name} {version}"));
        let item = PluginRef {
            plugin_type: ty,
            name: name.to_string(),
            version,
        };
        let mut r = self.report.lock().expect("report lock");
        match verb {
            "installed" => r.installed.push(item),
            "updated" => r.updated.push(item),
            _ => r.unchanged.push(item),
        }
    }

    /// Removes what the registry dropped, installs what it has and the node
    /// does not, and records what is unchanged.
    async fn reconcile(&self, listed: Listing) {
        self.seen.lock().expect("seen lock").extend(
            listed
                .iter()
                .filter_map(|(k, t)| Some((k.clone(), t.clone()?))),
        );
        // Dropped plugins go first, so that their files free the names new ones may use.
        let dropped: Vec<(PluginType, String)> = self
            .book
            .lock()
            .plugins
            .values()
            .filter(|e| !listed.contains_key(&(e.plugin_type, e.name.clone())))
            .map(|e| (e.plugin_type, e.name.clone()))
            .collect();
        self.progress
            .set_length((dropped.len() + listed.len()) as u64);
        self.remove_and_report(&dropped);

        // Unchanged plugins (by tag) are reported, conflicting ones fail;
        // the others are read (function plugins already were).
        let to_read = self.screen(listed).await;

        // Metadata objects are small and reading one is mostly waiting: they
        // are read further ahead than the zips are downloaded, so that a
        // download slot never waits for a metadata read.
        let jobs = self.opts.jobs.max(1);
        let reads = jobs.saturating_mul(METADATA_READS_PER_JOB);
        // Unbounded: a staged plugin holds only paths (its files are on
        // disk), and a download slot must not wait while the committer
        // waits for the disk.
        let (ready_tx, ready_rx) = mpsc::unbounded_channel::<Box<Ready>>();
        let prepare_all = async move {
            stream::iter(to_read)
                .map(|(ty, name, read)| async move {
                    let read = match read {
                        Some(read) => read,
                        None => self.read_meta(ty, &name).await,
                    };
                    (ty, name, read)
                })
                .buffer_unordered(reads)
                .for_each_concurrent(jobs, |(ty, name, read)| {
                    let ready_tx = ready_tx.clone();
                    async move {
                        let staged = match read {
                            Ok(MetaRead::Fetch(fetch)) => {
                                if let Some(reasons) = self.refused(&fetch.meta) {
                                    self.skip(ty, &name, &fetch.meta.version, reasons);
                                    return self.progress.inc();
                                }
                                self.fetch(ty, &name, *fetch).await
                            }
                            Ok(MetaRead::Done(outcome)) => {
                                self.done(ty, &name, outcome);
                                return self.progress.inc();
                            }
                            Ok(MetaRead::Gone) => return self.progress.inc(),
                            Err(e) => Err(e),
                        };
                        match staged {
                            // The committer reports it.
                            Ok(ready) => {
                                if ready_tx.send(ready).is_err() {
                                    self.fail(ty, &name, "staged, but not installed".into());
                                    self.progress.inc();
                                }
                            }
                            Err(e) => {
                                self.fail(ty, &name, e);
                                self.progress.inc();
                            }
                        }
                    }
                })
                .await;
        };
        tokio::join!(prepare_all, self.committer(ready_rx));

        if self.book.dirty.load(Ordering::SeqCst) {
            let book = Arc::clone(&self.book);
            let saved = tokio::task::spawn_blocking(move || book.save())
                .await
                .unwrap_or_else(|e| Err(format!("manifest: {e}")));
            if let Err(e) = saved {
                self.fail_global(e);
            }
        }
    }

    /// The version of `{ty}/{name}` when the manifest recorded the listed
    /// metadata tag for it, it is not pending and its files are all there.
    fn unchanged_by_tag(&self, ty: PluginType, name: &str, listed: Option<&str>) -> Option<String> {
        let tag = listed?;
        let m = self.book.lock();
        let e = m.plugins.get(&manifest::key(ty, name))?;
        (!e.pending && e.meta_etag.as_deref() == Some(tag) && files_present(&self.root, e))
            .then(|| e.version.clone())
    }

    /// Moves staged plugins into place as they arrive, a group at a time, and
    /// reports them.
    async fn committer(&self, mut ready: mpsc::UnboundedReceiver<Box<Ready>>) {
        let mut group = Vec::new();
        while ready.recv_many(&mut group, GROUP_MAX).await > 0 {
            // More are usually on their way; the last group goes as soon as
            // the channel closes.
            let until = tokio::time::Instant::now() + GROUP_GATHER;
            while group.len() < GROUP_MAX {
                let room = GROUP_MAX - group.len();
                match tokio::time::timeout_at(until, ready.recv_many(&mut group, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let plugins: Vec<(PluginType, String, String, bool)> = group
                .iter()
                .map(|r| {
                    (
                        r.meta.plugin_type,
                        r.meta.name.clone(),
                        r.meta.version.clone(),
                        r.existed,
                    )
                })
                .collect();
            let (book, root, tmp, staged) = (
                Arc::clone(&self.book),
                self.root.clone(),
                self.tmp.clone(),
                std::mem::take(&mut group),
            );
            let results = tokio::task::spawn_blocking(move || commit(&book, &root, &tmp, &staged))
                .await
                .unwrap_or_else(|e| vec![Err(format!("installing failed: {e}")); plugins.len()]);
            for ((ty, name, version, existed), result) in plugins.into_iter().zip(results) {
                match result {
                    Ok(()) if existed => self.done(ty, &name, Outcome::Updated(version)),
                    Ok(()) => self.done(ty, &name, Outcome::Installed(version)),
                    Err(e) => self.fail(ty, &name, e),
                }
                self.progress.inc();
            }
        }
    }

    /// Reads the metadata: is the plugin unchanged, or to be downloaded?
    async fn read_meta(&self, ty: PluginType, name: &str) -> Result<MetaRead, String> {
        validate_name(name)
            .map_err(|e| format!("the store lists a plugin with an {e}; skipped"))?;
        let meta_key = keys::plugin(ty, name);
        let obj = self
            .store
            .get(&meta_key)
            .await
            .map_err(|e| format!("cannot read {meta_key}: {e}"))?;
        let Some(obj) = obj else {
            // Deleted since it was listed.
            self.remove_and_report(&[(ty, name.to_string())]);
            return Ok(MetaRead::Gone);
        };
        let meta: PluginMeta = serde_json::from_slice(&obj.body)
            .map_err(|e| format!("metadata {meta_key} is unreadable: {e}"))?;
        check_meta(ty, name, &meta)?;
        let etag = obj.etag.0;
        if !etag.is_empty() {
            self.seen
                .lock()
                .expect("seen lock")
                .insert((ty, name.to_string()), etag.clone());
        }

        let key = manifest::key(ty, name);
        let previous = self.book.lock().plugins.get(&key).cloned();
        if let Some(prev) = &previous {
            if !prev.pending
                && prev.sha256 == meta.sha256
                && prev.shell_paras == meta.shell_paras
                && files_present(&self.root, prev)
            {
                // Recorded, so that the next sync can skip reading the
                // metadata (and still compare function names).
                let functions =
                    (ty == PluginType::Function).then(|| conflicts::claimed_functions(&meta));
                if let Some(e) = self.book.lock().plugins.get_mut(&key) {
                    if !etag.is_empty() && e.meta_etag.as_deref() != Some(etag.as_str()) {
                        e.meta_etag = Some(etag);
                        self.book.dirty.store(true, Ordering::SeqCst);
                    }
                    if e.functions != functions {
                        e.functions = functions;
                        self.book.dirty.store(true, Ordering::SeqCst);
                    }
                    if e.id.as_deref() != Some(meta.id.as_str()) {
                        e.id = Some(meta.id.clone());
                        self.book.dirty.store(true, Ordering::SeqCst);
                    }
                }
                return Ok(MetaRead::Done(Outcome::Unchanged(prev.version.clone())));
            }
        }
        Ok(MetaRead::Fetch(Box::new(Fetch {
            meta,
            etag,
            existed: previous.is_some(),
        })))
    }

    /// Removes installed plugins' files as the manifest lists them (one
    /// manifest write for all) and reports them.
    fn remove_and_report(&self, plugins: &[(PluginType, String)]) {
        let mut outcomes = Vec::new();
        {
            let mut m = self.book.lock();
            for (ty, name) in plugins {
                let key = manifest::key(*ty, name);
                let Some(entry) = m.plugins.get(&key).cloned() else {
                    continue;
                };
                let mut left = Vec::new();
                let mut errors = Vec::new();
                for f in &entry.files {
                    if let Err(e) = remove_file_and_empty_dirs(&self.root, f) {
                        errors.push(format!("{f}: {e}"));
                        left.push(f.clone());
                    }
                }
                if left.is_empty() {
                    m.plugins.remove(&key);
                } else {
                    let mut e = entry.clone();
                    e.files = left;
                    m.plugins.insert(key, e);
                }
                outcomes.push((*ty, name.clone(), entry.version, errors));
            }
        }
        if outcomes.is_empty() {
            return;
        }
        let saved = self.book.save();
        for (ty, name, version, errors) in outcomes {
            if !errors.is_empty() {
                self.fail(
                    ty,
                    &name,
                    format!(
                        "dropped from the registry, but cannot remove {}",
                        errors.join(", ")
                    ),
                );
            } else if let Err(e) = &saved {
                self.fail(ty, &name, e.clone());
            } else {
                self.progress
                    .line(&format!("removed   {ty}/{name} {version}"));
                self.report
                    .lock()
                    .expect("report lock")
                    .removed
                    .push(PluginRef {
                        plugin_type: ty,
                        name,
                        version,
                    });
            }
            self.progress.inc();
        }
    }
}
