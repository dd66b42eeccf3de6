//! Function names: the claims `udfs/{function}.json` that make them unique
//! across all function plugins, without regard to case (eKuiper resolves SQL
//! function names without case), and the calls that list, describe and
//! register them.
//!
//! A claim's key is the lower-cased name, so `echo` and `Echo` contend for one
//! create-only write. Stores written before names were compared without case
//! may hold claims under keys with upper-case letters; a claimant checks
//! those too (they are never written any more, so they cannot race).

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{now_rfc3339, now_secs, PluginMeta, Registry, RegistryError, Result, UdfOwner};
use crate::package::{self, PluginType};
use crate::store::{keys, Condition, Object, Store, StoreError};

/// The content of a function-name claim `udfs/{function in lower case}.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Claim {
    /// The plugin that claimed it.
    pub(super) plugin: String,
    /// The instance of that plugin.
    pub(super) id: String,
    /// When, seconds since the Unix epoch.
    pub(super) claimed_at: u64,
    /// The name as claimed (absent in claims written by earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    function: Option<String>,
    /// Made by a create, before its plugin existed. A claim made for an
    /// existing instance (update, register) whose instance is gone blocks
    /// no one; a create's is honoured for the grace period. Earlier
    /// versions did not say: their claims count as a create's.
    #[serde(default = "creating_by_default")]
    creating: bool,
}

fn creating_by_default() -> bool {
    true
}

/// Who holds a claim.
enum Holder {
    /// A committed plugin lists the name (as spelt here).
    Committed(String),
    /// A request in flight (or one that died less than the grace period ago).
    Pending,
    /// No one: the claim may be taken over.
    Gone,
}

/// The legacy claim key of `function` (exact case), when it differs from the
/// current one.
fn legacy_key(function: &str) -> Option<String> {
    function
        .bytes()
        .any(|b| b.is_ascii_uppercase())
        .then(|| format!("{}{function}.json", keys::UDFS_PREFIX))
}

/// The function name in a claim key listed under `udfs/`.
pub(super) fn claim_stem(key: &str) -> Option<&str> {
    key.strip_prefix(keys::UDFS_PREFIX)?
        .strip_suffix(".json")
        .filter(|s| !s.contains('/'))
}

impl<S: Store> Registry<S> {
    /// Checks a function list: valid names, none twice (without regard to case).
    pub(super) fn check_functions(functions: &[String]) -> Result<()> {
        let mut seen = std::collections::BTreeMap::new();
        for f in functions {
            package::validate_name(f)?;
            if let Some(other) = seen.insert(f.to_ascii_lowercase(), f) {
                return Err(RegistryError::InvalidInput(if other == f {
                    format!("function name {f} is listed twice")
                } else {
                    format!("function names {other} and {f} differ only in case; eKuiper does not tell them apart")
                }));
            }
        }
        Ok(())
    }

    /// The error for a claim of `name` refused because `owner` provides `existing`.
    pub(super) fn function_clash(name: &str, existing: String, owner: String) -> RegistryError {
        if existing == name {
            RegistryError::FunctionExists {
                name: name.to_string(),
                owner,
            }
        } else {
            RegistryError::FunctionExistsAs {
                name: name.to_string(),
                existing,
                owner,
            }
        }
    }

