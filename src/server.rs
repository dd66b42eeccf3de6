//! Wiring for the binaries and the tests: config -> store -> registry -> router,
//! and the two ways to serve it (Lambda, local TCP under the time limits of
//! [`timeouts`]).

pub mod timeouts;

use std::future::IntoFuture;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tower::util::MapRequest;

use crate::api::auth::AuthKeys;
use crate::api::{self, AppState};
use crate::config::ServiceConfig;
use crate::fetch::Fetcher;
use crate::registry::Registry;
use crate::store::local::LocalStore;
use crate::store::s3::{S3Settings, S3Store};
use crate::store::{Store, StoreUrl};

pub use self::timeouts::ServerTimeouts;

/// Builds the registry for `store` with the settings of `config`.
pub fn build_registry<S: Store>(store: S, config: &ServiceConfig) -> Result<Registry<S>, String> {
    let fetcher = Fetcher::new(config.fetch_settings())?;
    Ok(Registry::new(store, fetcher, config.registry_settings()))
}

/// Builds the router for `store` with the settings of `config`.
pub fn build_app<S: Store>(store: S, config: &ServiceConfig) -> Result<Router, String> {
    let registry = build_registry(store, config)?;
    registry.remove_stale_temp_files(crate::registry::STALE_TEMP_AGE);
    let auth = match &config.auth_keys_dir {
        Some(dir) => Some(AuthKeys::load(dir)?),
        None => None,
    };
    Ok(api::app(Arc::new(AppState {
        registry,
        max_body_bytes: config.max_body_bytes,
        auth,
    })))
}

/// The opened store, one variant per backend.
pub enum StoreKind {
    /// A local directory.
    Local(LocalStore),
    /// An S3 bucket.
    S3(S3Store),
}

/// Opens and checks the store at `url`.
pub async fn open_store(url: &StoreUrl) -> Result<StoreKind, String> {
    match url {
        StoreUrl::Local(path) => {
            let store =
                LocalStore::new(path).map_err(|e| format!("store {}: {e}", path.display()))?;
            store
                .check()
                .await
                .map_err(|e| format!("store {}: {e}", store.location()))?;
            Ok(StoreKind::Local(store))
        }
        StoreUrl::S3 { bucket, prefix } => Ok(StoreKind::S3(open_s3(bucket, prefix).await?)),
    }
}

/// Opens and checks an S3 store for reading (settings from the AWS
/// environment): what `kuiper-node` does. It does not check conditional
/// requests, which only writers need ([`check_conditions`]).
pub async fn open_s3(bucket: &str, prefix: &str) -> Result<S3Store, String> {
    let store = connect_s3(bucket, prefix, false).await;
    check_store(&store).await?;
    Ok(store)
}

/// Builds the client of an S3 store without sending a request: the caller
/// checks it ([`check_store`], [`check_conditions`]), possibly while
/// already serving. `allow_unsafe` lets it write to a store that fails the
/// check of conditional requests.
pub async fn connect_s3(bucket: &str, prefix: &str, allow_unsafe: bool) -> S3Store {
    S3Store::new(S3Settings {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        allow_unsafe,
        ..S3Settings::default()
    })
    .await
}

/// Checks that an S3 store honours the conditional writes the registry
/// relies on (read from the bucket's record, probed once per bucket and
/// prefix): the message names the store and the problem when it does not
/// and the store was not allowed anyway.
pub async fn check_conditions(store: &S3Store) -> Result<(), String> {
    let conditions = store.conditions().await.map_err(|e| {
        format!(
            "store {}: cannot check its conditional requests: {e}",
            store.location()
        )
    })?;
    if let Some(why) = store.refusal(&conditions) {
        return Err(why);
    }
    if !conditions.delete_if_match {
        tracing::info!(
            store = %store.location(),
            "the store ignores If-Match on DeleteObject: conditional deletes write a deletion marker first"
        );
    }
    Ok(())
}

/// Checks that a store is usable, with a message naming it.
pub async fn check_store<S: Store>(store: &S) -> Result<(), String> {
    store
        .check()
        .await
        .map_err(|e| format!("store {}: {e}", store.location()))
}

/// Adapts the router to Lambda events: strips an API Gateway stage prefix
/// (`/prod/plugins/...` -> `/plugins/...`), and takes the Lambda request id
/// as the request id when the caller sent none.
/// (The rewrite wraps the router, so it happens before routing.)
pub fn for_lambda(app: Router) -> MapRequest<Router, fn(LambdaRequest) -> LambdaRequest> {
    MapRequest::new(
        app,
        lambda_request::<lambda_http::Body> as fn(LambdaRequest) -> LambdaRequest,
    )
}

type LambdaRequest = lambda_http::Request;

fn lambda_request<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.stage.clone(),
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.stage.clone(),
        _ => None,
    };
    if let Some(stage) = stage.filter(|s| !s.is_empty() && s != "$default") {
        let prefix = format!("/{stage}");
        let path = req.uri().path();
        if path == prefix || path.starts_with(&format!("{prefix}/")) {
            let rest = &path[prefix.len()..];
            let rest = if rest.is_empty() { "/" } else { rest };
            let path_and_query = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = path_and_query.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
    if !req.headers().contains_key("x-request-id") {
        let id = req.lambda_context_ref().map(|c| c.request_id.clone());
        if let Some(value) = id.and_then(|id| axum::http::HeaderValue::from_str(&id).ok()) {
            req.headers_mut().insert("x-request-id", value);
        }
    }
    req
}

/// Serves `app` on `listener` until SIGINT or SIGTERM, under the time limits
/// of `limits` (see [`timeouts`]). On a signal it stops accepting, lets the
/// requests in progress finish for at most `limits.shutdown`, then returns.
pub async fn serve_local(
    listener: TcpListener,
    app: Router,
    limits: ServerTimeouts,
) -> std::io::Result<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // Installed before the first connection is accepted: a signal that comes
    // as soon as the server answers is a graceful stop, not the default death.
    let signals = ShutdownSignal::install();
    let signal = async move {
        signals.wait().await;
        let _ = stop_tx.send(true);
    };
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            limits,
            timeouts::guard,
        ))
        .into_make_service_with_connect_info::<timeouts::Conn>();
    let serve = axum::serve(timeouts::TimedListener::new(listener, limits), app)
        .with_graceful_shutdown(signal)
        .into_future();
    let deadline = async move {
        if stop_rx.wait_for(|stopped| *stopped).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(limits.shutdown).await;
    };
    tokio::select! {
        r = serve => r,
        () = deadline => {
            tracing::warn!(
                secs = limits.shutdown.as_secs(),
                "requests still in progress at the shutdown deadline are dropped"
            );
            Ok(())
        }
    }
}

/// SIGINT and SIGTERM, listened to from the moment [`ShutdownSignal::install`] runs.
pub struct ShutdownSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    /// Starts listening.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            ShutdownSignal {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignal {}
    }

    /// Resolves on the first SIGINT or SIGTERM.
    pub async fn wait(self) {
        #[cfg(unix)]
        {
            async fn recv(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = recv(self.term) => {},
                () = recv(self.int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
