//! Delete: drop a plugin's metadata, conditional on the version read, and
//! release the function names that version held.

use super::{index, parse_callback, PluginMeta, Registry, RegistryError, Result};
use crate::package::{self, PluginType};
use crate::store::{keys, Object, Store, StoreError};

/// Attempts at deleting a plugin that updates keep changing.
const DELETE_ATTEMPTS: usize = 5;

impl<S: Store> Registry<S> {
    /// Drops a plugin from the registry; nodes remove it when they restart.
    ///
    /// The metadata is deleted only if it is still the version read, so of
    /// concurrent deletes exactly one succeeds (the others find nothing: not
    /// exist), and a delete never removes an instance created after it read.
    /// A version changed by an update of the same instance is read again.
    pub async fn delete(&self, ty: PluginType, name: &str, callback: Option<&str>) -> Result<()> {
        package::validate_name(name)?;
        let callback = parse_callback(&self.fetcher, callback)?;
        let Some(read) = self.read_meta(ty, name).await? else {
            return Err(RegistryError::NotExist(name.to_string()));
        };
        let lease = index::lease(&self.store, ty, name).await?;
        let deleted = self.delete_version(ty, name, read).await;
        self.settle(ty, name, &lease).await;
        let meta = deleted?;
        // The version deleted is the last one: its claims are the instance's.
        // A register of the instance racing this one claims its new names
        // before its compare-and-swap, which now fails, and releases them; a
        // claim it leaves (it died) names an instance that is gone and
        // blocks no one.
        if let Some(functions) = &meta.functions {
            self.release_all(&meta.id, functions).await;
        }
        tracing::info!(plugin_type = %ty, name, "plugin deleted");
        self.callback(callback).await
    }

    /// Deletes the metadata if it is still `read` (or a later version of the
    /// same instance); returns the version deleted.
    async fn delete_version(
        &self,
        ty: PluginType,
        name: &str,
        read: (PluginMeta, Object),
    ) -> Result<PluginMeta> {
        let key = keys::plugin(ty, name);
        let (mut meta, mut obj) = read;
        for _ in 0..DELETE_ATTEMPTS {
            match self.store.delete_if(&key, &obj.etag).await {
                Ok(()) => return Ok(meta),
                Err(StoreError::PreconditionFailed) => {}
                Err(e) => return Err(e.into()),
            }
            match self.read_meta(ty, name).await? {
                // Another request deleted it first.
                None => return Err(RegistryError::NotExist(name.to_string())),
                // Updated meanwhile: delete the new version.
                Some((now, now_obj)) if now.id == meta.id => (meta, obj) = (now, now_obj),
                // Deleted and created again: the new instance stays.
                Some(_) => return Err(RegistryError::Conflict(name.to_string())),
            }
        }
        Err(RegistryError::Conflict(name.to_string()))
    }

    /// Ends a name-index lease. A failure leaves the lease, which makes lists
    /// read the metadata keys until it expires: slower, still exact.
    pub(super) async fn settle(&self, ty: PluginType, name: &str, lease: &str) {
        if let Err(e) = index::settle(&self.store, ty, name, lease).await {
            tracing::warn!(plugin_type = %ty, name, error = %e, "could not update the name index; lists will read the metadata keys until the lease expires");
        }
    }
}
