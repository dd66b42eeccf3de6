//! Every HTTP error answer: `{"error":CODE,"message":"..."}` with
//! `Content-Type: application/json`, and the one place where domain errors
//! become statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::registry::RegistryError;
use crate::store::StoreError;

/// eKuiper's code for a generic error.
pub const CODE_UNDEFINED: u32 = 1000;
/// eKuiper's code for "not found".
pub const CODE_NOT_FOUND: u32 = 1002;
/// The code used when the store is unavailable.
pub const CODE_UNAVAILABLE: u32 = 1003;

/// An error answer: status, code and the message the user sees.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// eKuiper-style error code.
    pub code: u32,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// 400 / 1000 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: CODE_UNDEFINED,
            message: message.into(),
        }
    }

    /// 404 / 1002 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: CODE_NOT_FOUND,
            message: message.into(),
        }
    }

    /// Maps a domain error, prefixing its message with `prefix` (`"sources
    /// plugins create command error"`, ...). Store and internal failures are
    /// logged in full; the user gets a short message.
    pub fn from_registry(prefix: &str, err: RegistryError) -> Self {
        let message = format!("{prefix}: {err}");
        match err {
            RegistryError::NotExist(_) | RegistryError::NotFound => ApiError::not_found(message),
            RegistryError::Conflict(_) => ApiError {
                status: StatusCode::CONFLICT,
                code: CODE_UNDEFINED,
                message,
            },
            RegistryError::Store(StoreError::Unavailable(detail)) => {
                tracing::error!(%detail, "store unavailable");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: CODE_UNAVAILABLE,
                    message: format!("{prefix}: the plugin store is unavailable; nothing was changed, retry later"),
                }
            }
            RegistryError::Store(e) => {
                tracing::error!(error = %e, "store error");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: CODE_UNDEFINED,
                    message: format!("{prefix}: the plugin store failed; see the service log"),
                }
            }
            RegistryError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: CODE_UNDEFINED,
                    message: format!("{prefix}: internal error; see the service log"),
                }
            }
            _ => ApiError::bad_request(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}
