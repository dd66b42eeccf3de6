//! The node's manifest: what `kuiper-node` installed, so that it only ever
//! updates or deletes its own files.
//!
//! Stored as `{root}/.kuiper-node/manifest.json`, written to a temporary file
//! and renamed over the old one (before and after the files of a group of
//! plugins are moved into place), so a killed sync leaves either the old or
//! the new manifest, never a half-written one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::package::PluginType;

/// The manifest format version this agent writes and reads.
pub const FORMAT: u32 = 1;

/// One installed plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Plugin type.
    #[serde(rename = "type")]
    pub plugin_type: PluginType,
    /// Plugin name.
    pub name: String,
    /// Version from the metadata (the library's file name).
    pub version: String,
    /// SHA-256 of the zip it was installed from.
    pub sha256: String,
    /// The library's file name under `plugins/{type}/`.
    pub so_file: String,
    /// `shellParas` it was installed with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell_paras: Vec<String>,
    /// Every file installed for it, relative to the root (`/`-separated).
    pub files: Vec<String>,
    /// Set while files are being moved into place: the entry's `files` then
    /// lists the old and the new files, and the next sync must install it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// The entity tag of the metadata object it was installed from, when the
    /// store reported one. A later sync whose listing shows the same tag
    /// knows the plugin is unchanged without reading its metadata. Absent in
    /// manifests written before it existed (those plugins' metadata is read
    /// once more, and the tag recorded then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_etag: Option<String>,
    /// The plugin's `id` in the metadata it was installed from (absent in
    /// manifests written before it existed, until the next read of its metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Function plugins: the function names the metadata claimed, so that a
    /// sync that reads no metadata still compares them with other plugins'.
    /// Absent for other types and in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<String>>,
}

impl Entry {
    /// `{type}/{name}`, the manifest key.
    pub fn key(&self) -> String {
        key(self.plugin_type, &self.name)
    }
}

/// The manifest key of a plugin: `{type}/{name}`.
pub fn key(ty: PluginType, name: &str) -> String {
    format!("{}/{name}", ty.as_str())
}

/// Everything `kuiper-node` installed under one root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// Installed plugins by `{type}/{name}`.
    pub plugins: BTreeMap<String, Entry>,
}

impl Manifest {
    /// Reads the manifest at `path`; an absent file is an empty manifest.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Manifest {
                    format: FORMAT,
                    plugins: BTreeMap::new(),
                })
            }
            Err(e) => return Err(format!("cannot read manifest {}: {e}", path.display())),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "manifest {} is unreadable ({e}); nothing was changed: move it away to start over (files it listed are then no longer managed)",
                path.display()
            )
        })?;
        if m.format != FORMAT {
            return Err(format!(
                "manifest {} has format {}, this kuiper-node reads format {FORMAT}",
                path.display(),
                m.format
            ));
        }
        for entry in m.plugins.values() {
            if let Some(bad) = entry
                .files
                .iter()
                .find(|f| !super::layout::is_plain_relative(f))
            {
                return Err(format!(
                    "manifest {} lists a path outside the root: {bad:?}",
                    path.display()
                ));
            }
        }
        Ok(m)
    }

    /// Writes the manifest atomically (see [`write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// The manifest as written to disk.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec_pretty(self).map_err(|e| format!("manifest: {e}"))
    }

    /// Which plugin (by key) installed each file.
    pub fn owners(&self) -> BTreeMap<&str, &str> {
        let mut owners = BTreeMap::new();
        for (k, e) in &self.plugins {
            for f in &e.files {
                owners.insert(f.as_str(), k.as_str());
            }
        }
        owners
    }

    /// The keys of the installed plugins of one type.
    pub fn names_of(&self, ty: PluginType) -> BTreeSet<String> {
        self.plugins
            .values()
            .filter(|e| e.plugin_type == ty)
            .map(|e| e.name.clone())
            .collect()
    }
}

/// Writes a manifest's bytes ([`Manifest::to_bytes`]) atomically: a
/// temporary file in the same directory, flushed to disk, then renamed over
/// `path`.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".manifest-")
        .tempfile_in(&dir)
        .map_err(|e| format!("cannot write manifest in {}: {e}", dir.display()))?;
    tmp.write_all(body)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| format!("cannot write manifest in {}: {e}", dir.display()))?;
    tmp.persist(path)
        .map_err(|e| format!("cannot replace manifest {}: {}", path.display(), e.error))?;
    sync_dir(&dir);
    Ok(())
}

/// Flushes a directory's entries (renames) to disk; best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
