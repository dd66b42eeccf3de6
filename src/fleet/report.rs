//! The node report: one JSON object per node at `nodes/{node-id}.json`,
//! written whole by the node after each sync and load and at an interval
//! while it runs. [`NodeReport::parse`] is the one way the service reads one:
//! it caps the size, checks the shape and that the report is the node's own.

use serde::{Deserialize, Serialize};

use crate::package::{validate_name, BuildFingerprint, PluginType};

/// The report format this version writes and reads.
pub const FORMAT: u32 = 1;

/// The largest report read (a node with 10,000 plugins writes about 3 MiB).
pub const MAX_REPORT_BYTES: u64 = 4 << 20;

/// The longest node id.
pub const MAX_NODE_ID_LEN: usize = 128;

/// Most entries of any list in a report.
const MAX_ENTRIES: usize = 20_000;
/// Longest free-text value (an error, a reason, a host name, a URL).
const MAX_TEXT: usize = 4096;
/// Most reasons of one plugin.
const MAX_REASONS: usize = 32;

/// How a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `kuiper-node sync`: installs and exits (before a stock eKuiper starts).
    Sync,
    /// `kuiper-node run`: loads the plugins through the plugin ABI.
    Run,
    /// `kuiper-node ekuiper`: runs stock eKuiper over what it synced.
    Ekuiper,
}

/// What became of one plugin on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Loaded: by `run`, or listed by the node's stock eKuiper with this version.
    Loaded,
    /// Installed by `sync`, which loads nothing.
    Installed,
    /// Not installed: the node's eKuiper would refuse it (`reasons` say why).
    Skipped,
    /// The sync or the load failed (`reasons` hold the error).
    Failed,
    /// Installed, but the node's stock eKuiper does not list it (or lists
    /// another version): it could not open the library.
    NotLoaded,
}

/// One plugin in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlugin {
    /// `sources`, `sinks` or `functions`.
    #[serde(rename = "type")]
    pub plugin_type: PluginType,
    /// Plugin name.
    pub name: String,
    /// The version installed, or (skipped, failed) the registry's version the outcome is about.
    #[serde(default)]
    pub version: String,
    /// The plugin's `id` in the registry's metadata, when installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// SHA-256 of the zip installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The entity tag of the metadata object this outcome comes from: what
    /// drift is computed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_etag: Option<String>,
    /// What became of it.
    pub outcome: Outcome,
    /// Why it was skipped, or the error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// The node's stock eKuiper, in `ekuiper` mode or when `--ekuiper-bin` names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EkuiperInfo {
    /// Its REST API (`ekuiper` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The version its REST API gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When it was started (RFC 3339, `ekuiper` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Its build fingerprint, read from its executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildFingerprint>,
}

/// What a node reports of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// [`FORMAT`].
    pub format: u32,
    /// The node's id, the one in its key.
    pub node_id: String,
    /// Its host name.
    pub hostname: String,
    /// Its architecture, as ELF machines are named (`x86_64`, `aarch64`).
    pub arch: String,
    /// Its C library (`glibc`, `musl`).
    pub libc: String,
    /// The version of kuiper-node.
    pub agent_version: String,
    /// How it runs.
    pub mode: Mode,
    /// Its stock eKuiper, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ekuiper: Option<EkuiperInfo>,
    /// When kuiper-node started (RFC 3339).
    pub started: String,
    /// When its last sync finished (RFC 3339).
    pub synced: String,
    /// When this report was written (RFC 3339, the node's clock).
    pub reported: String,
    /// How often it reports while it runs, in seconds; `None` for `sync`,
    /// which reports once and exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval_secs: Option<u64>,
    /// Failures not about one plugin (e.g. the store could not be read, so
    /// the last sync's plugins were used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Every plugin the node has or was given, with its outcome.
    pub plugins: Vec<NodePlugin>,
}

/// Checks a node id: 1 to 128 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node id {id:?}: use 1 to {MAX_NODE_ID_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// The default node id: the host name (reduced to the id's characters) and
/// 8 hex digits of the SHA-256 of the node's absolute root, so that one host
/// with two roots has two ids and a restart keeps its id.
pub fn default_node_id(hostname: &str, root: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let mut host: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(MAX_NODE_ID_LEN - 9)
        .collect();
    if host.is_empty() {
        host.push_str("node");
    }
    let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
    format!("{host}-{}", &hex::encode(digest)[..8])
}

