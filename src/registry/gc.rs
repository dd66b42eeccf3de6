//! Garbage collection of what interrupted requests left behind: zips no
//! metadata points at, stale function-name claims, unfinished uploads and
//! download spool files; and the clean-up of stale temporary files a service
//! does as it starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::functions::{claim_stem, Claim};
use super::{index, now_secs, Registry, Result};
use crate::fetch::SPOOL_PREFIX;
use crate::package::PluginType;
use crate::store::local::locked_by_another;
use crate::store::{keys, Store, StoreError};

/// How old a temporary file must be before a starting service removes it:
/// far longer than any request, so a file another service process sharing
/// the store or the temporary folder is still writing is never touched.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

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
    /// Uploads started and never completed, aborted: partial objects in
    /// the local store's temporary folder, incomplete multipart uploads on S3.
    pub unfinished_uploads_removed: Vec<String>,
    /// Download spool files (`kuiper-spool-*` in the temporary folder) removed.
    pub spool_files_removed: Vec<String>,
    /// Nothing was deleted.
    pub dry_run: bool,
}

/// Seconds since the Unix epoch of a file's last modification (0 if unknown).
fn modified_secs(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The download spool files in `dir` last written at or before `cutoff`
/// and not in use.
fn stale_spool_files(dir: &Path, cutoff: u64) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let spool = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SPOOL_PREFIX));
        if !spool {
            continue;
        }
        // A live download holds its spool file's lock.
        let stale = entry
            .metadata()
            .is_ok_and(|meta| meta.is_file() && modified_secs(&meta) <= cutoff);
        if stale && !locked_by_another(&entry.path()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn cutoff_of(min_age: Duration) -> u64 {
    now_secs().saturating_sub(min_age.as_secs())
}

impl<S: Store> Registry<S> {
    /// Removes zips that no metadata points at, function-name claims that no
    /// committed plugin holds, unfinished uploads and download spool files,
    /// when older than `min_age` (which must exceed the longest request, so
    /// that a create in progress keeps what it wrote).
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
                        functions.insert((f.to_ascii_lowercase(), meta.id.clone()));
                    }
                }
            }
        }
        let cutoff = cutoff_of(min_age);
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
            let Some(function) = claim_stem(&listed.key) else {
                continue;
            };
            let Some(obj) = self.store.get(&listed.key).await? else {
                continue;
            };
            let held =
                |c: &Claim| functions.contains(&(function.to_ascii_lowercase(), c.id.clone()));
            let stale = match serde_json::from_slice::<Claim>(&obj.body) {
                Ok(c) => !held(&c) && c.claimed_at <= cutoff,
                Err(_) => listed.modified <= cutoff,
            };
            if stale {
                if !dry_run {
                    // Conditional: a claim taken over since it was read stays.
                    match self.store.delete_if(&listed.key, &obj.etag).await {
                        Ok(()) => {}
                        Err(StoreError::PreconditionFailed) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                report.claims_removed.push(function.to_string());
            }
        }
        for upload in self.store.unfinished().await? {
            if upload.since > cutoff || upload.in_use {
                continue;
            }
            if !dry_run {
                self.store.abort_unfinished(&upload).await?;
            }
            report.unfinished_uploads_removed.push(upload.name);
        }
        report.spool_files_removed = self.remove_spool_files(cutoff, dry_run);
        Ok(report)
    }

    /// Removes (unless `dry_run`) the download spool files last written at
    /// or before `cutoff`; returns their paths. Failures are logged.
    fn remove_spool_files(&self, cutoff: u64, dry_run: bool) -> Vec<String> {
        let dir = &self.settings.tmp_dir;
        let files = match stale_spool_files(dir, cutoff) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list the download spool files");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for path in files {
            if !dry_run {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove a stale spool file");
                        continue;
                    }
                }
            }
            removed.push(path.display().to_string());
        }
        removed
    }

    /// Removes the temporary files that dead processes left on this machine
    /// (the local store's partial objects, download spool files) last
    /// written more than `older_than` ago; a service calls it as it starts.
    /// Returns what it removed.
    pub fn remove_stale_temp_files(&self, older_than: Duration) -> Vec<String> {
        let mut removed = self.store.remove_stale_temp_files(older_than);
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        // Strictly older, as the store's own clean-up.
        removed.extend(self.remove_spool_files(cutoff.saturating_sub(1), false));
        if !removed.is_empty() {
            tracing::info!(files = removed.len(), "removed stale temporary files");
        }
        removed
    }
}
