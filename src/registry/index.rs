//! The name index of a plugin type, `index/{type}.json`: listing names is one
//! read however many plugins there are.
//!
//! The metadata objects stay the truth; the index is a view of their names
//! that is exact whenever it is used. The protocol:
//!
//! - A create or delete first adds a *lease* to the index (compare-and-swap),
//!   then writes or deletes the metadata, then *settles*: it removes its lease
//!   and sets the name's membership from whether the metadata exists, read
//!   after the index (so of two settles of one name, the one that wins the
//!   compare-and-swap saw the later state; the other retries).
//! - A list uses the index's names only when the index holds no lease.
//!   Otherwise (a request in flight, a request that died between its steps, a
//!   missing or unreadable index) it lists the metadata keys, and rebuilds the
//!   index from that listing when no live lease is held, with a
//!   compare-and-swap against the index it read before listing.
//! - Whoever creates the index (a lease or a list on a store without one)
//!   fills it from a listing made after finding it missing; the create-only
//!   write fails if anyone created it in between.
//! - A lease older than [`LEASE_TTL`] belongs to a request that died; it
//!   stops counting, and the next list's rebuild removes it.
//! - A create's lease ([`lease_create`]) is refused when the index holds a
//!   name that differs only in case and whose metadata exists, or a live
//!   lease of such a name: every change of a type's index is one
//!   compare-and-swap, so of two racing creates of `random` and `Random` the
//!   second to lease sees the first.
//!
//! The index object is `{"leases":{token:{name,since}},"names":[...]}`
//! with `names` sorted, so a list can answer with the `names` bytes as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::package::PluginType;
use crate::store::{keys, Condition, ETag, Store, StoreError};

/// How long a lease counts: longer than any request can take between adding
/// it and writing the metadata (requests are bounded by their timeouts).
pub const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// Compare-and-swap attempts before giving up (only under heavy contention).
const MAX_ATTEMPTS: u32 = 400;

/// The index document as written.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    #[serde(default)]
    leases: BTreeMap<String, Lease>,
    #[serde(default)]
    names: BTreeSet<String>,
}

/// A request between its lease and its settle.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    name: String,
    since: u64,
}

/// The index as a list reads it: `names` stays raw JSON.
#[derive(Debug, Deserialize)]
struct View<'a> {
    #[serde(default)]
    leases: BTreeMap<String, Lease>,
    #[serde(borrow)]
    names: &'a RawValue,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn live(lease: &Lease, now: u64) -> bool {
    lease.since + LEASE_TTL.as_secs() > now
}

/// Names of a type, as a JSON array (sorted) and as a list.
#[derive(Debug, Clone)]
pub struct Names {
    json: Bytes,
}

impl Names {
    fn from_set(names: &BTreeSet<String>) -> Self {
        Names {
            json: Bytes::from(serde_json::to_vec(names).expect("names serialise")),
        }
    }

    /// The names as a JSON array of strings, sorted.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The names, sorted.
    pub fn to_vec(&self) -> Vec<String> {
        serde_json::from_slice(&self.json).expect("the index holds a JSON array of names")
    }
}

/// A short random pause before retrying a compare-and-swap.
async fn backoff(attempt: u32) {
    let cap_ms = 1u64 << attempt.min(5);
    let jitter = (uuid::Uuid::new_v4().as_u128() as u64) % (cap_ms * 1000);
    tokio::time::sleep(Duration::from_micros(jitter)).await;
}

fn write_condition(etag: Option<ETag>) -> Condition {
    match etag {
        Some(etag) => Condition::IfMatch(etag),
        None => Condition::IfNoneMatch,
    }
}

/// Reads the index: `(document, etag)`; the document is `None` when the
/// object is missing or unreadable (then it is rebuilt from a listing).
async fn load<S: Store>(
    store: &S,
    ty: PluginType,
) -> Result<(Option<Index>, Option<ETag>), StoreError> {
    match store.get(&keys::name_index(ty)).await? {
        None => Ok((None, None)),
        Some(obj) => {
            let index = serde_json::from_slice(&obj.body)
                .map_err(|e| {
                    tracing::warn!(plugin_type = %ty, error = %e, "the name index is unreadable; it will be rebuilt");
                })
                .ok();
            Ok((index, Some(obj.etag)))
        }
    }
}