fn check_text(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT {
        return Err(format!("{what} is {} bytes, at most {MAX_TEXT}", s.len()));
    }
    Ok(())
}

fn check_time(what: &str, s: &str) -> Result<(), String> {
    humantime::parse_rfc3339(s)
        .map(|_| ())
        .map_err(|_| format!("{what} {s:?} is not an RFC 3339 time"))
}

impl NodeReport {
    /// Reads the report stored under node id `id` (from its key), `size`
    /// bytes long: refuses one over [`MAX_REPORT_BYTES`], one that is not a
    /// report of this format, or one that names another node. The error is
    /// what `GET /nodes` shows for the node.
    pub fn parse(id: &str, body: &[u8]) -> Result<NodeReport, String> {
        if body.len() as u64 > MAX_REPORT_BYTES {
            return Err(too_big(body.len() as u64));
        }
        let report: NodeReport = serde_json::from_slice(body)
            .map_err(|e| format!("the report is not a node report: {e}"))?;
        report.check(id)?;
        Ok(report)
    }

    /// The shape checks of [`NodeReport::parse`].
    pub fn check(&self, id: &str) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "report format {} is not known (this service reads format {FORMAT})",
                self.format
            ));
        }
        validate_node_id(&self.node_id)?;
        if self.node_id != id {
            return Err(format!(
                "the report names node {:?}; a node writes only its own nodes/{{node-id}}.json",
                self.node_id
            ));
        }
        for (what, s) in [
            ("hostname", &self.hostname),
            ("arch", &self.arch),
            ("libc", &self.libc),
            ("agentVersion", &self.agent_version),
        ] {
            check_text(what, s)?;
        }
        for (what, s) in [
            ("started", &self.started),
            ("synced", &self.synced),
            ("reported", &self.reported),
        ] {
            check_time(what, s)?;
        }
        if let Some(e) = &self.ekuiper {
            for s in [&e.url, &e.version].into_iter().flatten() {
                check_text("ekuiper", s)?;
            }
            if let Some(t) = &e.started {
                check_time("ekuiper.started", t)?;
            }
        }
        if self.errors.len() > MAX_REASONS {
            return Err(format!(
                "{} errors, at most {MAX_REASONS}",
                self.errors.len()
            ));
        }
        for e in &self.errors {
            check_text("an error", e)?;
        }
        if self.plugins.len() > MAX_ENTRIES {
            return Err(format!(
                "{} plugins, at most {MAX_ENTRIES}",
                self.plugins.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.plugins {
            validate_name(&p.name).map_err(|e| format!("a plugin has an {e}"))?;
            if !seen.insert((p.plugin_type, p.name.to_ascii_lowercase())) {
                return Err(format!("{}/{} is listed twice", p.plugin_type, p.name));
            }
            for s in [&p.id, &p.sha256, &p.meta_etag].into_iter().flatten() {
                check_text(&p.name, s)?;
            }
            check_text(&p.name, &p.version)?;
            if p.reasons.len() > MAX_REASONS {
                return Err(format!("{}/{} has too many reasons", p.plugin_type, p.name));
            }
            for r in &p.reasons {
                check_text(&p.name, r)?;
            }
        }
        Ok(())
    }

    /// The plugin entry of `{ty}/{name}`.
    pub fn plugin(&self, ty: PluginType, name: &str) -> Option<&NodePlugin> {
        self.plugins
            .iter()
            .find(|p| p.plugin_type == ty && p.name == name)
    }
}

/// The error for a report of `size` bytes over the cap.
pub fn too_big(size: u64) -> String {
    format!("the report is {size} bytes; reports are at most {MAX_REPORT_BYTES} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        for ok in ["a", "edge-1", "Edge_1.local", &"x".repeat(128)] {
            validate_node_id(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "ä", &"x".repeat(129), "../x"] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
        }
        let root = std::path::Path::new("/kuiper");
        let id = default_node_id("Edge_7.Plant", root);
        assert!(id.starts_with("edge-7.plant-"), "{id}");
        validate_node_id(&id).unwrap();
        assert_eq!(id, default_node_id("Edge_7.Plant", root), "stable");
        assert_ne!(
            id,
            default_node_id("Edge_7.Plant", std::path::Path::new("/k2"))
        );
        validate_node_id(&default_node_id("__", root)).unwrap();
        validate_node_id(&default_node_id(&"h".repeat(300), root)).unwrap();
    }
}
