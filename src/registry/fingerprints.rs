//! Stored eKuiper build fingerprints, and whether a plugin fits one: so that
//! publishers learn at publish time, not from their fleet, that a library
//! will not load into the eKuiper their nodes run.
//!
//! A fingerprint is what `kuiper-node fingerprint /path/to/kuiperd` prints;
//! it is stored under a name (`PUT /fingerprints/{name}`), and named (or
//! given inline) in a create's or update's `ekuiper` field, or in a
//! describe's `?fits=` query.

use bytes::Bytes;
use serde::Serialize;

use super::{EkuiperTarget, Registry, RegistryError, Result};
use crate::package::{self, BuildFingerprint};
use crate::store::{keys, Condition, Store};

/// Whether a plugin loads into a stored eKuiper (describe with `?fits=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fit {
    /// The fingerprint's name.
    pub ekuiper: String,
    /// Whether it would load.
    pub fits: bool,
    /// Each difference when it would not (empty when it fits).
    pub reasons: Vec<String>,
}

impl<S: Store> Registry<S> {
    /// Stores `fingerprint` as `name` (replacing one of that name).
    pub async fn put_fingerprint(&self, name: &str, fingerprint: &BuildFingerprint) -> Result<()> {
        package::validate_name(name)?;
        if fingerprint.go.is_none() {
            return Err(RegistryError::InvalidInput(format!(
                "fingerprint {name} has no Go build information: stock eKuiper is a Go program; read it with kuiper-node fingerprint PATH-TO-KUIPERD"
            )));
        }
        let body = serde_json::to_vec_pretty(fingerprint).expect("a fingerprint serialises");
        self.store
            .put(&keys::fingerprint(name), Bytes::from(body), Condition::None)
            .await?;
        Ok(())
    }

    /// The fingerprint stored as `name`.
    pub async fn fingerprint(&self, name: &str) -> Result<BuildFingerprint> {
        package::validate_name(name)?;
        let Some(obj) = self.store.get(&keys::fingerprint(name)).await? else {
            return Err(RegistryError::NotFound);
        };
        serde_json::from_slice(&obj.body).map_err(|e| {
            RegistryError::Internal(format!("stored fingerprint {name} is not readable: {e}"))
        })
    }

    /// The names of the stored fingerprints, sorted.
    pub async fn fingerprints(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .store
            .list(keys::FINGERPRINTS_PREFIX)
            .await?
            .into_iter()
            .filter_map(|l| {
                l.key
                    .strip_prefix(keys::FINGERPRINTS_PREFIX)?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes the fingerprint stored as `name`.
    pub async fn delete_fingerprint(&self, name: &str) -> Result<()> {
        package::validate_name(name)?;
        let key = keys::fingerprint(name);
        if !self.store.exists(&key).await? {
            return Err(RegistryError::NotExist(name.to_string()));
        }
        self.store.delete(&key).await?;
        Ok(())
    }

    /// The fingerprint a create's or update's `ekuiper` field names, read
    /// before anything is downloaded, with how to name it in a message.
    pub(super) async fn target(
        &self,
        target: Option<&EkuiperTarget>,
    ) -> Result<Option<(String, BuildFingerprint)>> {
        match target {
            None => Ok(None),
            Some(EkuiperTarget::Inline(f)) => {
                if f.go.is_none() {
                    return Err(RegistryError::InvalidInput(
                        "ekuiper: the fingerprint has no Go build information (read it with kuiper-node fingerprint PATH-TO-KUIPERD)"
                            .into(),
                    ));
                }
                Ok(Some(("given".to_string(), f.clone())))
            }
            Some(EkuiperTarget::Named(name)) => match self.fingerprint(name).await {
                Ok(f) => Ok(Some((name.clone(), f))),
                Err(RegistryError::NotFound) => Err(RegistryError::InvalidInput(format!(
                    "ekuiper: no fingerprint named {name} is stored (PUT /fingerprints/{name} first)"
                ))),
                Err(e) => Err(e),
            },
        }
    }

    /// Refuses a library built as `build` that would not load into `target`.
    pub(super) fn check_fits(
        target: Option<&(String, BuildFingerprint)>,
        build: &BuildFingerprint,
    ) -> Result<()> {
        let Some((label, node)) = target else {
            return Ok(());
        };
        let reasons = package::refusals(node, build);
        if reasons.is_empty() {
            return Ok(());
        }
        Err(RegistryError::InvalidInput(format!(
            "the library would not load into eKuiper {label}: {}",
            reasons.join("; ")
        )))
    }

    /// Whether plugin `ty/name` loads into the eKuiper stored as `fingerprint`.
    pub async fn fits(
        &self,
        ty: package::PluginType,
        name: &str,
        fingerprint: &str,
    ) -> Result<Fit> {
        let meta = self.describe(ty, name).await?;
        let node = match self.fingerprint(fingerprint).await {
            Err(RegistryError::NotFound) => {
                return Err(RegistryError::InvalidInput(format!(
                    "fits: no fingerprint named {fingerprint} is stored"
                )))
            }
            other => other?,
        };
        let reasons = match &meta.build {
            Some(build) => package::refusals(&node, build),
            None => {
                vec!["published before build fingerprints were recorded: update it to check".into()]
            }
        };
        Ok(Fit {
            ekuiper: fingerprint.to_string(),
            fits: reasons.is_empty(),
            reasons,
        })
    }
}
