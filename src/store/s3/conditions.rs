//! The check of a store's conditional requests, once per bucket and prefix.
//!
//! An S3-compatible server that ignores `If-None-Match` would let two creates
//! of one name both win; one that ignores `If-Match` on PutObject would lose
//! updates. The first process to use a store probes it under
//! [`keys::RESERVED_PREFIX`] and records what it found in
//! [`keys::STORE_CHECK`]; later processes (Lambda cold starts) read that one
//! small object instead of probing. `docs/storage.md` describes the probe.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::S3Store;
use crate::store::{keys, Condition, ETag, Store, StoreError};

/// Version of the probe: a record written by another version is probed again.
pub const CHECK_VERSION: u32 = 1;

/// What a store does with conditional requests, as probed and recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreConditions {
    /// The probe's version ([`CHECK_VERSION`]).
    pub check: u32,
    /// When it was probed (RFC 3339, UTC).
    pub checked_at: String,
    /// PutObject with `If-None-Match: *` is refused (412) on an existing key.
    pub if_none_match: bool,
    /// PutObject with `If-Match` is refused on another tag and accepted on the current one.
    pub if_match: bool,
    /// DeleteObject with `If-Match` is refused on another tag and deletes on
    /// the current one. When it is not (MinIO), conditional deletes write a
    /// deletion marker with a conditional PutObject instead.
    pub delete_if_match: bool,
}

impl StoreConditions {
    /// The problems the registry cannot work around, each a phrase that
    /// follows the store's location ("s3://b ignores ...").
    pub fn problems(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.if_none_match {
            out.push("ignores If-None-Match on PutObject: two creates of one name could both win");
        }
        if !self.if_match {
            out.push(
                "ignores If-Match on PutObject: of two concurrent updates or deletes, both could win and one change be lost",
            );
        }
        out
    }
}

/// `Ok(true)` when a write was refused with 412, `Ok(false)` when it was
/// accepted; other failures are passed on.
fn refused(r: Result<(), StoreError>) -> Result<bool, StoreError> {
    match r {
        Ok(()) => Ok(false),
        Err(StoreError::PreconditionFailed) => Ok(true),
        Err(e) => Err(e),
    }
}

/// A tag no object has.
fn wrong_tag() -> ETag {
    ETag("\"0123456789abcdef0123456789abcdef\"".into())
}

impl S3Store {
    /// What the store does with conditional requests: the recorded result
    /// of the check, or a probe (recorded for later processes) when there is
    /// none; known once per process. When the store has
    /// [`StoreConditions::problems`] and the settings allow it anyway, each
    /// is logged as a warning then.
    pub async fn conditions(&self) -> Result<StoreConditions, StoreError> {
        let found = self
            .conditions
            .get_or_try_init(|| async {
                let c = self.load_conditions().await?;
                if self.settings.allow_unsafe {
                    for problem in c.problems() {
                        tracing::warn!(
                            store = %self.location(),
                            "store {} {problem}; running anyway as KUIPER_ALLOW_UNSAFE_STORE is set",
                            self.location()
                        );
                    }
                }
                Ok::<_, StoreError>(c)
            })
            .await?;
        Ok(found.clone())
    }

    /// Why the service must not use a store with these conditions (naming
    /// the store, the problem and the flag), unless the settings allow it.
    pub fn refusal(&self, conditions: &StoreConditions) -> Option<String> {
        let problem = conditions.problems().into_iter().next()?;
        (!self.settings.allow_unsafe).then(|| {
            format!(
                "store {} {problem}; set KUIPER_ALLOW_UNSAFE_STORE=true (or pass --allow-unsafe-store) to run anyway",
                self.location()
            )
        })
    }

    /// The conditions, or an error when the store must be refused
    /// (before any conditional request).
    pub(super) async fn safe_conditions(&self) -> Result<StoreConditions, StoreError> {
        let c = self.conditions().await?;
        match self.refusal(&c) {
            Some(why) => Err(StoreError::Other(why)),
            None => Ok(c),
        }
    }

    /// Reads the record, or probes and writes it.
    async fn load_conditions(&self) -> Result<StoreConditions, StoreError> {
        let existing = self.get(keys::STORE_CHECK).await?;
        if let Some(obj) = &existing {
            match serde_json::from_slice::<StoreConditions>(&obj.body) {
                Ok(c) if c.check == CHECK_VERSION => {
                    tracing::debug!(store = %self.location(), ?c, "store check read from its record");
                    return Ok(c);
                }
                Ok(c) => tracing::info!(
                    store = %self.location(),
                    recorded = c.check,
                    "store check recorded by another version; probing again"
                ),
                Err(e) => tracing::warn!(
                    store = %self.location(),
                    error = %e,
                    "store check record unreadable; probing again"
                ),
            }
        }
        let c = self.probe().await?;
        let body = serde_json::to_vec_pretty(&c).expect("conditions serialise");
        let condition = match existing {
            Some(obj) => Condition::IfMatch(obj.etag),
            None => Condition::IfNoneMatch,
        };
        match self
            .put_object_unguarded(keys::STORE_CHECK, Bytes::from(body), condition)
            .await
        {
            // Another process recorded its own probe meanwhile: as good as ours.
            Ok(()) | Err(StoreError::PreconditionFailed) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(
            store = %self.location(),
            if_none_match = c.if_none_match,
            if_match = c.if_match,
            delete_if_match = c.delete_if_match,
            record = keys::STORE_CHECK,
            "store conditional requests probed and recorded"
        );
        Ok(c)
    }

    /// Probes under a fresh key of the reserved prefix, then removes it.
    async fn probe(&self) -> Result<StoreConditions, StoreError> {
        let key = format!(
            "{}probe-{}",
            keys::RESERVED_PREFIX,
            uuid::Uuid::new_v4().simple()
        );
        let result = self.probe_at(&key).await;
        if let Err(e) = self.delete(&key).await {
            tracing::warn!(key, error = %e, "cannot remove the store probe");
        }
        result
    }

    async fn probe_at(&self, key: &str) -> Result<StoreConditions, StoreError> {
        let put = |body: &'static str, condition: Condition| {
            self.put_object_unguarded(key, Bytes::from_static(body.as_bytes()), condition)
        };
        put("1", Condition::IfNoneMatch).await?;
        let if_none_match = refused(put("2", Condition::IfNoneMatch).await)?;
        let refuses_other_tag = refused(put("3", Condition::IfMatch(wrong_tag())).await)?;
        let current = self
            .get(key)
            .await?
            .ok_or_else(|| StoreError::Other(format!("the store probe {key} vanished")))?;
        let accepts_current_tag = !refused(put("4", Condition::IfMatch(current.etag)).await)?;
        let current = self
            .get(key)
            .await?
            .ok_or_else(|| StoreError::Other(format!("the store probe {key} vanished")))?;
        let delete_if_match = match self.delete_object_if(key, &wrong_tag()).await {
            Err(StoreError::PreconditionFailed) => {
                self.exists(key).await?
                    && self.delete_object_if(key, &current.etag).await.is_ok()
                    && !self.exists(key).await?
            }
            // Deleted despite the other tag, or refused as unsupported.
            Ok(()) | Err(StoreError::Other(_)) => false,
            Err(e) => return Err(e),
        };
        Ok(StoreConditions {
            check: CHECK_VERSION,
            checked_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            if_none_match,
            if_match: refuses_other_tag && accepts_current_tag,
            delete_if_match,
        })
    }
}
