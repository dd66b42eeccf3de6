//! Talking to the stock eKuiper a node runs, through eKuiper's own REST API,
//! once it has started over the synced directory.
//!
//! Two things cannot be done with files alone:
//! - **Function lists.** eKuiper keeps a function plugin's function names in
//!   its own key-value store (written by its installer or by
//!   `POST /plugins/functions/{name}/register`); from the files it only knows
//!   the function named like the plugin. [`after_start`] registers the list
//!   the registry's metadata gives, for each function plugin whose list
//!   eKuiper does not already have.
//! - **What eKuiper loaded.** A library eKuiper cannot open is skipped with a
//!   log line and is absent from `GET /plugins/{type}`. [`after_start`]
//!   compares that listing (and each plugin's described version) with what
//!   kuiper-node installed, and reports every difference.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::node::manifest::Manifest;
use crate::node::{Failure, PluginRef};
use crate::package::PluginType;

/// What eKuiper showed after it started, in the node's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EkuiperStatus {
    /// eKuiper's REST API.
    pub url: String,
    /// eKuiper's version (`GET /`), when it answered.
    pub version: String,
    /// Plugins kuiper-node installed that eKuiper lists, with the version
    /// eKuiper describes.
    pub loaded: Vec<PluginRef>,
    /// Plugins kuiper-node installed that eKuiper does not list (it could not
    /// open the library: its log says why), or lists with another version.
    pub not_loaded: Vec<Failure>,
    /// Function plugins whose function list was registered with eKuiper at this start.
    pub registered: Vec<String>,
}

/// The REST API of one eKuiper.
#[derive(Debug, Clone)]
pub struct Rest {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Described {
    #[serde(default)]
    version: String,
    #[serde(default)]
    functions: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct About {
    #[serde(default)]
    version: String,
}

impl Rest {
    /// The API at `base` (`http://127.0.0.1:9081`).
    pub fn new(base: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Rest {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Whether `GET /ping` answers 200.
    pub async fn ping(&self) -> bool {
        matches!(
            self.http.get(format!("{}/ping", self.base)).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    /// Polls `/ping` until it answers or `timeout` passes, or `gone` says the
    /// process has exited.
    pub async fn wait_ready(&self, timeout: Duration, gone: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if gone() {
                return false;
            }
            if self.ping().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = r.status();
        let body = r.text().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {url}: {status}: {}", body.trim()));
        }
        serde_json::from_str(&body)
            .map_err(|e| format!("GET {url}: unexpected answer ({e}): {body}"))
    }

    /// `GET /plugins/{type}`: the names eKuiper lists.
    pub async fn list(&self, ty: PluginType) -> Result<Vec<String>, String> {
        // eKuiper answers `null` when it has none.
        let names: Option<Vec<String>> =
            self.get_json(&format!("/plugins/{}", ty.as_str())).await?;
        Ok(names.unwrap_or_default())
    }

    async fn describe(&self, ty: PluginType, name: &str) -> Result<Described, String> {
        self.get_json(&format!("/plugins/{}/{name}", ty.as_str()))
            .await
    }

    /// `POST /plugins/functions/{name}/register`.
    pub async fn register_functions(&self, name: &str, functions: &[String]) -> Result<(), String> {
        let url = format!("{}/plugins/functions/{name}/register", self.base);
        let r = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "functions": functions }).to_string())
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = r.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = r.text().await.unwrap_or_default();
            Err(format!("POST {url}: {status}: {}", body.trim()))
        }
    }
}

/// After eKuiper answered: registers missing function lists and compares what
/// it loaded with `manifest`. Never fails: what went wrong is in the status.
pub async fn after_start(
    rest: &Rest,
    manifest: &Manifest,
    root: &std::path::Path,
) -> EkuiperStatus {
    let mut status = EkuiperStatus {
        url: rest.url().to_string(),
        ..EkuiperStatus::default()
    };
    status.version = rest
        .get_json::<About>("/")
        .await
        .map(|a| a.version)
        .unwrap_or_default();
    for ty in PluginType::ALL {
        let listed = match rest.list(ty).await {
            Ok(l) => l,
            Err(e) => {
                status.not_loaded.push(failure(ty, "", e));
                continue;
            }
        };
        for entry in manifest.plugins.values().filter(|e| e.plugin_type == ty) {
            let name = &entry.name;
            if !listed.contains(name) {
                let rel = crate::node::layout::library_path(ty, &entry.so_file);
                let missing = crate::node::needed::missing(
                    &root.join(&rel),
                    std::env::var("LD_LIBRARY_PATH").ok().as_deref(),
                );
                let why = if missing.is_empty() {
                    "it could not open the library; its log says why".to_string()
                } else {
                    format!(
                        "the library needs {}, which this node does not have",
                        missing.join(", ")
                    )
                };
                status.not_loaded.push(failure(
                    ty,
                    name,
                    format!("installed as {rel}, but eKuiper did not load it ({why})"),
                ));
                continue;
            }
            let described = match rest.describe(ty, name).await {
                Ok(d) => d,
                Err(e) => {
                    status.not_loaded.push(failure(ty, name, e));
                    continue;
                }
            };
            if described.version != entry.version {
                status.not_loaded.push(failure(
                    ty,
                    name,
                    format!(
                        "eKuiper reports version {:?}, kuiper-node installed {:?} (is another library of this plugin in plugins/{}?)",
                        described.version,
                        entry.version,
                        ty.as_str()
                    ),
                ));
                continue;
            }
            if let Some(want) = entry.functions.as_ref().filter(|f| !f.is_empty()) {
                let mut have = described.functions.clone().unwrap_or_default();
                have.sort();
                let mut sorted = want.clone();
                sorted.sort();
                if have != sorted {
                    if let Err(e) = rest.register_functions(name, want).await {
                        status.not_loaded.push(failure(
                            ty,
                            name,
                            format!("cannot register its functions {want:?}: {e}"),
                        ));
                        continue;
                    }
                    status.registered.push(name.clone());
                }
            }
            status.loaded.push(PluginRef {
                plugin_type: ty,
                name: name.clone(),
                version: described.version,
            });
        }
    }
    status
}

fn failure(ty: PluginType, name: &str, error: String) -> Failure {
    Failure {
        plugin_type: ty.as_str().to_string(),
        name: name.to_string(),
        error,
    }
}

/// eKuiper's REST URL from its own environment settings
/// (`KUIPER__BASIC__RESTIP`, `KUIPER__BASIC__RESTPORT`), else its default
/// `http://127.0.0.1:9081`. An address that listens on every interface is
/// reached on loopback.
pub fn default_url(env: impl Fn(&str) -> Option<String>) -> String {
    let ip = env("KUIPER__BASIC__RESTIP")
        .filter(|ip| !ip.is_empty() && ip != "0.0.0.0" && ip != "::")
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = env("KUIPER__BASIC__RESTPORT").unwrap_or_else(|| "9081".into());
    if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_from_ekuipers_environment() {
        let none = |_: &str| None;
        assert_eq!(default_url(none), "http://127.0.0.1:9081");
        let set = |k: &str| match k {
            "KUIPER__BASIC__RESTIP" => Some("0.0.0.0".to_string()),
            "KUIPER__BASIC__RESTPORT" => Some("19081".to_string()),
            _ => None,
        };
        assert_eq!(default_url(set), "http://127.0.0.1:19081");
        let v6 = |k: &str| (k == "KUIPER__BASIC__RESTIP").then(|| "::1".to_string());
        assert_eq!(default_url(v6), "http://[::1]:9081");
    }
}
