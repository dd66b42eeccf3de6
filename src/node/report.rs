//! The node's report of itself in the store (`nodes/{node-id}.json`, see
//! [`crate::fleet::report`]): built from a sync's outcome and what was
//! loaded, written in one request after every sync and load and again at an
//! interval while the node runs. A report that cannot be written changes
//! nothing else: the node syncs, loads and exits as it would have, and its
//! stdout report says so (`nodeReport`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;

use super::{ekuiper::EkuiperStatus, open_store, NodeStore, Report, Synced};
use crate::fleet::report::{
    default_node_id, validate_node_id, EkuiperInfo, Mode, NodePlugin, NodeReport, Outcome, FORMAT,
};
use crate::package::{BuildFingerprint, PluginType};
use crate::store::{keys, Condition, Store, StoreUrl};

/// How long one write of the report may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// The default of `--report-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Whether the report reached the store, in the stdout report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportWrite {
    /// The node's id.
    pub node_id: String,
    /// The key written (`nodes/{node-id}.json`).
    pub key: String,
    /// Whether the write succeeded.
    pub written: bool,
    /// Why it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The machine's host name (`gethostname`).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the result is NUL-terminated or truncated.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The node id: `--node-id`, checked, or [`default_node_id`] of the host
/// name and the absolute root.
pub fn node_id(given: Option<&str>, root: &Path) -> Result<String, String> {
    match given {
        Some(id) => {
            validate_node_id(id)?;
            Ok(id.to_string())
        }
        None => {
            let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
            Ok(default_node_id(&hostname(), &root))
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Writes a node's reports.
#[derive(Debug)]
pub struct Reporter {
    id: String,
    url: StoreUrl,
    store: tokio::sync::Mutex<Option<Arc<NodeStore>>>,
    mode: Mode,
    interval: Option<Duration>,
    hostname: String,
    started: String,
}

impl Reporter {
    /// A reporter for node `id` in `mode`, writing to `store` when it was
    /// opened (else opening `url` at the first write). `interval` is how
    /// often it reports while it runs (`None` for `sync`).
    pub fn new(
        id: String,
        url: StoreUrl,
        store: Option<Arc<NodeStore>>,
        mode: Mode,
        interval: Option<Duration>,
    ) -> Self {
        Reporter {
            id,
            url,
            store: tokio::sync::Mutex::new(store),
            mode,
            interval,
            hostname: hostname(),
            started: now(),
        }
    }

    /// Sets when the node started (default: when the reporter was made).
    pub fn set_started(&mut self, at: SystemTime) {
        self.started = humantime::format_rfc3339_seconds(at).to_string();
    }

    /// How often to report while running.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// The report of the node after `synced`, with what `report` says was
    /// loaded and what the node's eKuiper (`ekuiper`, `ekuiper` mode) loaded.
    pub fn build(
        &self,
        synced: &Synced,
        report: &Report,
        ekuiper: Option<EkuiperInfo>,
        synced_at: &str,
    ) -> NodeReport {
        let libc = ekuiper
            .as_ref()
            .and_then(|e| e.build.as_ref())
            .map(|b| b.libc.to_string())
            .unwrap_or_else(|| own_libc().to_string());
        NodeReport {
            format: FORMAT,
            node_id: self.id.clone(),
            hostname: self.hostname.clone(),
            arch: crate::package::host_arch().to_string(),
            libc,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            mode: self.mode,
            ekuiper,
            started: self.started.clone(),
            synced: synced_at.to_string(),
            reported: now(),
            report_interval_secs: self.interval.map(|d| d.as_secs().max(1)),
            errors: global_errors(report),
            plugins: plugins(synced, report, self.mode),
        }
    }

    /// Writes `report` as the node's report, in one request, and says how it went.
    pub async fn write(&self, report: &NodeReport) -> ReportWrite {
        let key = keys::node_report(&self.id);
        let body = Bytes::from(serde_json::to_vec(report).expect("a node report serialises"));
        let result = tokio::time::timeout(WRITE_TIMEOUT, self.put(&key, body))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(WRITE_TIMEOUT)
                ))
            });
        ReportWrite {
            node_id: self.id.clone(),
            key,
            written: result.is_ok(),
            error: result
                .err()
                .map(|e| format!("cannot write the node report: {e}")),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), String> {
        let store = {
            let mut guard = self.store.lock().await;
            match &*guard {
                Some(s) => Arc::clone(s),
                None => {
                    let s = Arc::new(open_store(&self.url).await?);
                    *guard = Some(Arc::clone(&s));
                    s
                }
            }
        };
        let result = match &*store {
            NodeStore::Local(s) => s.put(key, body, Condition::None).await,
            NodeStore::S3(s) => s.put(key, body, Condition::None).await,
        };
        result.map_err(|e| e.to_string())
    }

    /// Writes `report` again every interval, with a new `reported` time,
    /// forever (the caller drops the future to stop). Failures are said on
    /// stderr once per change of outcome.
    pub async fn keep_reporting(&self, mut report: NodeReport, progress: &super::Progress) {
        let Some(every) = self.interval else {
            return std::future::pending().await;
        };
        let mut last_ok = true;
        loop {
            tokio::time::sleep(every).await;
            report.reported = now();
            let w = self.write(&report).await;
            if w.written != last_ok {
                match &w.error {
                    Some(e) => progress.line(e),
                    None => progress.line(&format!("node report {} written again", w.key)),
                }
                last_ok = w.written;
            }
        }
    }
}

