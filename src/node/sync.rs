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

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Cursor, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::layout::{self, Placement, STATE_DIR};
use super::manifest::{self, Entry, Manifest};
use super::{Failure, PluginRef, Progress, Report};
use crate::package::{self, match_library, validate_name, PluginType, ZipLimits};
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
}

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
    progress: &'a Progress,
}

/// Holds the root's lock file for the duration of a sync.
struct RootLock(File);

impl Drop for RootLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn lock_root(state: &Path) -> Result<RootLock, String> {
    let path = state.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(RootLock(file)),
        Err(fs::TryLockError::WouldBlock) => Err(format!(
            "another kuiper-node is syncing {} (lock {} is held); nothing was changed",
            state.parent().unwrap_or(state).display(),
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
    fs::create_dir_all(&state).map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let _lock = lock_root(&state)?;
    let tmp = state.join("tmp");
    match fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot empty {}: {e}", tmp.display())),
    }
    fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
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
    let Ctx { book, report, .. } = ctx;
    let mut report = report.into_inner().expect("report lock");
    report.sort();
    let manifest = match Arc::try_unwrap(book) {
        Ok(book) => book.manifest.into_inner().expect("manifest lock"),
        Err(book) => book.lock().clone(),
    };
    Ok(Synced {
        report,
        manifest,
        root,
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

/// The staged files of one plugin.
struct Staged {
    /// (relative destination, staged file)
    files: Vec<(String, PathBuf)>,
    /// The directory with the root files for `install.sh`, when the zip has one.
    install_dir: Option<PathBuf>,
}

/// Deletes a plugin's temporary directory when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A downloaded zip.
enum Download {
    /// Small zips are kept in memory, holding their share of the memory budget
    /// ([`SyncOptions::memory_bytes`]).
    Memory {
        zip: Bytes,
        _budget: OwnedSemaphorePermit,
    },
    /// Larger ones are streamed to a file.
    File(PathBuf),
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

        // A plugin whose metadata has the tag it was installed from needs no read.
        let mut to_read = Vec::new();
        for ((ty, name), etag) in listed {
            match self.unchanged_by_tag(ty, &name, etag.as_deref()) {
                Some(version) => {
                    self.done(ty, &name, Outcome::Unchanged(version));
                    self.progress.inc();
                }
                None => to_read.push((ty, name)),
            }
        }

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
                .map(|(ty, name)| async move {
                    let read = self.read_meta(ty, &name).await;
                    (ty, name, read)
                })
                .buffer_unordered(reads)
                .for_each_concurrent(jobs, |(ty, name, read)| {
                    let ready_tx = ready_tx.clone();
                    async move {
                        let staged = match read {
                            Ok(MetaRead::Fetch(fetch)) => self.fetch(ty, &name, *fetch).await,
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

        let key = manifest::key(ty, name);
        let previous = self.book.lock().plugins.get(&key).cloned();
        if let Some(prev) = &previous {
            if !prev.pending
                && prev.sha256 == meta.sha256
                && prev.shell_paras == meta.shell_paras
                && files_present(&self.root, prev)
            {
                // Recorded, so that the next sync can skip reading the metadata.
                if !etag.is_empty() && prev.meta_etag.as_deref() != Some(etag.as_str()) {
                    if let Some(e) = self.book.lock().plugins.get_mut(&key) {
                        e.meta_etag = Some(etag);
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

    /// Downloads, verifies and stages a plugin (running its `install.sh`).
    async fn fetch(&self, ty: PluginType, name: &str, fetch: Fetch) -> Result<Box<Ready>, String> {
        let Fetch {
            meta,
            etag,
            existed,
        } = fetch;

        if meta.arch != self.opts.arch {
            return Err(format!(
                "built for {}, but this node is {}; skipped: not installed and not loaded",
                meta.arch, self.opts.arch
            ));
        }
        let has_script = meta.files.iter().any(|f| f.name == "install.sh");
        if has_script && !self.opts.allow_install_scripts {
            return Err(
                "the plugin has an install.sh, which runs only with --allow-install-scripts; not installed".to_string(),
            );
        }

        let work = WorkDir(self.tmp.join(format!("{}-{name}", ty.as_str())));
        fs::create_dir_all(&work.0)
            .map_err(|e| format!("cannot create {}: {e}", work.0.display()))?;
        let missing = || {
            format!(
                "the zip {} is missing from the store; nothing installed",
                meta.blob
            )
        };
        let in_memory = (meta.size <= IN_MEMORY_MAX)
            .then(|| Arc::clone(&self.memory).try_acquire_many_owned(meta.size.max(1) as u32))
            .and_then(Result::ok);
        let download = if let Some(permit) = in_memory {
            let zip = self
                .store
                .get(&meta.blob)
                .await
                .map_err(|e| format!("cannot download {}: {e}", meta.blob))?
                .ok_or_else(missing)?;
            Download::Memory {
                zip: zip.body,
                _budget: permit,
            }
        } else {
            let zip_path = work.0.join("download.zip");
            let found = self
                .store
                .get_to_file(&meta.blob, &zip_path)
                .await
                .map_err(|e| format!("cannot download {}: {e}", meta.blob))?;
            if !found {
                return Err(missing());
            }
            Download::File(zip_path)
        };
        let staged = {
            let (meta, dir, limits, arch, memory) = (
                meta.clone(),
                work.0.clone(),
                self.opts.zip_limits,
                self.opts.arch.clone(),
                Arc::clone(&self.memory),
            );
            tokio::task::spawn_blocking(move || {
                stage(&meta, &dir, &download, &limits, &arch, &memory)
            })
            .await
            .map_err(|e| format!("staging failed: {e}"))??
        };
        if let Some(dir) = &staged.install_dir {
            run_install_script(dir, &meta.shell_paras, self.opts.install_timeout).await?;
        }

        Ok(Box::new(Ready {
            meta,
            etag,
            files: staged.files,
            existed,
            _work: work,
        }))
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

/// What committing one staged plugin changes.
struct Plan {
    /// Its files after the commit.
    new_files: Vec<String>,
    /// The previous version's files that go.
    old_only: Vec<String>,
}

/// Moves a group of staged plugins into place and records them (blocking),
/// crash-safely: one manifest write marks every plugin of the group
/// `pending` (listing its old and new files) before its first file is
/// renamed into place, and one more records them installed once their old
/// files are gone. Returns each plugin's result, in order.
fn commit(book: &Book, root: &Path, tmp: &Path, group: &[Box<Ready>]) -> Vec<Result<(), String>> {
    // The staged files reach the disk before any of them is renamed into
    // place: one flush for the group rather than one per file.
    if let Err(e) = flush_fs(tmp) {
        let e = format!(
            "cannot flush the staged files in {} to disk: {e}; nothing installed",
            tmp.display()
        );
        return vec![Err(e); group.len()];
    }
    let mut results = Vec::with_capacity(group.len());
    let mut plans = Vec::with_capacity(group.len());
    {
        let mut m = book.lock();
        for r in group {
            match plan(&m, root, r) {
                Ok((plan, pending)) => {
                    m.plugins.insert(pending.key(), pending);
                    plans.push(Some(plan));
                    results.push(Ok(()));
                }
                Err(e) => {
                    plans.push(None);
                    results.push(Err(e));
                }
            }
        }
    }
    if plans.iter().all(Option::is_none) {
        return results;
    }
    if let Err(e) = book.save() {
        for (result, plan) in results.iter_mut().zip(&plans) {
            if plan.is_some() {
                *result = Err(e.clone());
            }
        }
        return results;
    }

    for ((r, plan), result) in group.iter().zip(&plans).zip(results.iter_mut()) {
        if let Some(plan) = plan {
            if let Err(e) = move_into_place(root, r, plan) {
                *result = Err(e);
            }
        }
    }
    // The renames reach the disk before the manifest says they are done
    // (best effort, as a directory's flush is).
    let _ = flush_fs(root);

    {
        let mut m = book.lock();
        for ((r, plan), result) in group.iter().zip(plans).zip(&results) {
            let (Some(plan), Ok(())) = (plan, result) else {
                continue;
            };
            let key = manifest::key(r.meta.plugin_type, &r.meta.name);
            if let Some(e) = m.plugins.get_mut(&key) {
                e.files = plan.new_files;
                e.pending = false;
                e.meta_etag = Some(r.etag.clone()).filter(|t| !t.is_empty());
            }
        }
    }
    if let Err(e) = book.save() {
        for result in results.iter_mut().filter(|r| r.is_ok()) {
            *result = Err(e.clone());
        }
    }
    results
}

/// Checks that a staged plugin may take its files' places, and returns the
/// plan and its `pending` manifest entry.
fn plan(m: &Manifest, root: &Path, r: &Ready) -> Result<(Plan, Entry), String> {
    let meta = &r.meta;
    let key = manifest::key(meta.plugin_type, &meta.name);
    let old_files: Vec<String> = m
        .plugins
        .get(&key)
        .map(|e| e.files.clone())
        .unwrap_or_default();
    let new_files: Vec<String> = r.files.iter().map(|(rel, _)| rel.clone()).collect();
    let old_only: Vec<String> = old_files
        .iter()
        .filter(|f| !new_files.contains(f))
        .cloned()
        .collect();

    // Never take over a file that someone else put there.
    let owners = m.owners();
    for rel in &new_files {
        match owners.get(rel.as_str()) {
            Some(owner) if *owner != key => {
                return Err(format!(
                    "{rel} belongs to plugin {owner} on this node; nothing installed"
                ))
            }
            Some(_) => {}
            None => {
                let dest = layout::under(root, rel)?;
                let Ok(md) = dest.symlink_metadata() else {
                    continue;
                };
                // A directory of the previous version's files that becomes a file is fine.
                let ours = md.is_dir() && {
                    let inside = files_under(&dest);
                    !inside.is_empty()
                        && inside
                            .iter()
                            .all(|f| old_only.contains(&format!("{rel}/{f}")))
                };
                if !ours {
                    return Err(format!(
                        "{} exists but was not installed by kuiper-node (placed by hand?); it is left alone and the plugin is not installed",
                        dest.display()
                    ));
                }
            }
        }
    }

    let mut union = old_files;
    for f in &new_files {
        if !union.contains(f) {
            union.push(f.clone());
        }
    }
    let pending = Entry {
        plugin_type: meta.plugin_type,
        name: meta.name.clone(),
        version: meta.version.clone(),
        sha256: meta.sha256.clone(),
        so_file: meta.so_file.clone(),
        shell_paras: meta.shell_paras.clone(),
        files: union,
        pending: true,
        meta_etag: None,
    };
    Ok((
        Plan {
            new_files,
            old_only,
        },
        pending,
    ))
}

/// Renames a staged plugin's files into place, then removes the previous
/// version's other files. Only a previous file that is in a new file's way
/// (a file that became a directory, or the reverse) goes before it.
fn move_into_place(root: &Path, r: &Ready, plan: &Plan) -> Result<(), String> {
    let mut removed: BTreeSet<&str> = BTreeSet::new();
    for (rel, src) in &r.files {
        let in_the_way = plan.old_only.iter().filter(|old| {
            rel.starts_with(&format!("{old}/")) || old.starts_with(&format!("{rel}/"))
        });
        for old in in_the_way {
            removed.insert(old);
            remove_file_and_empty_dirs(root, old).map_err(|e| {
                format!("cannot remove the previous version's {old}: {e}; the next sync retries")
            })?;
        }
        let dest = layout::under(root, rel)?;
        place(src, &dest).map_err(|e| {
            format!(
                "cannot install {}: {e}; the next sync retries",
                dest.display()
            )
        })?;
    }
    for old in plan
        .old_only
        .iter()
        .filter(|f| !removed.contains(f.as_str()))
    {
        remove_file_and_empty_dirs(root, old).map_err(|e| {
            format!("cannot remove the previous version's {old}: {e}; the next sync retries")
        })?;
    }
    Ok(())
}

/// Checks metadata read from the store before anything is downloaded.
fn check_meta(ty: PluginType, name: &str, meta: &PluginMeta) -> Result<(), String> {
    if meta.name != name || meta.plugin_type != ty {
        return Err(format!(
            "metadata {} describes {}/{}; skipped",
            keys::plugin(ty, name),
            meta.plugin_type,
            meta.name
        ));
    }
    let hex_ok = meta.sha256.len() == 64
        && meta
            .sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex_ok {
        return Err(format!(
            "metadata has an invalid sha256 {:?}; skipped",
            meta.sha256
        ));
    }
    if !keys::is_blob_key(&meta.blob) {
        return Err(format!(
            "metadata names an invalid zip key {:?}; skipped",
            meta.blob
        ));
    }
    if match_library(name, &meta.so_file).is_none() || meta.so_file.contains('/') {
        return Err(format!(
            "metadata names an invalid library {:?}; skipped",
            meta.so_file
        ));
    }
    if !meta.files.iter().any(|f| f.name == meta.so_file) {
        return Err(format!(
            "metadata does not list the library {} among its files; skipped",
            meta.so_file
        ));
    }
    let mut seen = BTreeSet::new();
    for f in &meta.files {
        layout::placement(ty, name, &meta.so_file, &f.name)?;
        if !seen.insert(f.name.as_str()) {
            return Err(format!("metadata lists {} twice; skipped", f.name));
        }
    }
    Ok(())
}

/// Verifies the downloaded zip, checks it again, and extracts the listed
/// entries into `dir` (blocking).
fn stage(
    meta: &PluginMeta,
    dir: &Path,
    download: &Download,
    limits: &ZipLimits,
    arch: &str,
    memory: &Semaphore,
) -> Result<Staged, String> {
    let (sha256, size) = match download {
        Download::Memory { zip, .. } => (hex::encode(Sha256::digest(zip)), zip.len() as u64),
        Download::File(path) => {
            hash_file(path).map_err(|e| format!("cannot read the download: {e}"))?
        }
    };
    if sha256 != meta.sha256 || size != meta.size {
        return Err(format!(
            "sha256 mismatch: the store's zip {} has sha256 {sha256} ({size} bytes), the metadata says {} ({} bytes); nothing installed",
            meta.blob,
            meta.sha256,
            meta.size
        ));
    }
    // Memory to decode entries whole in, if the budget has it now: twice
    // the largest file, for its compressed bytes and its output.
    let largest = meta.files.iter().map(|f| f.size).max().unwrap_or(0);
    let permit = u32::try_from(largest.saturating_mul(2))
        .ok()
        .filter(|&n| n > 0 && n as usize <= Semaphore::MAX_PERMITS)
        .and_then(|n| memory.try_acquire_many(n).ok());
    let whole_entry_max = if permit.is_some() { largest } else { 0 };
    match download {
        Download::Memory { zip, .. } => check_and_extract(
            meta,
            dir,
            Cursor::new(zip.as_ref()),
            limits,
            arch,
            whole_entry_max,
        ),
        Download::File(path) => {
            let file = File::open(path).map_err(|e| format!("cannot open the download: {e}"))?;
            check_and_extract(
                meta,
                dir,
                io::BufReader::new(file),
                limits,
                arch,
                whole_entry_max,
            )
        }
    }
}

/// Checks a verified zip again with [`package::inspect_and_extract`] against
/// the metadata and the node, extracting the listed entries into `dir` as
/// the check decompresses them (blocking): each entry is decompressed once.
/// On an error the caller removes `dir` with whatever was extracted.
fn check_and_extract<R: Read + Seek>(
    meta: &PluginMeta,
    dir: &Path,
    reader: R,
    limits: &ZipLimits,
    arch: &str,
    whole_entry_max: u64,
) -> Result<Staged, String> {
    let ty = meta.plugin_type;
    let mut into = Extractor {
        meta,
        whole_entry_max,
        files_dir: dir.join("files"),
        install_dir: dir.join("install"),
        staged: Staged {
            files: Vec::new(),
            install_dir: None,
        },
    };
    fs::create_dir_all(&into.files_dir)
        .map_err(|e| format!("cannot create {}: {e}", into.files_dir.display()))?;
    let info =
        package::inspect_and_extract(reader, ty, &meta.name, &meta.shell_paras, limits, &mut into)
            .map_err(|e| match e {
                package::PackageError::Extract { .. } => e.to_string(),
                e => format!("the zip fails the node's check: {e}; nothing installed"),
            })?;
    if info.so_file != meta.so_file {
        return Err(format!(
            "the zip's library is {}, the metadata says {}; nothing installed",
            info.so_file, meta.so_file
        ));
    }
    if info.arch != arch {
        return Err(format!(
            "the library is built for {}, but this node is {arch}; skipped: not installed and not loaded",
            info.arch
        ));
    }
    // Every listed file was extracted, with the size the metadata gives.
    for f in &meta.files {
        if !info.files.contains(f) {
            return Err(format!(
                "the metadata lists {} ({} bytes), which the zip does not contain as such; nothing installed",
                f.name, f.size
            ));
        }
    }
    let mut staged = into.staged;
    if !into.install_dir.join("install.sh").is_file() {
        staged.install_dir = None;
    }
    Ok(staged)
}

/// Writes the entries the metadata lists to new files in their staged
/// places (mode set, writeback started) as [`package::inspect_and_extract`]
/// decompresses them; other entries are only checked. The committer flushes
/// the files to disk ([`flush_fs`]) before renaming them into place.
struct Extractor<'a> {
    meta: &'a PluginMeta,
    /// See [`package::Extract::whole_entry_max`]: memory the node set aside.
    whole_entry_max: u64,
    /// Files to install, named by their index in `meta.files`.
    files_dir: PathBuf,
    /// Root files for `install.sh`.
    install_dir: PathBuf,
    staged: Staged,
}

/// One entry being extracted: its staged file, where that file goes once
/// the entry is intact, and its mode.
struct StagedFile {
    /// Written straight through, at most [`WRITE_PIECE`] bytes per write:
    /// the check hands over each decoded block of up to 64 KiB once (or a
    /// whole decoded entry), so a buffer would only copy the bytes once more.
    file: File,
    dest: PathBuf,
    /// Installed under the root at this path, or `None` for a file only
    /// `install.sh` sees.
    rel: Option<String>,
    mode: u32,
}

/// Most bytes a staged file takes per write: one write of megabytes (a
/// whole decoded entry) into a new file took the kernel several times as
/// long per byte (measured on ext4: `copy_folio_from_iter_atomic` 45% of the
/// node's samples, against 5% in pieces).
const WRITE_PIECE: usize = 64 << 10;

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(&buf[..buf.len().min(WRITE_PIECE)])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl package::Extract for Extractor<'_> {
    type Out = StagedFile;

    fn open(&mut self, entry: &str) -> io::Result<Option<StagedFile>> {
        let meta = self.meta;
        let Some(i) = meta.files.iter().position(|f| f.name == entry) else {
            return Ok(None);
        };
        let (dest, rel) =
            match layout::placement(meta.plugin_type, &meta.name, &meta.so_file, entry)
                .map_err(io::Error::other)?
            {
                Placement::Installed(rel) => (self.files_dir.join(i.to_string()), Some(rel)),
                Placement::InstallOnly(rel) => (
                    layout::under(&self.install_dir, &rel).map_err(io::Error::other)?,
                    None,
                ),
            };
        let mode = if entry == meta.so_file || entry == "install.sh" {
            0o755
        } else {
            0o644
        };
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = File::options().write(true).create_new(true).open(&dest)?;
        Ok(Some(StagedFile {
            file,
            dest,
            rel,
            mode,
        }))
    }

    fn whole_entry_max(&self) -> u64 {
        self.whole_entry_max
    }

    fn close(&mut self, _: &str, out: StagedFile) -> io::Result<()> {
        out.file
            .set_permissions(fs::Permissions::from_mode(out.mode))?;
        start_writeback(&out.file);
        match out.rel {
            Some(rel) => self.staged.files.push((rel, out.dest)),
            None => self.staged.install_dir = Some(self.install_dir.clone()),
        }
        Ok(())
    }
}

fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Starts writing a file's data to disk without waiting for it, so that the
/// committer's flush ([`flush_fs`]) finds little left to write (best effort).
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: plain syscall on a descriptor the caller owns.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Flushes the file system holding `dir` to disk: the data of files written
/// in it and the renames done there (blocking). One flush covers every file
/// of a group of plugins, where flushing each file would wait for the disk
/// once per file.
fn flush_fs(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: plain syscall on a descriptor this function owns.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        drop(d);
        // SAFETY: plain syscall.
        unsafe { libc::sync() };
    }
    Ok(())
}

/// Renames `src` to `dest` (replacing the directory entry, never writing into
/// an existing file). Across file systems, copies to a hidden temporary name
/// next to `dest` first. The caller flushes `dest`'s directory.
fn place(src: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    fs::create_dir_all(parent)?;
    match fs::rename(src, dest) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let file_name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut tmp = tempfile::Builder::new()
                .prefix(&format!(".{file_name}."))
                .suffix(".kuiper-node-tmp")
                .tempfile_in(parent)?;
            io::copy(&mut File::open(src)?, tmp.as_file_mut())?;
            tmp.as_file()
                .set_permissions(fs::metadata(src)?.permissions())?;
            tmp.as_file().sync_all()?;
            tmp.persist(dest).map_err(|e| e.error)?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Every file under `dir` (relative, `/`-separated); directories are walked, not listed.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Removes `rel` under `root` (absent is fine) and the directories of a
/// plugin's `etc/` tree that it leaves empty (never `plugins/{type}` or `etc/{type}`).
fn remove_file_and_empty_dirs(root: &Path, rel: &str) -> io::Result<()> {
    let path = layout::under(root, rel).map_err(io::Error::other)?;
    match fs::remove_file(&path) {
        Ok(()) => {}
        // Absent, or a parent is now a file: either way the file is not there.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) => {}
        Err(e) => return Err(e),
    }
    let mut dir = Path::new(rel).parent();
    while let Some(d) = dir {
        if d.components().count() <= 2 {
            break;
        }
        if fs::remove_dir(root.join(d)).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Runs `/bin/sh install.sh {paras...}` in `dir`, in its own process group,
/// killing the group after `timeout`. Output goes to `dir/../install.log`.
async fn run_install_script(dir: &Path, paras: &[String], timeout: Duration) -> Result<(), String> {
    let log_path = dir.with_file_name("install.log");
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("install.sh log: {e}"))?;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("install.sh")
        .args(paras)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run /bin/sh install.sh: {e}"))?;
    let pgid = child.id().map(|p| p as libc::pid_t);
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("install.sh: {e}")),
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: plain syscall on the script's own process group.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            return Err(format!(
                "install.sh did not finish within {}; it was killed and the plugin was not installed{}",
                humantime::format_duration(timeout),
                log_tail(&log_path)
            ));
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "install.sh failed ({status}); the plugin was not installed{}",
            log_tail(&log_path)
        ))
    }
}

/// The last lines of the script's output, for the error message.
fn log_tail(path: &Path) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(1000);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}
