//! The node agent behind `kuiper-node`: syncs a node's directory with the
//! registry's store and loads the synced plugins through the plugin ABI v1.
//!
//! - [`sync`]: reconcile `{root}` with the store (download, verify, check,
//!   extract, rename into place, remove dropped plugins), crash-safely.
//! - [`layout`]: eKuiper's on-disk layout.
//! - [`manifest`]: what the agent installed, so it never touches other files.
//! - [`beneath`]: writes under the root that refuse symbolic links.
//! - [`loader`]: `libloading` and the ABI v1 descriptor checks.
//! - [`needed`]: shared libraries a library needs that this node lacks.
//! - [`probe`]: each library loaded in a child process first, so that one
//!   that crashes fails alone.
//! - [`report`]: the node's report of itself in the store (`nodes/{id}.json`).
//! - [`start`], [`supervise`], [`ekuiper`]: the sync or the last sync's
//!   plugins, the gate's input, and `kuiper-node ekuiper`, which runs stock
//!   eKuiper as a child after the sync, registers function lists through its
//!   REST API and reports what it loaded.
//!
//! Changes take effect when a node (re)starts: a library that is loaded is
//! never written to; an update renames a new file into place and removes the
//! old name, which leaves a mapped library intact.

pub mod beneath;
pub mod ekuiper;
pub mod layout;
pub mod loader;
pub mod manifest;
pub mod needed;
pub mod probe;
pub mod report;
pub mod start;
pub mod supervise;
pub mod sync;

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::package::PluginType;
use crate::store::local::LocalStore;
use crate::store::s3::S3Store;
use crate::store::StoreUrl;

pub use loader::{LoadedInfo, LoadedPlugin};
pub use sync::{sync, Seen, SyncOptions, Synced, DEFAULT_MEMORY_BYTES};

/// A plugin named in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginRef {
    /// `sources`, `sinks` or `functions`.
    #[serde(rename = "type")]
    pub plugin_type: PluginType,
    /// Plugin name.
    pub name: String,
    /// Version from the metadata (`""` when the library's name has none).
    pub version: String,
}

/// A failure in a report. `name` is empty for a failure that is not about one
/// plugin (e.g. a type that cannot be listed), and `type` too when it is not
/// about one type either (e.g. the store cannot be opened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// `sources`, `sinks`, `functions` or `""`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Plugin name or `""`.
    pub name: String,
    /// What went wrong and what was (not) done.
    pub error: String,
}

/// A plugin the gate skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// `sources`, `sinks` or `functions`.
    #[serde(rename = "type")]
    pub plugin_type: PluginType,
    /// Plugin name.
    pub name: String,
    /// The registry's version, which was not installed.
    pub version: String,
    /// Each difference from the node's eKuiper build
    /// (`built with go1.25.4, node has go1.26.8`).
    pub reasons: Vec<String>,
}

/// What the gate checked plugins against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateInfo {
    /// Whether plugins were checked.
    pub checked: bool,
    /// The eKuiper executable read (`--ekuiper-bin`, or the one `ekuiper` runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ekuiper: Option<String>,
    /// Its Go version and C library, or why nothing was checked.
    pub detail: String,
    /// Its fingerprint, for the node report.
    #[serde(skip)]
    pub build: Option<crate::package::BuildFingerprint>,
}

/// The one JSON document `kuiper-node` prints on stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Plugins installed by this run (new on this node).
    pub installed: Vec<PluginRef>,
    /// Plugins replaced by another version (or repaired).
    pub updated: Vec<PluginRef>,
    /// Plugins removed because the registry dropped them.
    pub removed: Vec<PluginRef>,
    /// Plugins already in the registry's state (nothing downloaded).
    pub unchanged: Vec<PluginRef>,
    /// `run` only: the plugins loaded, with their descriptors' values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded: Option<Vec<LoadedInfo>>,
    /// `ekuiper` only: what the stock eKuiper showed after it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ekuiper: Option<ekuiper::EkuiperStatus>,
    /// Plugins the node's stock eKuiper would refuse (see `--ekuiper-bin`):
    /// not downloaded, and what the node had of them kept as it was.
    pub skipped: Vec<Skipped>,
    /// Whether plugins were checked against the node's eKuiper build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateInfo>,
    /// Everything that did not work, one entry per plugin.
    pub failed: Vec<Failure>,
    /// Whether the node's report reached the store (`nodes/{node-id}.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_report: Option<report::ReportWrite>,
}