/// Changes the index with compare-and-swap, retrying on contention. `change`
/// may be called several times; it returns whether it changed anything.
async fn update<S, F, Fut>(store: &S, ty: PluginType, mut change: F) -> Result<(), StoreError>
where
    S: Store,
    F: FnMut(Option<Index>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Index>, StoreError>>,
{
    for attempt in 0..MAX_ATTEMPTS {
        let (index, etag) = load(store, ty).await?;
        let Some(new) = change(index).await? else {
            return Ok(());
        };
        let body = Bytes::from(serde_json::to_vec(&new).expect("index serialises"));
        match store
            .put(&keys::name_index(ty), body, write_condition(etag))
            .await
        {
            Ok(()) => return Ok(()),
            Err(StoreError::PreconditionFailed) => backoff(attempt).await,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(format!(
        "the {ty} name index is changed by too many requests at once"
    )))
}

/// `index`, or a new one of the names listed when there is none. Listed after
/// finding no index, the write that follows is create-only (or a
/// compare-and-swap over an unreadable one), so it holds.
async fn or_listed<S: Store>(
    store: &S,
    ty: PluginType,
    index: Option<Index>,
) -> Result<Index, StoreError> {
    Ok(match index {
        Some(index) => index,
        None => Index {
            leases: BTreeMap::new(),
            names: listed_names(store, ty).await?,
        },
    })
}

/// Takes a lease for a change of `name`'s metadata; returns its token.
pub async fn lease<S: Store>(store: &S, ty: PluginType, name: &str) -> Result<String, StoreError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    update(store, ty, |index| {
        let lease = Lease {
            name: name.to_string(),
            since: now_secs(),
        };
        let token = token.clone();
        async move {
            let mut index = or_listed(store, ty, index).await?;
            index.leases.insert(token, lease);
            Ok(Some(index))
        }
    })
    .await?;
    Ok(token)
}

/// The outcome of [`lease_create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateLease {
    /// The lease's token, for [`settle`].
    Leased(String),
    /// A plugin whose name differs from the one asked for only in case
    /// exists, or is being created or deleted: no lease was taken.
    CaseOf(String),
}

/// Takes a lease for the create of `name`, unless a plugin of the type whose
/// name differs only in case exists or has a live lease (see the module
/// documentation).
pub async fn lease_create<S: Store>(
    store: &S,
    ty: PluginType,
    name: &str,
) -> Result<CreateLease, StoreError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let clash = std::sync::Mutex::new(None::<String>);
    update(store, ty, |index| {
        let token = token.clone();
        let clash = &clash;
        async move {
            let mut index = or_listed(store, ty, index).await?;
            let now = now_secs();
            let other_case = |n: &str| n != name && n.eq_ignore_ascii_case(name);
            let in_flight = index
                .leases
                .values()
                .find(|l| live(l, now) && other_case(&l.name))
                .map(|l| l.name.clone());
            let mut found = in_flight;
            if found.is_none() {
                for n in index.names.iter().filter(|n| other_case(n)) {
                    // The index may lag behind for a name whose request died
                    // between its steps: the metadata decides.
                    if store.exists(&keys::plugin(ty, n)).await? {
                        found = Some(n.clone());
                        break;
                    }
                }
            }
            *clash.lock().expect("clash lock") = found.clone();
            if found.is_some() {
                return Ok(None);
            }
            index.leases.insert(
                token,
                Lease {
                    name: name.to_string(),
                    since: now,
                },
            );
            Ok(Some(index))
        }
    })
    .await?;
    Ok(match clash.into_inner().expect("clash lock") {
        Some(existing) => CreateLease::CaseOf(existing),
        None => CreateLease::Leased(token),
    })
}

