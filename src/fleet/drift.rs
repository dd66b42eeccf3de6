//! Drift: a node's report against the registry, from one listing of the
//! registry's metadata. Each plugin the node reported carries the entity tag
//! of the metadata it synced from; a listed tag that differs means the
//! registry changed that plugin since. Pure functions, no I/O.

use std::collections::BTreeMap;

use serde::Serialize;

use super::report::{NodeReport, Outcome};
use crate::package::PluginType;

/// What the registry holds: every plugin with its metadata's entity tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryView {
    /// `(type, name)` -> the metadata's entity tag.
    pub plugins: BTreeMap<(PluginType, String), String>,
}

/// A node's state, one of a fixed set (`GET /nodes?state=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// It runs exactly what the registry holds.
    Current,
    /// The registry added, updated or deleted plugins since it synced.
    RestartNeeded,
    /// Its last sync or load had failures or skips.
    Failing,
    /// It has not reported within the stale time.
    Stale,
    /// Its report cannot be read (too big, not a report, another node's).
    Invalid,
}

impl NodeState {
    /// Every state, as documented.
    pub const ALL: [NodeState; 5] = [
        NodeState::Current,
        NodeState::RestartNeeded,
        NodeState::Failing,
        NodeState::Stale,
        NodeState::Invalid,
    ];

    /// The name in answers and in `?state=`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Current => "current",
            NodeState::RestartNeeded => "restart-needed",
            NodeState::Failing => "failing",
            NodeState::Stale => "stale",
            NodeState::Invalid => "invalid",
        }
    }

    /// Parses a `?state=` value.
    pub fn parse(s: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One plugin's state on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginState {
    /// Runs what the registry holds.
    Current,
    /// The registry holds a newer build.
    Outdated,
    /// Deleted in the registry, still on the node until it restarts.
    Removed,
    /// Published after the node synced.
    Pending,
    /// The node's eKuiper would refuse it: not installed.
    Skipped,
    /// Its sync or load failed.
    Failed,
    /// Installed, but the node's stock eKuiper did not load it.
    NotLoaded,
}

impl PluginState {
    /// Whether a restart of the node would pick up a registry change.
    pub fn restart_needed(self) -> bool {
        matches!(
            self,
            PluginState::Outdated | PluginState::Removed | PluginState::Pending
        )
    }

    /// Whether the node could not install or load it.
    pub fn failing(self) -> bool {
        matches!(
            self,
            PluginState::Skipped | PluginState::Failed | PluginState::NotLoaded
        )
    }
}

/// One plugin of [`plugin_states`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// `sources`, `sinks` or `functions`.
    #[serde(rename = "type")]
    pub plugin_type: PluginType,
    /// Plugin name.
    pub name: String,
    /// The version the node reported (`""` for a pending plugin).
    pub version: String,
    /// Its state.
    pub state: PluginState,
    /// Why it was skipped, or the error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// Every plugin's state on the node of `report`, sorted by type and name:
/// those it reported, and those the registry holds that it never saw.
pub fn plugin_states(report: &NodeReport, registry: &RegistryView) -> Vec<PluginStatus> {
    let mut out = Vec::new();
    for p in &report.plugins {
        let listed = registry.plugins.get(&(p.plugin_type, p.name.clone()));
        let changed = match (listed, &p.meta_etag) {
            (Some(now), Some(then)) => now != then,
            // A node that read no tag (an older store) cannot tell.
            _ => false,
        };
        let installed = !p.version.is_empty() || p.sha256.is_some();
        let state = match (listed, p.outcome) {
            (None, Outcome::Loaded | Outcome::Installed | Outcome::NotLoaded) => {
                PluginState::Removed
            }
            // Skipped or failed, and gone from the registry: what the node
            // kept of it goes at the next restart.
            (None, _) if installed && p.id.is_some() => PluginState::Removed,
            (None, _) => continue,
            (Some(_), _) if changed => PluginState::Outdated,
            (Some(_), Outcome::Loaded | Outcome::Installed) => PluginState::Current,
            (Some(_), Outcome::Skipped) => PluginState::Skipped,
            (Some(_), Outcome::Failed) => PluginState::Failed,
            (Some(_), Outcome::NotLoaded) => PluginState::NotLoaded,
        };
        out.push(PluginStatus {
            plugin_type: p.plugin_type,
            name: p.name.clone(),
            version: p.version.clone(),
            state,
            reasons: p.reasons.clone(),
        });
    }
    for (ty, name) in registry.plugins.keys() {
        if report.plugin(*ty, name).is_none() {
            out.push(PluginStatus {
                plugin_type: *ty,
                name: name.clone(),
                version: String::new(),
                state: PluginState::Pending,
                reasons: Vec::new(),
            });
        }
    }
    out.sort_by(|a, b| (a.plugin_type, &a.name).cmp(&(b.plugin_type, &b.name)));
    out
}

