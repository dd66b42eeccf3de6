//! `/nodes`: fleet status from the nodes' reports (`registry::nodes`).

use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use axum::Json;

use super::error::ApiError;
use super::handlers::{plugin_type, ApiPath, ApiResult, Shared};
use crate::fleet::NodeState;
use crate::registry::nodes::{NodeQuery, DEFAULT_LIMIT, MAX_LIMIT};
use crate::store::Store;

/// Parses `GET /nodes`' query: `state`, `plugin` (`{type}/{name}`), `limit`, `cursor`.
pub(super) fn node_query(query: Option<&str>) -> Result<NodeQuery, ApiError> {
    let mut out = NodeQuery {
        limit: DEFAULT_LIMIT,
        ..NodeQuery::default()
    };
    let Some(q) = query else { return Ok(out) };
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        match &*k {
            "state" => {
                out.state = Some(NodeState::parse(&v).ok_or_else(|| {
                    let all: Vec<_> = NodeState::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::bad_request(format!(
                        "state: unknown state {v:?}; use one of {}",
                        all.join(", ")
                    ))
                })?);
            }
            "plugin" => {
                let (ty, name) = v.split_once('/').ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "plugin: {v:?} is not {{type}}/{{name}}, e.g. sinks/file2"
                    ))
                })?;
                let ty = plugin_type(ty).map_err(|e| ApiError::bad_request(e.message))?;
                crate::package::validate_name(name)
                    .map_err(|e| ApiError::bad_request(format!("plugin: {e}")))?;
                out.plugin = Some((ty, name.to_string()));
            }
            "limit" => {
                out.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit: {v:?} is not a number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "cursor" => out.after = Some(v.into_owned()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}: use state, plugin, limit or cursor"
                )))
            }
        }
    }
    Ok(out)
}

/// `GET /nodes`: a page of nodes with their states.
pub async fn list<S: Store>(State(state): Shared<S>, RawQuery(query): RawQuery) -> ApiResult {
    let query = node_query(query.as_deref())?;
    let page = state
        .registry
        .nodes(&query)
        .await
        .map_err(|e| ApiError::from_registry("nodes list command error", e))?;
    Ok(Json(page).into_response())
}

/// `GET /nodes/{id}`: one node's report and each plugin's state on it.
pub async fn describe<S: Store>(
    State(state): Shared<S>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult {
    let node = state
        .registry
        .node(&id)
        .await
        .map_err(|e| ApiError::from_registry(&format!("describe node {id} error"), e))?;
    Ok(Json(node).into_response())
}
