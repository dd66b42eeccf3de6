//! Staging a zip: download, scan, check and store it under a fresh key.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use url::Url;

use super::{display_url, now_rfc3339, PluginMeta, Registry, RegistryError, Result, Staged};
use crate::fetch::{FetchError, Tee};
use crate::package::{self, PluginType};
use crate::store::{keys, Store, UploadChunk};

/// Blocks of a download (8 MiB) queued for the scan of its entries. When
/// the scan falls further behind (inflating is slower than a download on
/// loopback), the download waits for it: that work has to be done before the
/// checks either way. 1 MiB made creates of deflated zips about 10% slower.
const SCAN_QUEUE: usize = 32;

impl<S: Store> Registry<S> {
    /// Downloads, checks and stores the zip; nothing is visible yet.
    pub(super) async fn stage(
        &self,
        ty: PluginType,
        name: &str,
        url: &Url,
        given: &str,
        shell_paras: &[String],
    ) -> Result<Staged> {
        // Download, hash, check and upload overlap: chunks go to the store as
        // they arrive (one upload, straight to the zip's final key), and the
        // upload is completed only once the zip has passed the checks;
        // otherwise it is aborted and nothing is stored. The key is fresh, so
        // nothing points at it until the metadata is written. The entries are
        // decompressed as they arrive too (on a blocking thread), so the
        // checks after the download read little more than the central
        // directory.
        let blob = keys::blob(&uuid::Uuid::new_v4().simple().to_string());
        let (tx, rx) = mpsc::channel::<UploadChunk>(8);
        let (scan_tx, scan) = self.start_scan().unzip();
        let started = std::time::Instant::now();
        let fetch_and_check = async move {
            let tee = Tee {
                upload: Some(&tx),
                scan: scan_tx,
            };
            let download = self
                .fetcher
                .download(url, &self.settings.tmp_dir, tee)
                .await
                .map_err(|source| RegistryError::Download {
                    uri: given.to_string(),
                    source,
                })?;
            let downloaded = started.elapsed();
            let scanned = match scan {
                Some(scan) => scan.await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "the zip scan stopped; the checks read the whole zip");
                    package::Scanned::default()
                }),
                None => package::Scanned::default(),
            };
            let scanned_ms = started.elapsed();
            let info = self
                .check_download(&download, ty, name, shell_paras, scanned)
                .await?;
            tracing::debug!(
                bytes = download.size,
                download_ms = downloaded.as_millis() as u64,
                scanned_ms = scanned_ms.as_millis() as u64,
                checked_ms = started.elapsed().as_millis() as u64,
                "zip downloaded and checked"
            );
            tx.send(UploadChunk::End)
                .await
                .map_err(|_| RegistryError::Internal("the upload stopped".into()))?;
            Ok::<_, RegistryError>((download, info))
        };
        let (checked, uploaded) = tokio::join!(fetch_and_check, self.store.put_stream(&blob, rx));
        let (download, info) = match (checked, uploaded) {
            (Ok(done), Ok(())) => done,
            (Ok(_), Err(store)) => return Err(store.into()),
            (Err(e), Ok(())) => {
                let _ = self.store.delete(&blob).await;
                return Err(e);
            }
            // The upload failing first makes the download stop: report the store.
            (Err(e), Err(store)) => {
                let upload_stopped = matches!(
                    &e,
                    RegistryError::Download {
                        source: FetchError::Local(_),
                        ..
                    }
                ) || matches!(&e, RegistryError::Internal(_));
                return Err(if upload_stopped { store.into() } else { e });
            }
        };
        tracing::debug!(
            key = %blob,
            stored_ms = started.elapsed().as_millis() as u64,
            "zip stored"
        );
        Ok(Staged {
            blob,
            sha256: download.sha256.clone(),
            size: download.size,
            info,
            source: display_url(url),
        })
    }

    /// Starts a scan of a zip's entries as its blocks arrive (see
    /// [`package::scan_entries`]) on a blocking thread, when a scan slot is
    /// free: the sender to feed it and the scan's result.
    pub(super) fn start_scan(
        &self,
    ) -> Option<(
        mpsc::Sender<Bytes>,
        tokio::task::JoinHandle<package::Scanned>,
    )> {
        let slot = Arc::clone(&self.scans).try_acquire_owned().ok()?;
        let (blocks, mut scan_rx) = mpsc::channel::<Bytes>(SCAN_QUEUE);
        let stream = futures_util::stream::poll_fn(move |cx| {
            scan_rx
                .poll_recv(cx)
                .map(|block| block.map(Ok::<_, std::io::Error>))
        });
        let zip_stream = SyncIoBridge::new(StreamReader::new(stream));
        let limits = self.settings.zip_limits;
        let scan = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            package::scan_entries(zip_stream, &limits)
        });
        Some((blocks, scan))
    }

    /// Runs the zip checks on a downloaded file (on a blocking thread),
    /// without decompressing again the entries `scanned` found intact.
    pub(super) async fn check_download(
        &self,
        download: &crate::fetch::Download,
        ty: PluginType,
        name: &str,
        shell_paras: &[String],
        scanned: package::Scanned,
    ) -> Result<package::PackageInfo> {
        let file = download
            .reopen()
            .map_err(|e| RegistryError::Internal(format!("reopen download: {e}")))?;
        let limits = self.settings.zip_limits;
        let (n, paras) = (name.to_string(), shell_paras.to_vec());
        let info = tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::new(file);
            package::inspect_zip_scanned(reader, ty, &n, &paras, &limits, &scanned)
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("zip check failed: {e}")))??;
        Ok(info)
    }

    pub(super) fn meta_from(
        ty: PluginType,
        name: &str,
        id: String,
        staged: Staged,
        functions: Option<Vec<String>>,
        shell_paras: Vec<String>,
        created: String,
    ) -> PluginMeta {
        PluginMeta {
            name: name.to_string(),
            version: staged.info.version,
            plugin_type: ty,
            id,
            blob: staged.blob,
            sha256: staged.sha256,
            size: staged.size,
            arch: staged.info.arch,
            build: Some(staged.info.build),
            so_file: staged.info.so_file,
            source: staged.source,
            updated: now_rfc3339(),
            created,
            functions,
            shell_paras,
            files: staged.info.files,
        }
    }
}