/// The node's state: `stale` when its last report is older than
/// `stale_after` (`age` is how long ago the store received it), else
/// `failing` when a plugin (or the sync as a whole) failed, else
/// `restart-needed` when a restart would pick up a change, else `current`.
pub fn node_state(
    report: &NodeReport,
    plugins: &[PluginStatus],
    age: std::time::Duration,
    stale_after: Option<std::time::Duration>,
) -> NodeState {
    if stale_after.is_some_and(|limit| age > limit) {
        NodeState::Stale
    } else if !report.errors.is_empty() || plugins.iter().any(|p| p.state.failing()) {
        NodeState::Failing
    } else if plugins.iter().any(|p| p.state.restart_needed()) {
        NodeState::RestartNeeded
    } else {
        NodeState::Current
    }
}

/// Counts of plugin states, for a node's summary.
pub fn counts(plugins: &[PluginStatus]) -> BTreeMap<PluginState, usize> {
    let mut out = BTreeMap::new();
    for p in plugins {
        *out.entry(p.state).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::report::{Mode, NodePlugin, FORMAT};
    use super::*;
    use std::time::Duration;

    fn report(plugins: Vec<NodePlugin>) -> NodeReport {
        NodeReport {
            format: FORMAT,
            node_id: "n1".into(),
            hostname: "h".into(),
            arch: "x86_64".into(),
            libc: "glibc".into(),
            agent_version: "0.1.0".into(),
            mode: Mode::Run,
            ekuiper: None,
            started: "2026-01-01T00:00:00Z".into(),
            synced: "2026-01-01T00:00:00Z".into(),
            reported: "2026-01-01T00:00:00Z".into(),
            report_interval_secs: Some(60),
            errors: vec![],
            plugins,
        }
    }

    fn plugin(name: &str, etag: &str, outcome: Outcome) -> NodePlugin {
        NodePlugin {
            plugin_type: PluginType::Sink,
            name: name.into(),
            version: "1.0.0".into(),
            id: Some(format!("id-{name}")),
            sha256: Some("00".into()),
            meta_etag: Some(etag.into()),
            outcome,
            reasons: vec![],
        }
    }

    fn view(entries: &[(&str, &str)]) -> RegistryView {
        RegistryView {
            plugins: entries
                .iter()
                .map(|(n, t)| ((PluginType::Sink, n.to_string()), t.to_string()))
                .collect(),
        }
    }

    fn states(r: &NodeReport, v: &RegistryView) -> Vec<(String, PluginState)> {
        plugin_states(r, v)
            .into_iter()
            .map(|p| (p.name, p.state))
            .collect()
    }

    #[test]
    fn every_plugin_state() {
        let r = report(vec![
            plugin("same", "t1", Outcome::Loaded),
            plugin("newer", "t1", Outcome::Loaded),
            plugin("gone", "t1", Outcome::Installed),
            plugin("refused", "t1", Outcome::Skipped),
            plugin("broken", "t1", Outcome::Failed),
            plugin("unopened", "t1", Outcome::NotLoaded),
            plugin("fixed", "t1", Outcome::Failed),
        ]);
        let v = view(&[
            ("same", "t1"),
            ("newer", "t2"),
            ("refused", "t1"),
            ("broken", "t1"),
            ("unopened", "t1"),
            ("fixed", "t9"),
            ("added", "t1"),
        ]);
        use PluginState::*;
        assert_eq!(
            states(&r, &v),
            vec![
                ("added".to_string(), Pending),
                ("broken".into(), Failed),
                ("fixed".into(), Outdated),
                ("gone".into(), Removed),
                ("newer".into(), Outdated),
                ("refused".into(), Skipped),
                ("same".into(), Current),
                ("unopened".into(), NotLoaded),
            ]
        );
    }

    #[test]
    fn node_states_in_order_of_precedence() {
        let hour = Some(Duration::from_secs(3600));
        let fresh = Duration::from_secs(5);
        let r = report(vec![plugin("a", "t1", Outcome::Loaded)]);
        let ps = plugin_states(&r, &view(&[("a", "t1")]));
        assert_eq!(node_state(&r, &ps, fresh, hour), NodeState::Current);
        let ps = plugin_states(&r, &view(&[("a", "t2")]));
        assert_eq!(node_state(&r, &ps, fresh, hour), NodeState::RestartNeeded);
        let ps = plugin_states(&r, &view(&[("a", "t1"), ("b", "t1")]));
        assert_eq!(node_state(&r, &ps, fresh, hour), NodeState::RestartNeeded);
        let ps = plugin_states(&r, &view(&[]));
        assert_eq!(node_state(&r, &ps, fresh, hour), NodeState::RestartNeeded);
        let mut failed = r.clone();
        failed.errors.push("store down".into());
        let ps = plugin_states(&failed, &view(&[("a", "t2")]));
        assert_eq!(node_state(&failed, &ps, fresh, hour), NodeState::Failing);
        let old = Duration::from_secs(3601);
        assert_eq!(node_state(&failed, &ps, old, hour), NodeState::Stale);
        // A node that reports once (sync) never goes stale.
        assert_eq!(node_state(&r, &[], old, None), NodeState::Current);
    }

    #[test]
    fn a_failed_plugin_never_installed_and_deleted_is_forgotten() {
        let mut p = plugin("x", "t1", Outcome::Failed);
        p.id = None;
        p.sha256 = None;
        p.version = String::new();
        let r = report(vec![p]);
        assert!(plugin_states(&r, &view(&[])).is_empty());
    }
}
