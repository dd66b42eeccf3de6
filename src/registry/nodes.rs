//! Fleet status: the nodes' reports (`nodes/{id}.json`) against what the
//! registry holds. A request lists one page of reports (one list request
//! per 1,000), reads them in parallel, and compares each with one listing of
//! the registry's metadata ([`RegistryView`]): no metadata object is read
//! on S3, whose listings carry entity tags. Reports are untrusted: one that
//! is too big or malformed shows as that node's error, never fails the list.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use super::{Registry, RegistryError, Result};
use crate::fleet::drift::{self, NodeState, PluginState, PluginStatus, RegistryView};
use crate::fleet::report::{self, NodeReport, MAX_REPORT_BYTES};
use crate::package::PluginType;
use crate::store::{keys, Listed, Store};

/// Reports read at once.
const PARALLEL_READS: usize = 64;

/// The default and the largest page of `GET /nodes`.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page of `GET /nodes`.
pub const MAX_LIMIT: usize = 1000;

/// How long a node may go without reporting before it is stale, by default:
/// three of its own report intervals.
pub const STALE_INTERVALS: u32 = 3;

/// Which nodes `GET /nodes` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeQuery {
    /// Only nodes in this state.
    pub state: Option<NodeState>,
    /// Only nodes whose report names this plugin.
    pub plugin: Option<(PluginType, String)>,
    /// Most nodes on the page (1 to [`MAX_LIMIT`]).
    pub limit: usize,
    /// Only nodes whose id sorts after this one (the previous page's `next`).
    pub after: Option<String>,
}

/// One node in `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// The node's id.
    pub id: String,
    /// Its state.
    pub state: NodeState,
    /// Whether a restart would pick up registry changes (whatever the state).
    pub restart_needed: bool,
    /// When the store received its last report (RFC 3339).
    pub last_report: String,
    /// Its host name, architecture, mode and eKuiper version, from the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Architecture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// `sync`, `run` or `ekuiper`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<report::Mode>,
    /// Its stock eKuiper's version, when it runs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ekuiper: Option<String>,
    /// How many of its plugins are in each state.
    pub plugins: BTreeMap<PluginState, usize>,
    /// Why its report cannot be read (`state` is `invalid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A page of `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePage {
    /// The nodes, by id.
    pub nodes: Vec<NodeSummary>,
    /// The cursor of the next page (`?cursor=`), when there is one.
    pub next: Option<String>,
}

/// `GET /nodes/{id}`: the summary, every plugin's state, and the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeDetail {
    /// As in the list.
    #[serde(flatten)]
    pub summary: NodeSummary,
    /// Each plugin's state on the node.
    #[serde(rename = "pluginStates")]
    pub plugin_states: Vec<PluginStatus>,
    /// The report as the node wrote it (absent when it cannot be read).
    pub report: Option<NodeReport>,
}

/// How many nodes run a plugin, in its describe (`nodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetSummary {
    /// Nodes that report the plugin in any state (stale ones included).
    pub reporting: usize,
    /// Nodes that run the registry's build of it.
    pub current: usize,
    /// Nodes that run an older build, or have it deleted pending a restart.
    pub outdated: usize,
    /// Nodes that skipped it, failed it or whose eKuiper did not load it.
    pub failed: usize,
    /// Nodes that synced before it was published.
    pub pending: usize,
    /// Nodes among those whose reports are stale.
    pub stale: usize,
}

/// One node's report, read and compared.
struct Read {
    summary: NodeSummary,
    states: Vec<PluginStatus>,
    report: Option<NodeReport>,
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

impl<S: Store> Registry<S> {
    /// Every plugin the registry holds with its metadata's entity tag: one
    /// listing; on a backend whose listings carry no tags (the local
    /// store), each metadata object is read for its tag.
    pub async fn registry_view(&self) -> Result<RegistryView> {
        let listed = self.store.list("plugins/").await?;
        let reads = stream::iter(listed)
            .filter_map(|l| async move {
                let (ty, name) = PluginType::ALL
                    .into_iter()
                    .find_map(|ty| keys::plugin_name(ty, &l.key).map(|n| (ty, n.to_string())))?;
                Some((ty, name, l))
            })
            .map(|(ty, name, l)| async move {
                let tag = match l.etag {
                    Some(t) => Some(t.0),
                    None => self.store.get(&l.key).await?.map(|o| o.etag.0),
                };
                Ok::<_, RegistryError>(tag.map(|t| ((ty, name), t)))
            })
            .buffer_unordered(PARALLEL_READS)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(RegistryView {
            plugins: reads.into_iter().flatten().collect(),
        })
    }

    /// `GET /nodes`: a page of nodes, filtered.
    pub async fn nodes(&self, query: &NodeQuery) -> Result<NodePage> {
        if let Some(after) = &query.after {
            report::validate_node_id(after)
                .map_err(|e| RegistryError::InvalidInput(format!("cursor: {e}")))?;
        }
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let filtered = query.state.is_some() || query.plugin.is_some();
        let view = self.registry_view().await?;
        let mut after = query.after.as_deref().map(keys::node_report);
        let mut nodes = Vec::new();
        loop {
            // Unfiltered, a page of reports is the page of nodes; filtered,
            // reports are read 1,000 at a time until the page is full.
            let size = if filtered { MAX_LIMIT } else { limit };
            let (reads, more) = self.read_page(&mut after, size, &view).await?;
            let read_count = reads.len();
            for (i, read) in reads.into_iter().enumerate() {
                let Some(read) = read.filter(|r| matches(r, query)) else {
                    continue;
                };
                nodes.push(read.summary);
                if nodes.len() == limit {
                    let more = more || i + 1 < read_count;
                    let next = more.then(|| nodes[limit - 1].id.clone());
                    return Ok(NodePage { nodes, next });
                }
            }
            if !more {
                return Ok(NodePage { nodes, next: None });
            }
        }
    }

