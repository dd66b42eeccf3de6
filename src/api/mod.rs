//! The HTTP edge: the route table ([`app`]) shared by Lambda, the local server
//! and the tests. Handlers live in [`handlers`], error answers in [`error`].

pub mod auth;
pub mod error;
pub mod handlers;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::registry::Registry;
use crate::store::Store;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState<S> {
    /// The registry.
    pub registry: Registry<S>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// When set, every request but `GET /` and `GET /ping` needs a token.
    pub auth: Option<auth::AuthKeys>,
}

/// The route table.
///
/// | route | handler |
/// |---|---|
/// | `GET /`, `GET /ping` | service info, health |
/// | `GET /plugins/udfs`, `GET /plugins/udfs/{fn}` | function names |
/// | `POST /plugins/functions/{name}/register` | replace a function list |
/// | `GET, POST /plugins/{type}` | list, create |
/// | `GET, PUT, DELETE /plugins/{type}/{name}` | describe, update, delete |
/// | `DELETE /rules/{type}/{name}` | delete (alias from the seed document) |
pub fn app<S: Store>(state: Arc<AppState<S>>) -> Router {
    let max_body = state.max_body_bytes;
    let auth = state.auth.clone();
    let router = Router::new()
        .route("/", get(handlers::root))
        .route("/ping", get(handlers::ping))
        .route("/plugins/udfs", get(handlers::list_udfs::<S>))
        .route("/plugins/udfs/{function}", get(handlers::describe_udf::<S>))
        .route(
            "/plugins/functions/{name}/register",
            post(handlers::register_functions::<S>),
        )
        .route(
            "/plugins/{type}",
            get(handlers::list::<S>).post(handlers::create::<S>),
        )
        .route(
            "/plugins/{type}/{name}",
            get(handlers::describe::<S>)
                .put(handlers::update::<S>)
                .delete(handlers::delete::<S>),
        )
        .route("/rules/{type}/{name}", delete(handlers::delete::<S>))
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    let router = match auth {
        Some(keys) => router.layer(axum::middleware::from_fn_with_state(keys, auth::require_token)),
        None => router,
    };
    router.layer(TraceLayer::new_for_http())
}
