//! Create and update: stage the zip, claim names, commit the metadata.

use bytes::Bytes;

use super::{
    index, now_rfc3339, parse_callback, PluginMeta, PluginRequest, Registry, RegistryError, Result,
};
use crate::package::{self, PluginType};
use crate::store::{keys, Condition, Object, Store, StoreError};

impl<S: Store> Registry<S> {
    /// Creates a plugin: validate, download, check, store, commit, callback.
    pub async fn create(&self, ty: PluginType, req: PluginRequest) -> Result<()> {
        package::validate_name(&req.name)?;
        let url = self.check_file_url(&req.file)?;
        let callback = parse_callback(&self.fetcher, req.callback.as_deref())?;
        let functions = match ty {
            PluginType::Function => {
                let list = req
                    .functions
                    .clone()
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| vec![req.name.clone()]);
                Self::check_functions(&list)?;
                Some(list)
            }
            _ => None,
        };
        if ty != PluginType::Function && req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(RegistryError::InvalidInput(format!(
                "functions are only allowed for function plugins, not {ty}"
            )));
        }
        let name = req.name.as_str();
        // Cheap checks first, so nothing is downloaded for a request that cannot succeed.
        if self.store.exists(&keys::plugin(ty, name)).await? {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        if let Some(existing) = index::case_variant(&self.store, ty, name).await? {
            return Err(RegistryError::DuplicateOf {
                name: name.to_string(),
                existing,
            });
        }
        for f in functions.iter().flatten() {
            if let Some((owner, existing)) = self.committed_owner(f).await? {
                return Err(Self::function_clash(f, existing, owner));
            }
        }
        let target = self.target(req.ekuiper.as_ref()).await?;
        let staged = self
            .stage(ty, name, &url, &req.file, &req.shell_paras)
            .await?;
        Self::check_fits(target.as_ref(), &staged.info.build)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let claimed = match &functions {
            Some(list) => self.claim_all(name, &id, list, true).await?,
            None => Vec::new(),
        };
        let now = now_rfc3339();
        let meta = Self::meta_from(
            ty,
            name,
            id.clone(),
            staged,
            functions,
            req.shell_paras,
            now,
        );
        let body = Bytes::from(serde_json::to_vec_pretty(&meta).expect("metadata serialises"));
        // The lease is where names that differ only in case are told apart
        // for good: of two racing creates, the second to lease sees the first.
        let lease = match index::lease_create(&self.store, ty, name).await {
            Ok(index::CreateLease::Leased(lease)) => lease,
            Ok(index::CreateLease::CaseOf(existing)) => {
                self.release_all(&id, &claimed).await;
                return Err(RegistryError::DuplicateOf {
                    name: name.to_string(),
                    existing,
                });
            }
            Err(e) => {
                self.release_all(&id, &claimed).await;
                return Err(e.into());
            }
        };
        let committed = self
            .store
            .put(&keys::plugin(ty, name), body, Condition::IfNoneMatch)
            .await;
        self.settle(ty, name, &lease).await;
        if let Err(e) = committed {
            self.release_all(&id, &claimed).await;
            return Err(match e {
                StoreError::PreconditionFailed => RegistryError::Duplicate(name.to_string()),
                other => other.into(),
            });
        }
        tracing::info!(plugin_type = %ty, name, sha256 = %meta.sha256, "plugin created");
        self.callback(callback).await
    }

    /// Replaces a plugin's zip (and optionally its function list). The new
    /// version is downloaded, checked and stored before the metadata is swapped;
    /// a failure leaves the old version in place.
    pub async fn update(&self, ty: PluginType, name: &str, mut req: PluginRequest) -> Result<()> {
        package::validate_name(name)?;
        if !req.name.is_empty() && req.name != name {
            return Err(RegistryError::InvalidInput(format!(
                "invalid name {}: the body name must be empty or equal the plugin name {name} in the path",
                req.name
            )));
        }
        let url = self.check_file_url(&req.file)?;
        let callback = parse_callback(&self.fetcher, req.callback.as_deref())?;
        if let Some(list) = req.functions.as_ref().filter(|l| !l.is_empty()) {
            if ty != PluginType::Function {
                return Err(RegistryError::InvalidInput(format!(
                    "functions are only allowed for function plugins, not {ty}"
                )));
            }
            Self::check_functions(list)?;
        }
        let Some((current, obj)) = self.read_meta(ty, name).await? else {
            return Err(RegistryError::NotExist(name.to_string()));
        };
        let target = self.target(req.ekuiper.as_ref()).await?;
        let staged = self
            .stage(ty, name, &url, &req.file, &req.shell_paras)
            .await?;
        Self::check_fits(target.as_ref(), &staged.info.build)?;
        let functions = match ty {
            PluginType::Function => Some(
                req.functions
                    .take()
                    .filter(|l| !l.is_empty())
                    .or_else(|| current.functions.clone())
                    .unwrap_or_else(|| vec![name.to_string()]),
            ),
            _ => None,
        };
        self.swap_meta(&current, obj, functions, |old, functions| {
            Self::meta_from(
                ty,
                name,
                old.id.clone(),
                staged,
                functions,
                req.shell_paras,
                old.created.clone(),
            )
        })
        .await?;
        tracing::info!(plugin_type = %ty, name, "plugin updated");
        self.callback(callback).await
    }

    /// Claims any new function names, swaps the metadata with compare-and-swap,
    /// then releases names the plugin no longer has.
    pub(super) async fn swap_meta(
        &self,
        current: &PluginMeta,
        obj: Object,
        functions: Option<Vec<String>>,
        build: impl FnOnce(&PluginMeta, Option<Vec<String>>) -> PluginMeta,
    ) -> Result<()> {
        let old: Vec<String> = current.functions.clone().unwrap_or_default();
        let new: Vec<String> = functions.clone().unwrap_or_default();
        // Claims are keyed without case: a name whose case changes keeps its claim.
        let within = |list: &[String], f: &String| list.iter().any(|x| x.eq_ignore_ascii_case(f));
        let added: Vec<String> = new.iter().filter(|f| !within(&old, f)).cloned().collect();
        let removed: Vec<String> = old.iter().filter(|f| !within(&new, f)).cloned().collect();
        let claimed = self
            .claim_all(&current.name, &current.id, &added, false)
            .await?;
        let meta = build(current, functions);
        let body = Bytes::from(serde_json::to_vec_pretty(&meta).expect("metadata serialises"));
        let key = keys::plugin(current.plugin_type, &current.name);
        if let Err(e) = self
            .store
            .put(&key, body, Condition::IfMatch(obj.etag))
            .await
        {
            self.release_all(&current.id, &claimed).await;
            return Err(match e {
                StoreError::PreconditionFailed => RegistryError::Conflict(current.name.clone()),
                other => other.into(),
            });
        }
        self.release_all(&current.id, &removed).await;
        Ok(())
    }
}
