//! Fetching one plugin: the metadata checked, the zip downloaded (into
//! memory or a file under `.kuiper-node/tmp/`), then staged.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Arc;

use super::script::run_install_script;
use super::stage::{stage, Download};
use super::{Ctx, Fetch, Ready, WorkDir, IN_MEMORY_MAX};
use crate::node::layout;
use crate::package::{match_library, PluginType};
use crate::registry::PluginMeta;
use crate::store::{keys, Store};

impl<S: Store> Ctx<'_, S> {
    /// Downloads, verifies and stages a plugin (running its `install.sh`).
    pub(super) async fn fetch(
        &self,
        ty: PluginType,
        name: &str,
        fetch: Fetch,
    ) -> Result<Box<Ready>, String> {
        let Fetch {
            meta,
            etag,
            existed,
        } = fetch;

        if meta.arch != self.opts.arch {
            return Err(format!(
                "built for {}, but this node is {}; skipped: not installed and not loaded",
                meta.arch, self.opts.arch
            ));
        }
        let has_script = meta.files.iter().any(|f| f.name == "install.sh");
        if has_script && !self.opts.allow_install_scripts {
            return Err(
                "the plugin has an install.sh, which runs only with --allow-install-scripts; not installed".to_string(),
            );
        }

        let work = WorkDir(self.tmp.join(format!("{}-{name}", ty.as_str())));
        fs::create_dir_all(&work.0)
            .map_err(|e| format!("cannot create {}: {e}", work.0.display()))?;
        let missing = || {
            format!(
                "the zip {} is missing from the store; nothing installed",
                meta.blob
            )
        };
        let in_memory = (meta.size <= IN_MEMORY_MAX)
            .then(|| Arc::clone(&self.memory).try_acquire_many_owned(meta.size.max(1) as u32))
            .and_then(Result::ok);
        let download = if let Some(permit) = in_memory {
            let zip = self
                .store
                .get(&meta.blob)
                .await
                .map_err(|e| format!("cannot download {}: {e}", meta.blob))?
                .ok_or_else(missing)?;
            Download::Memory {
                zip: zip.body,
                _budget: permit,
            }
        } else {
            let zip_path = work.0.join("download.zip");
            let found = self
                .store
                .get_to_file(&meta.blob, &zip_path)
                .await
                .map_err(|e| format!("cannot download {}: {e}", meta.blob))?;
            if !found {
                return Err(missing());
            }
            Download::File(zip_path)
        };
        let staged = {
            let (meta, dir, limits, arch, memory) = (
                meta.clone(),
                work.0.clone(),
                self.opts.zip_limits,
                self.opts.arch.clone(),
                Arc::clone(&self.memory),
            );
            tokio::task::spawn_blocking(move || {
                stage(&meta, &dir, &download, &limits, &arch, &memory)
            })
            .await
            .map_err(|e| format!("staging failed: {e}"))??
        };
        if let Some(dir) = &staged.install_dir {
            run_install_script(dir, &meta.shell_paras, self.opts.install_timeout).await?;
        }

        Ok(Box::new(Ready {
            meta,
            etag,
            files: staged.files,
            existed,
            _work: work,
        }))
    }
}

/// Checks metadata read from the store before anything is downloaded.
pub(super) fn check_meta(ty: PluginType, name: &str, meta: &PluginMeta) -> Result<(), String> {
    if meta.name != name || meta.plugin_type != ty {
        return Err(format!(
            "metadata {} describes {}/{}; skipped",
            keys::plugin(ty, name),
            meta.plugin_type,
            meta.name
        ));
    }
    let hex_ok = meta.sha256.len() == 64
        && meta
            .sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex_ok {
        return Err(format!(
            "metadata has an invalid sha256 {:?}; skipped",
            meta.sha256
        ));
    }
    if !keys::is_blob_key(&meta.blob) {
        return Err(format!(
            "metadata names an invalid zip key {:?}; skipped",
            meta.blob
        ));
    }
    if match_library(name, &meta.so_file).is_none() || meta.so_file.contains('/') {
        return Err(format!(
            "metadata names an invalid library {:?}; skipped",
            meta.so_file
        ));
    }
    if !meta.files.iter().any(|f| f.name == meta.so_file) {
        return Err(format!(
            "metadata does not list the library {} among its files; skipped",
            meta.so_file
        ));
    }
    let mut seen = BTreeSet::new();
    for f in &meta.files {
        layout::placement(ty, name, &meta.so_file, &f.name)?;
        if !seen.insert(f.name.as_str()) {
            return Err(format!("metadata lists {} twice; skipped", f.name));
        }
    }
    Ok(())
}
