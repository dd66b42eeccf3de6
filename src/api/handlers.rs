//! One handler per endpoint: parse the request, call the registry, shape the answer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::package::PluginType;
use crate::registry::PluginRequest;
use crate::store::Store;

pub(super) type Shared<S> = State<Arc<AppState<S>>>;

/// `Path`, with malformed path segments (bad percent-encoding, invalid UTF-8)
/// answered as a JSON 400 like every other error.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid path: {}",
                e.body_text()
            ))),
        }
    }
}
pub(super) type ApiResult = Result<Response, ApiError>;

pub(super) fn plugin_type(s: &str) -> Result<PluginType, ApiError> {
    PluginType::parse(s).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown plugin type {s}: use sources, sinks or functions"
        ))
    })
}

fn body_bytes<S>(
    state: &AppState<S>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: super::error::CODE_UNDEFINED,
                message: format!(
                    "Invalid body: the request body is larger than {} bytes (KUIPER_MAX_BODY_BYTES)",
                    state.max_body_bytes
                ),
            }
        } else {
            ApiError::bad_request(format!("Invalid body: {}", e.body_text()))
        }
    })
}

fn parse_plugin_body<S>(
    state: &AppState<S>,
    ty: PluginType,
    body: Result<Bytes, BytesRejection>,
) -> Result<PluginRequest, ApiError> {
    parse_object(
        state,
        body,
        &format!("{ty} plugin"),
        "{\"name\":\"...\",\"file\":\"http://.../plugin.zip\"}",
    )
}

/// A JSON object body as `T`; any other body is a 400 saying what `what`
/// should look like (`like`).
pub(super) fn parse_object<S, T: serde::de::DeserializeOwned>(
    state: &AppState<S>,
    body: Result<Bytes, BytesRejection>,
    what: &str,
    like: &str,
) -> Result<T, ApiError> {
    let bytes = body_bytes(state, body)?;
    let invalid = |e: String| {
        ApiError::bad_request(format!("Invalid body: Error decoding the {what} json: {e}"))
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if !value.is_object() {
        return Err(invalid(format!(
            "expected a JSON object like {like}, got {}",
            json_kind(&value)
        )));
    }
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

pub(super) fn text(status: StatusCode, body: String) -> Response {
    (status, body).into_response()
}

/// `GET /`: what this service is.
pub async fn root() -> Response {
    Json(json!({
        "service": "kuiper-registry",
        "version": env!("CARGO_PKG_VERSION"),
        "api": ["/plugins/sources", "/plugins/sinks", "/plugins/functions", "/plugins/udfs"],
    }))
    .into_response()
}

/// `GET /ping`: health.
pub async fn ping() -> Response {
    text(StatusCode::OK, "pong".into())
}

/// `POST /plugins/{type}`: create.
pub async fn create<S: Store>(
    State(state): Shared<S>,
    ApiPath(ty): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let ty = plugin_type(&ty)?;
    let req = parse_plugin_body(&state, ty, body)?;
    let name = req.name.clone();
    state
        .registry
        .create(ty, req)
        .await
        .map_err(|e| ApiError::from_registry(&format!("{ty} plugins create command error"), e))?;
    Ok(text(
        StatusCode::CREATED,
        format!("{ty} plugin {name} is created"),
    ))
}

/// `GET /plugins/{type}`: names, sorted.
pub async fn list<S: Store>(State(state): Shared<S>, ApiPath(ty): ApiPath<String>) -> ApiResult {
    let ty = plugin_type(&ty)?;
    let names = state
        .registry
        .names(ty)
        .await
        .map_err(|e| ApiError::from_registry(&format!("{ty} plugins list command error"), e))?;
    // Already a JSON array: sent as stored, not parsed and re-encoded.
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        names.json().clone(),
    )
        .into_response())
}

