//! The HTTP edge: the route table ([`app`]) shared by Lambda, the local server
//! and the tests. Handlers live in [`handlers`], error answers in [`error`].

pub mod auth;
pub mod error;
pub mod fingerprints;
pub mod handlers;
pub mod nodes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
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

/// The route table: every `(method, path)` the service answers. [`app`] serves
/// exactly these (each is bound to its handler in [`handler`]); `openapi.yaml`
/// describes exactly these (a test checks both ways).
///
/// | route | what |
/// |---|---|
/// | `GET /`, `GET /ping` | service info, health (open even with authentication) |
/// | `GET /plugins/udfs`, `GET /plugins/udfs/{function}` | function names, owner of one |
/// | `POST /plugins/functions/{name}/register` | replace a function plugin's list |
/// | `GET, POST /plugins/{type}` | list, create |
/// | `GET, PUT, DELETE /plugins/{type}/{name}` | describe, update, delete |
/// | `DELETE /rules/{type}/{name}` | delete (alias from the seed document) |
/// | `GET /fingerprints`, `GET, PUT, DELETE /fingerprints/{name}` | stored eKuiper build fingerprints |
/// | `GET /nodes`, `GET /nodes/{id}` | fleet status from the nodes' reports |
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/ping"),
    ("GET", "/plugins/udfs"),
    ("GET", "/plugins/udfs/{function}"),
    ("POST", "/plugins/functions/{name}/register"),
    ("GET", "/plugins/{type}"),
    ("POST", "/plugins/{type}"),
    ("GET", "/plugins/{type}/{name}"),
    ("PUT", "/plugins/{type}/{name}"),
    ("DELETE", "/plugins/{type}/{name}"),
    ("DELETE", "/rules/{type}/{name}"),
    ("GET", "/fingerprints"),
    ("GET", "/fingerprints/{name}"),
    ("PUT", "/fingerprints/{name}"),
    ("DELETE", "/fingerprints/{name}"),
    ("GET", "/nodes"),
    ("GET", "/nodes/{id}"),
];

/// The handler of one route of [`ROUTES`].
fn handler<S: Store>(method: &str, path: &str) -> MethodRouter<Arc<AppState<S>>> {
    match (method, path) {
        ("GET", "/") => get(handlers::root),
        ("GET", "/ping") => get(handlers::ping),
        ("GET", "/plugins/udfs") => get(handlers::list_udfs::<S>),
        ("GET", "/plugins/udfs/{function}") => get(handlers::describe_udf::<S>),
        ("POST", "/plugins/functions/{name}/register") => post(handlers::register_functions::<S>),
        ("GET", "/plugins/{type}") => get(handlers::list::<S>),
        ("POST", "/plugins/{type}") => post(handlers::create::<S>),
        ("GET", "/plugins/{type}/{name}") => get(handlers::describe::<S>),
        ("PUT", "/plugins/{type}/{name}") => put(handlers::update::<S>),
        ("DELETE", "/plugins/{type}/{name}") | ("DELETE", "/rules/{type}/{name}") => {
            delete(handlers::delete::<S>)
        }
        ("GET", "/fingerprints") => get(fingerprints::list::<S>),
        ("GET", "/fingerprints/{name}") => get(fingerprints::describe::<S>),
        ("PUT", "/fingerprints/{name}") => put(fingerprints::put::<S>),
        ("DELETE", "/fingerprints/{name}") => delete(fingerprints::delete::<S>),
        ("GET", "/nodes") => get(nodes::list::<S>),
        ("GET", "/nodes/{id}") => get(nodes::describe::<S>),
        _ => unreachable!("route {method} {path} has no handler"),
    }
}

/// The router: [`ROUTES`], JSON answers for unknown paths and methods, the
/// body limit, optional authentication and request tracing.
pub fn app<S: Store>(state: Arc<AppState<S>>) -> Router {
    let max_body = state.max_body_bytes;
    let auth = state.auth.clone();
    let mut paths: BTreeMap<&str, MethodRouter<Arc<AppState<S>>>> = BTreeMap::new();
    for &(method, path) in ROUTES {
        let h = handler::<S>(method, path);
        let merged = match paths.remove(path) {
            Some(existing) => existing.merge(h),
            None => h,
        };
        paths.insert(path, merged);
    }
    let mut router = Router::new();
    for (path, methods) in paths {
        router = router.route(path, methods);
    }
    let router = router
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    let router = match auth {
        Some(keys) => router.layer(axum::middleware::from_fn_with_state(
            keys,
            auth::require_token,
        )),
        None => router,
    };
    router
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::extract::Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                .on_response(|res: &axum::response::Response, latency: Duration, _: &tracing::Span| {
                    tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_secs_f64() * 1000.0, "request");
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