impl Report {
    /// A report with only a global failure.
    pub fn fatal(error: String) -> Self {
        Report {
            failed: vec![Failure {
                plugin_type: String::new(),
                name: String::new(),
                error,
            }],
            ..Report::default()
        }
    }

    /// Prints the report as one line of JSON on stdout.
    pub fn print(&self) {
        use std::io::Write as _;
        let json = serde_json::to_string(self).expect("report serializes");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }

    /// Whether everything synced (and loaded).
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }

    /// Sorts every list by type, then name.
    pub fn sort(&mut self) {
        for list in [
            &mut self.installed,
            &mut self.updated,
            &mut self.removed,
            &mut self.unchanged,
        ] {
            list.sort_by(|a, b| (a.plugin_type, &a.name).cmp(&(b.plugin_type, &b.name)));
        }
        self.skipped
            .sort_by(|a, b| (a.plugin_type, &a.name).cmp(&(b.plugin_type, &b.name)));
        if let Some(l) = &mut self.loaded {
            l.sort_by(|a, b| (a.plugin_type, &a.name).cmp(&(b.plugin_type, &b.name)));
        }
        self.failed
            .sort_by(|a, b| (&a.plugin_type, &a.name).cmp(&(&b.plugin_type, &b.name)));
    }
}

/// Human-readable progress on stderr: a progress bar with messages above it
/// on a terminal, plain lines otherwise.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn stderr() -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} plugins {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            Progress { bar: Some(bar) }
        } else {
            Progress { bar: None }
        }
    }

    /// Progress that prints nothing.
    pub fn hidden() -> Self {
        Progress {
            bar: Some(ProgressBar::hidden()),
        }
    }

    /// Sets the number of plugins to go through.
    pub fn set_length(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_length(n);
        }
    }

    /// One plugin done.
    pub fn inc(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// A message line.
    pub fn line(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("kuiper-node: {msg}")),
            None => eprintln!("kuiper-node: {msg}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Lets the allocator keep the memory of freed download buffers for the next
/// download instead of returning it to the kernel after each plugin (glibc
/// gives allocations of a few MiB back at once and faults them in again for
/// the next zip, which costs more than the copy itself), in one heap for all
/// threads, so that what one thread freed serves the next (with a heap per
/// thread, each kept its own: the peak RSS of a sync of 200 deflated plugins
/// with the default 64 MiB budget was 88-112 MiB, against 41-50 MiB with
/// one). Call once, early, before other threads start; [`release_memory`]
/// gives the kept memory back when the sync is done. The one arena stays for
/// the life of the process, so plugins that `run` loads share it too.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain glibc tuning calls, made before the allocations they tune.
    unsafe {
        // One arena: the buffers are few and large, so threads seldom wait
        // for it.
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Zips up to the in-memory limit come from the heap, not from mmap
        // (32 MiB is glibc's largest mmap threshold on 64-bit).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Freed memory stays in the heap up to this much at its top.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Returns the memory the allocator kept ([`keep_freed_memory`]) to the
/// kernel, e.g. before `run` waits with the plugins loaded.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain glibc call.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens the registry's store for reading. Unlike the service, a node never
/// creates a store: a local store directory that does not exist is an error
/// (otherwise a mistyped path would look like an empty registry and every
/// plugin would be removed).
pub async fn open_store(url: &StoreUrl) -> Result<NodeStore, String> {
    match url {
        StoreUrl::Local(path) => {
            if !path.is_dir() {
                return Err(format!(
                    "store {}: no such directory (a node never creates the store; check --store / KUIPER_STORE)",
                    path.display()
                ));
            }
            let store =
                LocalStore::new(path).map_err(|e| format!("store {}: {e}", path.display()))?;
            Ok(NodeStore::Local(store))
        }
        StoreUrl::S3 { bucket, prefix } => {
            Ok(NodeStore::S3(crate::server::open_s3(bucket, prefix).await?))
        }
    }
}

/// The opened store, one variant per backend.
#[derive(Debug)]
pub enum NodeStore {
    /// A local directory.
    Local(LocalStore),
    /// An S3 bucket.
    S3(S3Store),
}

impl NodeStore {
    /// Syncs `opts.root` from this store.
    pub async fn sync(&self, opts: &SyncOptions, progress: &Progress) -> Result<Synced, String> {
        match self {
            NodeStore::Local(s) => sync::sync(s, opts, progress).await,
            NodeStore::S3(s) => sync::sync(s, opts, progress).await,
        }
    }
}

/// What the node has installed, from its manifest, without syncing: `run`
/// falls back to it when the store cannot be used, so that a node restarting
/// during an outage still loads the plugins it had.
pub fn installed(root: &Path, report: Report) -> Result<Synced, String> {
    let root = root
        .canonicalize()
        .map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    beneath::check(&root, layout::STATE_DIR, true)?;
    let manifest = manifest::Manifest::load(&root.join(layout::STATE_DIR).join("manifest.json"))?;
    Ok(Synced {
        report,
        manifest,
        root,
        seen: Default::default(),
    })
}

/// Loads every plugin the manifest lists as installed (not pending), in
/// type then name order, adding what happened to `report`. With a
/// `prober`, each library is loaded in a child process first
/// ([`probe::Prober::check`]) and only loaded here if that went well; a
/// library that crashed this process on an earlier start is skipped.
/// Returns the loaded libraries, which stay mapped as long as they are kept.
pub fn load_installed(
    synced: &Synced,
    report: &mut Report,
    progress: &Progress,
    mut prober: Option<&mut probe::Prober>,
) -> Vec<LoadedPlugin> {
    let mut loaded = Vec::new();
    let mut infos = Vec::new();
    let mut entries: Vec<_> = synced
        .manifest
        .plugins
        .values()
        .filter(|e| !e.pending)
        .collect();
    entries.sort_by(|a, b| (a.plugin_type, &a.name).cmp(&(b.plugin_type, &b.name)));
    for e in entries {
        let rel = layout::library_path(e.plugin_type, &e.so_file);
        let result = layout::under(&synced.root, &rel).and_then(|path| {
            if let Some(p) = prober.as_deref_mut() {
                p.check(&path, e.plugin_type, &e.name)?;
            }
            load_one(&path, e.plugin_type, &e.name)
        });
        if let Some(p) = prober.as_deref_mut() {
            p.loaded();
        }
        match result {
            Ok(p) => {
                progress.line(&format!(
                    "loaded    {}/{} {} ({})",
                    e.plugin_type, p.info.name, p.info.version, p.info.symbol
                ));
                infos.push(p.info.clone());
                loaded.push(p);
            }
            Err(error) => {
                progress.line(&format!("failed    {}/{}: {error}", e.plugin_type, e.name));
                report.failed.push(Failure {
                    plugin_type: e.plugin_type.as_str().to_string(),
                    name: e.name.clone(),
                    error,
                });
            }
        }
    }
    if let Some(p) = prober {
        p.retain(&|key| synced.manifest.plugins.contains_key(key));
        if let Err(e) = p.save() {
            progress.line(&format!("cannot save the probe cache: {e}"));
        }
    }
    report.loaded = Some(infos);
    report.sort();
    loaded
}

fn load_one(path: &Path, ty: PluginType, name: &str) -> Result<LoadedPlugin, String> {
    loader::load(path, ty, name)
}
