//! Wiring for the binaries and the tests: config -> store -> registry -> router,
//! and the two ways to serve it (Lambda, local TCP).

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::api::auth::AuthKeys;
use crate::api::{self, AppState};
use crate::config::ServiceConfig;
use crate::fetch::Fetcher;
use crate::registry::Registry;
use crate::store::local::LocalStore;
use crate::store::s3::{S3Settings, S3Store};
use crate::store::{Store, StoreUrl};

/// Builds the registry for `store` with the settings of `config`.
pub fn build_registry<S: Store>(store: S, config: &ServiceConfig) -> Result<Registry<S>, String> {
    let fetcher = Fetcher::new(config.fetch_settings())?;
    Ok(Registry::new(store, fetcher, config.registry_settings()))
}

/// Builds the router for `store` with the settings of `config`.
pub fn build_app<S: Store>(store: S, config: &ServiceConfig) -> Result<Router, String> {
    let registry = build_registry(store, config)?;
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
        StoreUrl::S3 { bucket, prefix } => {
            let store = S3Store::new(S3Settings {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                ..S3Settings::default()
            })
            .await;
            store
                .check()
                .await
                .map_err(|e| format!("store {}: {e}", store.location()))?;
            Ok(StoreKind::S3(store))
        }
    }
}

/// Serves `app` on `listener` until SIGINT or SIGTERM.
pub async fn serve_local(listener: TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
