//! `/fingerprints`: stored eKuiper build fingerprints (what `kuiper-node
//! fingerprint PATH-TO-KUIPERD` prints), named in a create's `ekuiper` field
//! or a describe's `?fits=`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use super::error::ApiError;
use super::handlers::{parse_object, text, ApiPath, ApiResult, Shared};
use crate::package::BuildFingerprint;
use crate::store::Store;

/// The `fits` value of a describe's query, if given.
pub(super) fn fits_query(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(q) = query else { return Ok(None) };
    match url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "fits") {
        None => Ok(None),
        Some((_, v)) if v.is_empty() => Err(ApiError::bad_request(
            "fits: name a stored fingerprint (GET /fingerprints lists them)",
        )),
        Some((_, v)) => Ok(Some(v.into_owned())),
    }
}

/// `GET /fingerprints`: names, sorted.
pub async fn list<S: Store>(State(state): Shared<S>) -> ApiResult {
    let names = state
        .registry
        .fingerprints()
        .await
        .map_err(|e| ApiError::from_registry("fingerprints list command error", e))?;
    Ok(Json(names).into_response())
}

/// `GET /fingerprints/{name}`.
pub async fn describe<S: Store>(
    State(state): Shared<S>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    let f =
        state.registry.fingerprint(&name).await.map_err(|e| {
            ApiError::from_registry(&format!("describe fingerprint {name} error"), e)
        })?;
    Ok(Json(f).into_response())
}

/// `PUT /fingerprints/{name}`: store, replacing one of that name.
pub async fn put<S: Store>(
    State(state): Shared<S>,
    ApiPath(name): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let f: BuildFingerprint = parse_object(
        &state,
        body,
        "fingerprint",
        "the one kuiper-node fingerprint PATH-TO-KUIPERD prints",
    )?;
    state
        .registry
        .put_fingerprint(&name, &f)
        .await
        .map_err(|e| ApiError::from_registry(&format!("store fingerprint {name} error"), e))?;
    Ok(text(
        StatusCode::OK,
        format!("fingerprint {name} is stored"),
    ))
}

/// `DELETE /fingerprints/{name}`.
pub async fn delete<S: Store>(
    State(state): Shared<S>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    state
        .registry
        .delete_fingerprint(&name)
        .await
        .map_err(|e| ApiError::from_registry(&format!("delete fingerprint {name} error"), e))?;
    Ok(text(
        StatusCode::OK,
        format!("fingerprint {name} is deleted"),
    ))
}
