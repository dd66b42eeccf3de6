//! Optional authentication, compatible with eKuiper's scheme: a JWT signed
//! RS256 in the `Authorization` header (raw, or `Bearer <token>` with the
//! scheme in any case), whose `iss` names one of the RSA public keys (PEM
//! files) in `KUIPER_AUTH_KEYS_DIR` and whose `aud` contains `eKuiper`; `exp`
//! is required and `nbf` honoured.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::error::{ApiError, CODE_UNDEFINED};

/// The audience a token must name.
pub const AUDIENCE: &str = "eKuiper";

/// The public keys tokens may be signed with, by file name.
#[derive(Clone)]
pub struct AuthKeys {
    keys: Arc<HashMap<String, DecodingKey>>,
}

impl std::fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.keys.keys().collect();
        names.sort();
        f.debug_struct("AuthKeys").field("keys", &names).finish()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
}

impl AuthKeys {
    /// Loads every RSA public key (PEM) in `dir`; fails when there is none.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read KUIPER_AUTH_KEYS_DIR {}: {e}", dir.display()))?;
        let mut keys = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            let pem =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            match DecodingKey::from_rsa_pem(&pem) {
                Ok(key) => {
                    keys.insert(name, key);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "not an RSA public key; ignored")
                }
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "KUIPER_AUTH_KEYS_DIR {} holds no RSA public key (PEM)",
                dir.display()
            ));
        }
        Ok(AuthKeys {
            keys: Arc::new(keys),
        })
    }

    /// Verifies a token; `Err` holds the reason (for the log, not the client).
    pub fn verify(&self, token: &str) -> Result<(), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("bad token: {e}"))?;
        if header.alg != Algorithm::RS256 {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| format!("bad claims: {e}"))?;
        // `iss` only selects a key loaded at startup: it is never used as a path.
        let key = self
            .keys
            .get(&claims.iss)
            .ok_or_else(|| format!("unknown issuer {:?}", claims.iss))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map(|_| ())
            .map_err(|e| format!("rejected token: {e}"))
    }
}

/// The token in an `Authorization` value: raw, or after the `Bearer` scheme,
/// whose name is case-insensitive (RFC 7235) and may be followed by several
/// spaces or tabs.
fn token_of(value: &str) -> &str {
    let value = value.trim();
    match value.split_once([' ', '\t']) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => value,
    }
}

/// Middleware: lets `GET /` and `GET /ping` through, and every other request
/// only with a valid token.
pub async fn require_token(State(keys): State<AuthKeys>, req: Request, next: Next) -> Response {
    let open = req.method() == Method::GET && matches!(req.uri().path(), "/" | "/ping");
    if open {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(token_of);
    let verdict = match token {
        Some(t) if !t.is_empty() => keys.verify(t),
        _ => Err("no Authorization header".to_string()),
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(reason) => {
            tracing::info!(%reason, method = %req.method(), path = %req.uri().path(), "request refused");
            ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: CODE_UNDEFINED,
                message: "unauthorized: a valid token is required in the Authorization header"
                    .into(),
            }
            .into_response()
        }
    }
}