/// The C library kuiper-node itself was built for.
fn own_libc() -> crate::package::Libc {
    if cfg!(target_env = "musl") {
        crate::package::Libc::Musl
    } else {
        crate::package::Libc::Glibc
    }
}

/// Failures not about one plugin.
fn global_errors(report: &Report) -> Vec<String> {
    let mut out: Vec<String> = report
        .failed
        .iter()
        .filter(|f| f.name.is_empty())
        .map(|f| {
            if f.plugin_type.is_empty() {
                f.error.clone()
            } else {
                format!("{}: {}", f.plugin_type, f.error)
            }
        })
        .collect();
    if let Some(status) = &report.ekuiper {
        for f in status.not_loaded.iter().filter(|f| f.name.is_empty()) {
            if !out.contains(&f.error) {
                out.push(f.error.clone());
            }
        }
    }
    out.truncate(32);
    out
}

type Key = (PluginType, String);

fn type_of(s: &str) -> Option<PluginType> {
    PluginType::ALL.into_iter().find(|t| t.as_str() == s)
}

/// Every plugin the node has or was given, with its outcome.
fn plugins(synced: &Synced, report: &Report, mode: Mode) -> Vec<NodePlugin> {
    let mut out: BTreeMap<Key, NodePlugin> = BTreeMap::new();
    let loaded: Option<Vec<Key>> = report
        .loaded
        .as_ref()
        .map(|l| l.iter().map(|i| (i.plugin_type, i.name.clone())).collect());
    let ekuiper: Option<&EkuiperStatus> = report.ekuiper.as_ref();
    for e in synced.manifest.plugins.values() {
        let key = (e.plugin_type, e.name.clone());
        let outcome = match (mode, &loaded, ekuiper) {
            (Mode::Ekuiper, _, Some(st)) => {
                if st
                    .loaded
                    .iter()
                    .any(|p| p.plugin_type == e.plugin_type && p.name == e.name)
                {
                    Outcome::Loaded
                } else {
                    Outcome::NotLoaded
                }
            }
            (Mode::Run, Some(l), _) if l.contains(&key) => Outcome::Loaded,
            (Mode::Run, Some(_), _) => Outcome::Failed,
            _ => Outcome::Installed,
        };
        let reasons = match outcome {
            Outcome::NotLoaded => ekuiper
                .into_iter()
                .flat_map(|st| &st.not_loaded)
                .filter(|f| f.plugin_type == e.plugin_type.as_str() && f.name == e.name)
                .map(|f| f.error.clone())
                .collect(),
            _ => Vec::new(),
        };
        let meta_etag = e
            .meta_etag
            .clone()
            .or_else(|| synced.seen.get(&key).cloned());
        out.insert(
            key,
            NodePlugin {
                plugin_type: e.plugin_type,
                name: e.name.clone(),
                version: e.version.clone(),
                id: e.id.clone(),
                sha256: Some(e.sha256.clone()),
                meta_etag,
                outcome,
                reasons,
            },
        );
    }
    add_refused(&mut out, synced, report);
    out.into_values().collect()
}

/// Adds the skipped and failed plugins to `out`: what the registry offered
/// and the node did not take, with the tag of the metadata it refused. A
/// version it kept stays named by its installed id.
fn add_refused(out: &mut BTreeMap<Key, NodePlugin>, synced: &Synced, report: &Report) {
    for s in &report.skipped {
        let key = (s.plugin_type, s.name.clone());
        let seen = synced.seen.get(&key).cloned();
        let entry = out.entry(key).or_insert_with(|| NodePlugin {
            plugin_type: s.plugin_type,
            name: s.name.clone(),
            version: String::new(),
            id: None,
            sha256: None,
            meta_etag: None,
            outcome: Outcome::Skipped,
            reasons: Vec::new(),
        });
        entry.version = s.version.clone();
        entry.outcome = Outcome::Skipped;
        entry.meta_etag = seen;
        entry.reasons = s.reasons.clone();
    }
    for f in &report.failed {
        let Some(ty) = type_of(&f.plugin_type).filter(|_| !f.name.is_empty()) else {
            continue;
        };
        let key = (ty, f.name.clone());
        let seen = synced.seen.get(&key).cloned();
        let entry = out.entry(key).or_insert_with(|| NodePlugin {
            plugin_type: ty,
            name: f.name.clone(),
            version: String::new(),
            id: None,
            sha256: None,
            meta_etag: None,
            outcome: Outcome::Failed,
            reasons: Vec::new(),
        });
        if entry.outcome == Outcome::NotLoaded {
            continue;
        }
        entry.outcome = Outcome::Failed;
        if seen.is_some() {
            entry.meta_etag = seen;
        }
        if !entry.reasons.contains(&f.error) {
            entry.reasons.push(f.error.clone());
        }
    }
}

/// What the report says of the node's eKuiper: its build (from the gate)
/// and, in `ekuiper` mode, its REST API and version.
pub fn ekuiper_info(
    build: Option<&BuildFingerprint>,
    status: Option<&EkuiperStatus>,
    started: Option<&str>,
) -> Option<EkuiperInfo> {
    if build.is_none() && status.is_none() && started.is_none() {
        return None;
    }
    Some(EkuiperInfo {
        url: status.map(|s| s.url.clone()),
        version: status.map(|s| s.version.clone()).filter(|v| !v.is_empty()),
        started: started.map(str::to_string),
        build: build.cloned(),
    })
}

/// The current time as a report shows it (RFC 3339).
pub fn timestamp() -> String {
    now()
}
