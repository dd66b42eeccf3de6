//! Bringing a node's directory to the registry's state.
//!
//! For each plugin listed in the store: unchanged (same zip, same
//! `shellParas`, files present) plugins are left alone; new or changed ones
//! are downloaded into `{root}/.kuiper-node/tmp/`, verified against the
//! metadata's SHA-256, checked again with [`inspect_zip`], extracted there
//! (only the entries the metadata lists), optionally prepared by `install.sh`,
//! and only then renamed into place. Plugins the manifest lists but the store
//! no longer has are removed, file by file, as the manifest lists them.
//!
//! Crash safety: before the first file of a plugin is renamed into place the
//! manifest marks the plugin `pending` and lists both its old and new files;
//! after the last old file is removed the entry is rewritten with only the new
//! files. A sync killed in between leaves a `pending` entry that the next sync
//! installs again (and, if the plugin was dropped meanwhile, removes file by
//! file). Half-written files only ever exist under `.kuiper-node/tmp/`, which
//! every sync empties first, and never with a `.so` name in `plugins/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use sha2::{Digest, Sha256};

use super::layout::{self, Placement, STATE_DIR};
use super::manifest::{self, Entry, Manifest};
use super::{Failure, PluginRef, Progress, Report};
use crate::package::{self, inspect_zip, match_library, validate_name, PluginType, ZipLimits};
use crate::registry::PluginMeta;
use crate::store::{keys, Store};

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
}

impl SyncOptions {
    /// Defaults for `root`: 8 parallel downloads, no install scripts, a
    /// 5-minute script timeout, the default zip limits, this machine's architecture.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SyncOptions {
            root: root.into(),
            jobs: 8,
            allow_install_scripts: false,
            install_timeout: Duration::from_secs(300),
            zip_limits: ZipLimits::default(),
            arch: package::host_arch().to_string(),
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
    /// The metadata disappeared between listing and reading it.
    Gone,
}

struct Ctx<'a, S> {
    store: &'a S,
    opts: &'a SyncOptions,
    root: PathBuf,
    tmp: PathBuf,
    manifest_path: PathBuf,
    manifest: Mutex<Manifest>,
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
        manifest_path,
        manifest: Mutex::new(manifest),
        report: Mutex::new(Report::default()),
        progress,
    };

    // What the registry holds, type by type. A type that cannot be listed is
    // left exactly as it is on the node.
    let mut listed: Vec<(PluginType, String)> = Vec::new();
    let mut listed_types: BTreeMap<PluginType, BTreeSet<String>> = BTreeMap::new();
    for ty in PluginType::ALL {
        let prefix = keys::plugins_prefix(ty);
        match store.list(&prefix).await {
            Ok(objects) => {
                let names: BTreeSet<String> = objects
                    .iter()
                    .filter_map(|o| keys::plugin_name(ty, &o.key))
                    .map(str::to_string)
                    .collect();
                listed.extend(names.iter().map(|n| (ty, n.clone())));
                listed_types.insert(ty, names);
            }
            Err(e) => ctx.fail_global(
                Some(ty),
                format!(
                    "cannot list {prefix} in store {}: {e}; installed {ty} plugins were left as they are",
                    store.location()
                ),
            ),
        }
    }

    // Dropped plugins go first, so that their files free the names new ones may use.
    let dropped: Vec<(PluginType, String)> = {
        let m = ctx.manifest.lock().expect("manifest lock");
        m.plugins
            .values()
            .filter(|e| {
                listed_types
                    .get(&e.plugin_type)
                    .is_some_and(|names| !names.contains(&e.name))
            })
            .map(|e| (e.plugin_type, e.name.clone()))
            .collect()
    };
    progress.set_length((dropped.len() + listed.len()) as u64);
    for (ty, name) in dropped {
        ctx.remove_and_report(ty, &name);
        progress.inc();
    }

    let jobs = opts.jobs.max(1);
    stream::iter(listed)
        .map(|(ty, name)| {
            let ctx = &ctx;
            async move {
                ctx.sync_one(ty, &name).await;
                ctx.progress.inc();
            }
        })
        .buffer_unordered(jobs)
        .collect::<Vec<()>>()
        .await;

    let _ = fs::remove_dir_all(&ctx.tmp);
    let mut report = ctx.report.into_inner().expect("report lock");
    report.sort();
    Ok(Synced {
        report,
        manifest: ctx.manifest.into_inner().expect("manifest lock"),
        root,
    })
}

/// The staged files of one plugin, ready to be renamed into place.
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