    /// `GET /nodes/{id}`.
    pub async fn node(&self, id: &str) -> Result<NodeDetail> {
        report::validate_node_id(id).map_err(RegistryError::InvalidInput)?;
        let key = keys::node_report(id);
        // Listed, for the time the store received it and its size.
        let page = self.store.list_page(&key, None, 2).await?;
        let Some(listed) = page.items.into_iter().next().filter(|l| l.key == key) else {
            return Err(RegistryError::NotFound);
        };
        let view = self.registry_view().await?;
        let Some(read) = self.read_node(listed, &view).await? else {
            return Err(RegistryError::NotFound);
        };
        Ok(NodeDetail {
            summary: read.summary,
            plugin_states: read.states,
            report: read.report,
        })
    }

    /// How many nodes run `{ty}/{name}`, for its describe: reads every report.
    pub async fn fleet_summary(&self, ty: PluginType, name: &str) -> Result<FleetSummary> {
        let view = self.registry_view().await?;
        let mut out = FleetSummary::default();
        let mut after: Option<String> = None;
        loop {
            let (reads, more) = self.read_page(&mut after, MAX_LIMIT, &view).await?;
            for read in reads.into_iter().flatten() {
                let Some(p) = read
                    .states
                    .iter()
                    .find(|p| p.plugin_type == ty && p.name == name)
                else {
                    continue;
                };
                if read
                    .report
                    .as_ref()
                    .and_then(|r| r.plugin(ty, name))
                    .is_some()
                {
                    out.reporting += 1;
                }
                if read.summary.state == NodeState::Stale {
                    out.stale += 1;
                    continue;
                }
                match p.state {
                    PluginState::Current => out.current += 1,
                    PluginState::Outdated | PluginState::Removed => out.outdated += 1,
                    PluginState::Pending => out.pending += 1,
                    PluginState::Skipped | PluginState::Failed | PluginState::NotLoaded => {
                        out.failed += 1
                    }
                }
            }
            if !more {
                return Ok(out);
            }
        }
    }

    /// Lists up to `size` reports after `after` (moved to the page's last
    /// key) and reads them in parallel, in order; also whether more follow.
    async fn read_page(
        &self,
        after: &mut Option<String>,
        size: usize,
        view: &RegistryView,
    ) -> Result<(Vec<Option<Read>>, bool)> {
        let page = self
            .store
            .list_page(keys::NODES_PREFIX, after.as_deref(), size)
            .await?;
        *after = page.items.last().map(|l| l.key.clone());
        let reads = stream::iter(page.items)
            .map(|l| self.read_node(l, view))
            .buffered(PARALLEL_READS)
            .try_collect()
            .await?;
        Ok((reads, page.more))
    }

    /// Reads and compares the report at `listed`; `None` when it is not a
    /// report key or was deleted since it was listed.
    async fn read_node(&self, listed: Listed, view: &RegistryView) -> Result<Option<Read>> {
        let Some(id) = keys::node_id(&listed.key).map(str::to_string) else {
            return Ok(None);
        };
        let received = rfc3339(listed.modified);
        let invalid = |error: String| Read {
            summary: NodeSummary {
                id: id.clone(),
                state: NodeState::Invalid,
                restart_needed: false,
                last_report: received.clone(),
                hostname: None,
                arch: None,
                mode: None,
                ekuiper: None,
                plugins: BTreeMap::new(),
                error: Some(error),
            },
            states: Vec::new(),
            report: None,
        };
        if let Err(e) = report::validate_node_id(&id) {
            return Ok(Some(invalid(e)));
        }
        if listed.size > MAX_REPORT_BYTES {
            return Ok(Some(invalid(report::too_big(listed.size))));
        }
        let body = match self.store.get(&listed.key).await {
            Ok(Some(o)) => o.body,
            Ok(None) => return Ok(None),
            Err(crate::store::StoreError::Other(e)) => return Ok(Some(invalid(e))),
            Err(e) => return Err(e.into()),
        };
        let report = match NodeReport::parse(&id, &body) {
            Ok(r) => r,
            Err(e) => return Ok(Some(invalid(e))),
        };
        let states = drift::plugin_states(&report, view);
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH + Duration::from_secs(listed.modified))
            .unwrap_or_default();
        let stale_after = self.settings.node_stale_after.or_else(|| {
            report
                .report_interval_secs
                .map(|s| Duration::from_secs(s.max(1)) * STALE_INTERVALS)
        });
        let state = drift::node_state(&report, &states, age, stale_after);
        let summary = NodeSummary {
            id,
            state,
            restart_needed: states.iter().any(|p| p.state.restart_needed()),
            last_report: received,
            hostname: Some(report.hostname.clone()),
            arch: Some(report.arch.clone()),
            mode: Some(report.mode),
            ekuiper: report.ekuiper.as_ref().and_then(|e| e.version.clone()),
            plugins: drift::counts(&states),
            error: None,
        };
        Ok(Some(Read {
            summary,
            states,
            report: Some(report),
        }))
    }
}

/// Whether a node read passes the query's filters.
fn matches(read: &Read, query: &NodeQuery) -> bool {
    if query.state.is_some_and(|s| s != read.summary.state) {
        return false;
    }
    match &query.plugin {
        None => true,
        Some((ty, name)) => read
            .report
            .as_ref()
            .is_some_and(|r| r.plugin(*ty, name).is_some()),
    }
}