/// `GET /plugins/{type}/{name}`: metadata.
pub async fn describe<S: Store>(
    State(state): Shared<S>,
    ApiPath((ty, name)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let ty = plugin_type(&ty)?;
    let error = |e| ApiError::from_registry(&format!("describe {ty} plugin {name} error"), e);
    let meta = state.registry.describe(ty, &name).await.map_err(error)?;
    let fits = super::fingerprints::fits_query(query.as_deref())?;
    let nodes = state
        .registry
        .fleet_summary(ty, &name)
        .await
        .map_err(error)?;
    let mut value = serde_json::to_value(&meta).expect("metadata serialises");
    value["nodes"] = serde_json::to_value(&nodes).expect("a summary serialises");
    // `?fits=NAME`: whether it loads into the eKuiper of a stored fingerprint.
    if let Some(fingerprint) = fits {
        let fit = state
            .registry
            .fits(ty, &name, &fingerprint)
            .await
            .map_err(error)?;
        value["fits"] = serde_json::to_value(&fit).expect("a fit serialises");
    }
    Ok(Json(value).into_response())
}

/// `PUT /plugins/{type}/{name}`: update.
pub async fn update<S: Store>(
    State(state): Shared<S>,
    ApiPath((ty, name)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let ty = plugin_type(&ty)?;
    let req = parse_plugin_body(&state, ty, body)?;
    state
        .registry
        .update(ty, &name, req)
        .await
        .map_err(|e| ApiError::from_registry(&format!("update {ty} plugin {name} error"), e))?;
    Ok(text(
        StatusCode::OK,
        format!(
            "plugin {name} is updated and Kuiper nodes must restart for the change to take effect."
        ),
    ))
}

/// `DELETE /plugins/{type}/{name}?callback=URL` (and `/rules/...`).
pub async fn delete<S: Store>(
    State(state): Shared<S>,
    ApiPath((ty, name)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let ty = plugin_type(&ty)?;
    let callback = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "callback")
            .map(|(_, v)| v.into_owned())
    });
    state
        .registry
        .delete(ty, &name, callback.as_deref())
        .await
        .map_err(|e| ApiError::from_registry(&format!("delete {ty} plugin {name} error"), e))?;
    Ok(text(
        StatusCode::OK,
        format!("{ty} plugin {name} is deleted and Kuiper nodes must restart for the change to take effect."),
    ))
}

/// `GET /plugins/udfs`: every function name, sorted.
pub async fn list_udfs<S: Store>(State(state): Shared<S>) -> ApiResult {
    let names = state
        .registry
        .udfs()
        .await
        .map_err(|e| ApiError::from_registry("udfs list command error", e))?;
    Ok(Json(names).into_response())
}

/// `GET /plugins/udfs/{function}`: which plugin provides it.
pub async fn describe_udf<S: Store>(
    State(state): Shared<S>,
    ApiPath(function): ApiPath<String>,
) -> ApiResult {
    let owner =
        state.registry.describe_udf(&function).await.map_err(|e| {
            ApiError::from_registry(&format!("describe function {function} error"), e)
        })?;
    Ok(Json(owner).into_response())
}

#[derive(Debug, Deserialize)]
struct FunctionList {
    #[serde(default)]
    functions: Option<Vec<String>>,
}

/// `POST /plugins/functions/{name}/register {"functions":[..]}`.
pub async fn register_functions<S: Store>(
    State(state): Shared<S>,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let list: FunctionList = parse_object(
        &state,
        body,
        "function list",
        "{\"functions\":[\"f1\",\"f2\"]}",
    )?;
    state
        .registry
        .register_functions(&name, list.functions.unwrap_or_default())
        .await
        .map_err(|e| {
            ApiError::from_registry(&format!("register functions plugin {name} error"), e)
        })?;
    Ok(text(
        StatusCode::OK,
        format!("function plugin {name} function list is registered"),
    ))
}

/// Any path that is not routed.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

/// A routed path with a method it does not serve.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: super::error::CODE_UNDEFINED,
        message: format!("method {method} is not allowed on {}", uri.path()),
    }
}