    /// Every function name of every function plugin, sorted.
    pub async fn udfs(&self) -> Result<Vec<String>> {
        let mut all = BTreeSet::new();
        for name in self.list(PluginType::Function).await? {
            if let Some((meta, _)) = self.read_meta(PluginType::Function, &name).await? {
                all.extend(meta.functions.unwrap_or_default());
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Which plugin provides function `function` (exactly as spelt).
    pub async fn describe_udf(&self, function: &str) -> Result<UdfOwner> {
        package::validate_name(function)?;
        let keys = std::iter::once(keys::udf(function)).chain(legacy_key(function));
        for key in keys {
            let Some((claim, _)) = self.read_claim(&key).await? else {
                continue;
            };
            if let Some((meta, _)) = self.read_meta(PluginType::Function, &claim.plugin).await? {
                let lists = meta
                    .functions
                    .as_ref()
                    .is_some_and(|f| f.iter().any(|x| x == function));
                if meta.id == claim.id && lists {
                    return Ok(UdfOwner {
                        name: function.to_string(),
                        plugin: claim.plugin,
                    });
                }
            }
        }
        Err(RegistryError::NotFound)
    }

    /// Replaces the function list of a function plugin. A clash changes nothing.
    pub async fn register_functions(&self, name: &str, functions: Vec<String>) -> Result<()> {
        package::validate_name(name)?;
        if functions.is_empty() {
            return Err(RegistryError::InvalidInput(
                "property 'functions' must not be empty".into(),
            ));
        }
        Self::check_functions(&functions)?;
        let Some((current, obj)) = self.read_meta(PluginType::Function, name).await? else {
            return Err(RegistryError::NotFound);
        };
        self.swap_meta(&current, obj, Some(functions), |old, functions| {
            PluginMeta {
                functions,
                updated: now_rfc3339(),
                ..old.clone()
            }
        })
        .await
    }

    /// Claims each function name for plugin `owner` (instance `id`; `creating`
    /// when the instance is not committed yet); on a clash releases what this
    /// call claimed and fails. Returns the names newly claimed.
    pub(super) async fn claim_all(
        &self,
        owner: &str,
        id: &str,
        functions: &[String],
        creating: bool,
    ) -> Result<Vec<String>> {
        if functions.is_empty() {
            return Ok(Vec::new());
        }
        self.check_legacy_claims(id, functions).await?;
        let mut claimed = Vec::new();
        for f in functions {
            match self.claim(owner, id, f, creating).await {
                Ok(true) => claimed.push(f.clone()),
                Ok(false) => {}
                Err(e) => {
                    self.release_all(id, &claimed).await;
                    return Err(e);
                }
            }
        }
        Ok(claimed)
    }

    /// Refuses names that a committed plugin holds by a claim written before
    /// claims were keyed without case (`udfs/Echo.json`).
    async fn check_legacy_claims(&self, id: &str, functions: &[String]) -> Result<()> {
        let legacy: Vec<String> = self
            .store
            .list_keys(keys::UDFS_PREFIX)
            .await?
            .iter()
            .filter_map(|k| claim_stem(k))
            .filter(|s| s.bytes().any(|b| b.is_ascii_uppercase()))
            .map(str::to_string)
            .collect();
        for f in functions {
            for stem in legacy.iter().filter(|s| s.eq_ignore_ascii_case(f)) {
                let Some((claim, _)) = self
                    .read_claim(&format!("{}{stem}.json", keys::UDFS_PREFIX))
                    .await?
                else {
                    continue;
                };
                if claim.id == id {
                    continue;
                }
                if let Holder::Committed(existing) = self.holder(&claim, stem).await? {
                    return Err(Self::function_clash(f, existing, claim.plugin));
                }
            }
        }
        Ok(())
    }

    /// Reads a claim; `None` when absent. An unreadable claim is an error
    /// only for the caller that cares ([`Registry::claim`] takes it over).
    async fn read_claim(&self, key: &str) -> Result<Option<(Claim, Object)>> {
        let Some(obj) = self.store.get(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Claim>(&obj.body) {
            Ok(claim) => Ok(Some((claim, obj))),
            Err(e) => {
                tracing::warn!(key, error = %e, "unreadable function-name claim");
                Ok(None)
            }
        }
    }

    /// Who holds `claim` on `function` (any case): a committed plugin that
    /// lists the name, a request in flight, or no one.
    async fn holder(&self, claim: &Claim, function: &str) -> Result<Holder> {
        let fresh =
            now_secs().saturating_sub(claim.claimed_at) < self.settings.claim_grace.as_secs();
        match self.read_meta(PluginType::Function, &claim.plugin).await? {
            Some((meta, _)) if meta.id == claim.id => {
                let listed = meta
                    .functions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|x| x.eq_ignore_ascii_case(function));
                Ok(match listed {
                    Some(existing) => Holder::Committed(existing),
                    // An update or register of the instance, in flight.
                    None if fresh => Holder::Pending,
                    None => Holder::Gone,
                })
            }
            // Another instance of that name: the claim's instance is gone.
            Some(_) => Ok(Holder::Gone),
            // Not created yet, or deleted: only a create's claim waits.
            None if claim.creating && fresh => Ok(Holder::Pending),
            None => Ok(Holder::Gone),
        }
    }

    /// Claims one function name. `Ok(true)` when newly claimed, `Ok(false)`
    /// when this plugin instance already held it (in any case).
    async fn claim(&self, owner: &str, id: &str, function: &str, creating: bool) -> Result<bool> {
        let key = keys::udf(function);
        let body = Bytes::from(
            serde_json::to_vec(&Claim {
                plugin: owner.to_string(),
                id: id.to_string(),
                claimed_at: now_secs(),
                function: Some(function.to_string()),
                creating,
            })
            .expect("claim serialises"),
        );
        for _ in 0..5 {
            match self
                .store
                .put(&key, body.clone(), Condition::IfNoneMatch)
                .await
            {
                Ok(()) => return Ok(true),
                Err(StoreError::PreconditionFailed) => {}
                Err(e) => return Err(e.into()),
            }
            let Some(obj) = self.store.get(&key).await? else {
                continue;
            };
            let Ok(existing) = serde_json::from_slice::<Claim>(&obj.body) else {
                // An unreadable claim is stale: take it over.
                if self.take_over(&key, body.clone(), obj).await? {
                    return Ok(true);
                }
                continue;
            };
            if existing.id == id {
                return Ok(false);
            }
            match self.holder(&existing, function).await? {
                Holder::Committed(listed) => {
                    return Err(Self::function_clash(function, listed, existing.plugin))
                }
                Holder::Pending => {
                    let claimed_as = existing.function.unwrap_or_else(|| function.to_string());
                    return Err(Self::function_clash(function, claimed_as, existing.plugin));
                }
                Holder::Gone => {
                    if self.take_over(&key, body.clone(), obj).await? {
                        return Ok(true);
                    }
                }
            }
        }
        Err(RegistryError::Conflict(owner.to_string()))
    }

    /// The committed plugin that provides `function` in any case, and the
    /// name as it provides it.
    pub(super) async fn committed_owner(&self, function: &str) -> Result<Option<(String, String)>> {
        let Some((claim, _)) = self.read_claim(&keys::udf(function)).await? else {
            return Ok(None);
        };
        Ok(match self.holder(&claim, function).await? {
            Holder::Committed(existing) => Some((claim.plugin, existing)),
            Holder::Pending | Holder::Gone => None,
        })
    }

    async fn take_over(&self, key: &str, body: Bytes, stale: Object) -> Result<bool> {
        match self
            .store
            .put(key, body, Condition::IfMatch(stale.etag))
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::PreconditionFailed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Releases the claims of instance `id` on `functions` (best effort: a claim
    /// left behind is stale and is taken over by the next claimant). Each
    /// release is conditional on the claim read, so one taken over meanwhile
    /// stays.
    pub(super) async fn release_all(&self, id: &str, functions: &[String]) {
        for f in functions {
            for key in std::iter::once(keys::udf(f)).chain(legacy_key(f)) {
                let result = async {
                    if let Some((claim, obj)) = self.read_claim(&key).await? {
                        if claim.id == id {
                            match self.store.delete_if(&key, &obj.etag).await {
                                Ok(()) | Err(StoreError::PreconditionFailed) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    Ok::<_, RegistryError>(())
                }
                .await;
                if let Err(e) = result {
                    tracing::warn!(function = %f, error = %e, "could not release a function name claim");
                }
            }
        }
    }
}