impl<S: Store> Ctx<'_, S> {
    fn fail_global(&self, ty: Option<PluginType>, error: String) {
        self.progress.line(&format!("error: {error}"));
        self.report
            .lock()
            .expect("report lock")
            .failed
            .push(Failure {
                plugin_type: ty.map(|t| t.as_str().to_string()).unwrap_or_default(),
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

    async fn sync_one(&self, ty: PluginType, name: &str) {
        let (verb, version) = match self.install_one(ty, name).await {
            Ok(Outcome::Installed(v)) => ("installed", v),
            Ok(Outcome::Updated(v)) => ("updated", v),
            Ok(Outcome::Unchanged(v)) => ("unchanged", v),
            Ok(Outcome::Gone) => return,
            Err(e) => return self.fail(ty, name, e),
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

    /// Reads the metadata and installs the plugin unless it is unchanged.
    async fn install_one(&self, ty: PluginType, name: &str) -> Result<Outcome, String> {
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
            self.remove_and_report(ty, name);
            return Ok(Outcome::Gone);
        };
        let meta: PluginMeta = serde_json::from_slice(&obj.body)
            .map_err(|e| format!("metadata {meta_key} is unreadable: {e}"))?;
        check_meta(ty, name, &meta)?;

        let previous = self
            .manifest
            .lock()
            .expect("manifest lock")
            .plugins
            .get(&manifest::key(ty, name))
            .cloned();
        if let Some(prev) = &previous {
            let same =
                !prev.pending && prev.sha256 == meta.sha256 && prev.shell_paras == meta.shell_paras;
            if same
                && prev
                    .files
                    .iter()
                    .all(|f| self.root.join(f).symlink_metadata().is_ok())
            {
                return Ok(Outcome::Unchanged(prev.version.clone()));
            }
        }

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
        let zip_path = work.0.join("download.zip");
        let blob_key = keys::blob(&meta.sha256);
        let found = self
            .store
            .get_to_file(&blob_key, &zip_path)
            .await
            .map_err(|e| format!("cannot download {blob_key}: {e}"))?;
        if !found {
            return Err(format!(
                "the zip {blob_key} is missing from the store; nothing installed"
            ));
        }

        let staged = {
            let (meta, dir, limits, arch) = (
                meta.clone(),
                work.0.clone(),
                self.opts.zip_limits,
                self.opts.arch.clone(),
            );
            tokio::task::spawn_blocking(move || stage(&meta, &dir, &zip_path, &limits, &arch))
                .await
                .map_err(|e| format!("staging failed: {e}"))??
        };

        if let Some(dir) = &staged.install_dir {
            run_install_script(dir, &meta.shell_paras, self.opts.install_timeout).await?;
        }

        self.apply(&meta, staged)?;
        Ok(if previous.is_some() {
            Outcome::Updated(meta.version)
        } else {
            Outcome::Installed(meta.version)
        })
    }

    /// Moves the staged files into place and records them, crash-safely.
    fn apply(&self, meta: &PluginMeta, staged: Staged) -> Result<(), String> {
        let ty = meta.plugin_type;
        let key = manifest::key(ty, &meta.name);
        let mut m = self.manifest.lock().expect("manifest lock");
        let old_files: Vec<String> = m
            .plugins
            .get(&key)
            .map(|e| e.files.clone())
            .unwrap_or_default();

        let new_files: Vec<String> = staged.files.iter().map(|(rel, _)| rel.clone()).collect();
        let old_only: Vec<String> = old_files
            .iter()
            .filter(|f| !new_files.contains(f))
            .cloned()
            .collect();

        // Never take over a file that someone else put there.
        {
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
                        let dest = layout::under(&self.root, rel)?;
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
        }

        let mut union = old_files.clone();
        for f in &new_files {
            if !union.contains(f) {
                union.push(f.clone());
            }
        }
        let mut entry = Entry {
            plugin_type: ty,
            name: meta.name.clone(),
            version: meta.version.clone(),
            sha256: meta.sha256.clone(),
            so_file: meta.so_file.clone(),
            shell_paras: meta.shell_paras.clone(),
            files: union,
            pending: true,
        };
        m.plugins.insert(key.clone(), entry.clone());
        m.save(&self.manifest_path)?;

        // New files first, then the previous version's other files go. Only a
        // previous file that is in a new file's way (a file that became a
        // directory, or the reverse) goes before it.
        let mut removed: BTreeSet<&str> = BTreeSet::new();
        for (rel, src) in &staged.files {
            let in_the_way = old_only.iter().filter(|old| {
                rel.starts_with(&format!("{old}/")) || old.starts_with(&format!("{rel}/"))
            });
            for old in in_the_way {
                removed.insert(old);
                remove_file_and_empty_dirs(&self.root, old).map_err(|e| {
                    format!(
                        "cannot remove the previous version's {old}: {e}; the next sync retries"
                    )
                })?;
            }
            let dest = layout::under(&self.root, rel)?;
            place(src, &dest).map_err(|e| {
                format!(
                    "cannot install {}: {e}; the next sync retries",
                    dest.display()
                )
            })?;
        }
        for old in old_only.iter().filter(|f| !removed.contains(f.as_str())) {
            remove_file_and_empty_dirs(&self.root, old).map_err(|e| {
                format!("cannot remove the previous version's {old}: {e}; the next sync retries")
            })?;
        }

        entry.files = new_files;
        entry.pending = false;
        m.plugins.insert(key, entry);
        m.save(&self.manifest_path)
    }

    /// Removes an installed plugin's files as the manifest lists them and reports it.
    fn remove_and_report(&self, ty: PluginType, name: &str) {
        let key = manifest::key(ty, name);
        let mut m = self.manifest.lock().expect("manifest lock");
        let Some(entry) = m.plugins.get(&key).cloned() else {
            return;
        };
        let mut left = Vec::new();
        let mut errors = Vec::new();
        for f in &entry.files {
            if let Err(e) = remove_file_and_empty_dirs(&self.root, f) {
                errors.push(format!("{f}: {e}"));
                left.push(f.clone());
            }
        }
        let saved = if left.is_empty() {
            m.plugins.remove(&key);
            m.save(&self.manifest_path)
        } else {
            let mut e = entry.clone();
            e.files = left;
            m.plugins.insert(key, e);
            m.save(&self.manifest_path)
        };
        drop(m);
        if !errors.is_empty() {
            self.fail(
                ty,
                name,
                format!(
                    "dropped from the registry, but cannot remove {}",
                    errors.join(", ")
                ),
            );
        } else if let Err(e) = saved {
            self.fail(ty, name, e);
        } else {
            self.progress
                .line(&format!("removed   {ty}/{name} {}", entry.version));
            self.report
                .lock()
                .expect("report lock")
                .removed
                .push(PluginRef {
                    plugin_type: ty,
                    name: name.to_string(),
                    version: entry.version,
                });
        }
    }
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
    zip_path: &Path,
    limits: &ZipLimits,
    arch: &str,
) -> Result<Staged, String> {
    let (sha256, size) =
        hash_file(zip_path).map_err(|e| format!("cannot read the download: {e}"))?;
    if sha256 != meta.sha256 || size != meta.size {
        return Err(format!(
            "sha256 mismatch: the store's zip {} has sha256 {sha256} ({size} bytes), the metadata says {} ({} bytes); nothing installed",
            keys::blob(&meta.sha256),
            meta.sha256,
            meta.size
        ));
    }
    let file = File::open(zip_path).map_err(|e| format!("cannot open the download: {e}"))?;
    let ty = meta.plugin_type;
    let info = inspect_zip(
        io::BufReader::new(file),
        ty,
        &meta.name,
        &meta.shell_paras,
        limits,
    )
    .map_err(|e| format!("the zip fails the node's check: {e}; nothing installed"))?;
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
    for f in &meta.files {
        if !info.files.contains(f) {
            return Err(format!(
                "the metadata lists {} ({} bytes), which the zip does not contain as such; nothing installed",
                f.name, f.size
            ));
        }
    }

    let mut zip = zip::ZipArchive::new(io::BufReader::new(
        File::open(zip_path).map_err(|e| format!("cannot open the download: {e}"))?,
    ))
    .map_err(|e| format!("cannot read the zip: {e}"))?;
    let files_dir = dir.join("files");
    let install_dir = dir.join("install");
    fs::create_dir_all(&files_dir)
        .map_err(|e| format!("cannot create {}: {e}", files_dir.display()))?;
    let mut staged = Staged {
        files: Vec::new(),
        install_dir: None,
    };
    for (i, f) in meta.files.iter().enumerate() {
        let (dest, rel) = match layout::placement(ty, &meta.name, &meta.so_file, &f.name)? {
            Placement::Installed(rel) => (files_dir.join(i.to_string()), Some(rel)),
            Placement::InstallOnly(rel) => (layout::under(&install_dir, &rel)?, None),
        };
        let mode = if f.name == meta.so_file || f.name == "install.sh" {
            0o755
        } else {
            0o644
        };
        let mut entry = zip
            .by_name(&f.name)
            .map_err(|e| format!("cannot read {} from the zip: {e}", f.name))?;
        extract(&mut entry, &dest, f.size, mode)
            .map_err(|e| format!("cannot extract {}: {e}", f.name))?;
        match rel {
            Some(rel) => staged.files.push((rel, dest)),
            None => staged.install_dir = Some(install_dir.clone()),
        }
    }
    if !install_dir.join("install.sh").is_file() {
        staged.install_dir = None;
    }
    Ok(staged)
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

/// Writes exactly `size` bytes of `reader` to a new file `dest`, flushed to disk.
fn extract(reader: &mut impl Read, dest: &Path, size: u64, mode: u32) -> io::Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut out = File::options().write(true).create_new(true).open(dest)?;
    let copied = io::copy(&mut reader.take(size + 1), &mut out)?;
    if copied != size {
        return Err(io::Error::other(format!(
            "expected {size} bytes, the zip holds {copied}"
        )));
    }
    out.set_permissions(fs::Permissions::from_mode(mode))?;
    out.sync_all()?;
    Ok(())
}

/// Renames `src` to `dest` (replacing the directory entry, never writing into
/// an existing file). Across file systems, copies to a hidden temporary name
/// next to `dest` first.
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
    manifest::sync_dir(parent);
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