/// A plugin of the type whose name differs from `name` only in case, as far
/// as the index tells in one read (a cheap check before a create downloads
/// anything; [`lease_create`] decides). A missing or unreadable index tells
/// nothing.
pub async fn case_variant<S: Store>(
    store: &S,
    ty: PluginType,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let (Some(index), _) = load(store, ty).await? else {
        return Ok(None);
    };
    for n in index
        .names
        .iter()
        .filter(|n| *n != name && n.eq_ignore_ascii_case(name))
    {
        if store.exists(&keys::plugin(ty, n)).await? {
            return Ok(Some(n.clone()));
        }
    }
    Ok(None)
}

/// Ends a lease: removes it and sets `name`'s membership from whether its
/// metadata exists now.
pub async fn settle<S: Store>(
    store: &S,
    ty: PluginType,
    name: &str,
    token: &str,
) -> Result<(), StoreError> {
    update(store, ty, |index| async move {
        // No index (removed or unreadable): the next lease or list rebuilds it.
        let Some(mut index) = index else {
            return Ok(None);
        };
        let had_lease = index.leases.remove(token).is_some();
        let exists = store.exists(&keys::plugin(ty, name)).await?;
        let changed = if exists {
            index.names.insert(name.to_string())
        } else {
            index.names.remove(name)
        };
        Ok((had_lease || changed).then_some(index))
    })
    .await
}

/// Lists the names of a type: from the index when no request is in flight,
/// otherwise from the metadata keys (then rebuilding the index when that is
/// safe; a store with no plugins of the type and no index is left as it is).
pub async fn names<S: Store>(store: &S, ty: PluginType) -> Result<Names, StoreError> {
    let obj = store.get(&keys::name_index(ty)).await?;
    let now = now_secs();
    let mut any_live = false;
    if let Some(obj) = &obj {
        if let Ok(view) = serde_json::from_slice::<View>(&obj.body) {
            if view.leases.is_empty() {
                return Ok(Names {
                    json: Bytes::copy_from_slice(view.names.get().as_bytes()),
                });
            }
            any_live = view.leases.values().any(|l| live(l, now));
        }
    }
    let listed = listed_names(store, ty).await?;
    if !any_live && (obj.is_some() || !listed.is_empty()) {
        rebuild(store, ty, &listed, obj.map(|o| o.etag)).await;
    }
    Ok(Names::from_set(&listed))
}

/// Names from the metadata keys (one list request per 1,000 plugins).
pub async fn listed_names<S: Store>(
    store: &S,
    ty: PluginType,
) -> Result<BTreeSet<String>, StoreError> {
    Ok(store
        .list_keys(&keys::plugins_prefix(ty))
        .await?
        .iter()
        .filter_map(|k| keys::plugin_name(ty, k))
        .map(str::to_string)
        .collect())
}

/// Replaces the index read with `etag` (or creates it when there was none) by
/// one built from `listed`, which was listed after that read. Lost races are
/// fine: whoever changed the index in between keeps it exact or leaves it for
/// the next list.
async fn rebuild<S: Store>(
    store: &S,
    ty: PluginType,
    listed: &BTreeSet<String>,
    etag: Option<ETag>,
) {
    let index = Index {
        leases: BTreeMap::new(),
        names: listed.clone(),
    };
    let body = Bytes::from(serde_json::to_vec(&index).expect("index serialises"));
    match store
        .put(&keys::name_index(ty), body, write_condition(etag))
        .await
    {
        Ok(()) => tracing::info!(plugin_type = %ty, names = listed.len(), "name index rebuilt"),
        Err(StoreError::PreconditionFailed) => {}
        Err(e) => tracing::warn!(plugin_type = %ty, error = %e, "could not rebuild the name index"),
    }
}

/// Rebuilds the index from a fresh listing unless a live lease is held (for
/// `gc`, which also repairs indexes). Returns whether it did.
pub async fn reindex<S: Store>(store: &S, ty: PluginType) -> Result<bool, StoreError> {
    let (index, etag) = load(store, ty).await?;
    let now = now_secs();
    if index.is_some_and(|i| i.leases.values().any(|l| live(l, now))) {
        return Ok(false);
    }
    let listed = listed_names(store, ty).await?;
    if etag.is_none() && listed.is_empty() {
        return Ok(false);
    }
    rebuild(store, ty, &listed, etag).await;
    Ok(true)
}
