//! Outbound HTTP: downloading plugin zips (streamed to a temporary file while
//! hashed, under a size cap and timeouts) and calling callback URLs, both under
//! the address policy of [`policy`].

pub mod policy;
mod uploads;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use url::Url;

use crate::store::UploadChunk;

use self::policy::{AddressPolicy, Refused};

/// The name prefix of download spool files in the temporary folder, by which
/// `gc` and a starting service recognise the ones dead processes left. A
/// spool file is locked (`flock`) while its download is in use, so they also
/// know it is not abandoned.
pub const SPOOL_PREFIX: &str = "kuiper-spool-";

/// A download's body arrives in chunks of a few KiB. They are gathered into
/// blocks of this size, each written once to the spool file and passed on
/// once to the upload: per-chunk file writes and channel sends cost more
/// than the bytes.
const BLOCK: usize = 256 << 10;

/// A spool file written on the blocking pool one block at a time, while the
/// download gathers the next block.
struct Spool {
    file: Option<std::fs::File>,
    writing: Option<tokio::task::JoinHandle<std::io::Result<std::fs::File>>>,
}

impl Spool {
    fn new(file: std::fs::File) -> Self {
        Spool {
            file: Some(file),
            writing: None,
        }
    }

    /// Starts writing `block` once the previous block is written.
    async fn write(&mut self, block: Bytes) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file = self.finish().await?;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            file.write_all(&block)?;
            Ok(file)
        }));
        Ok(())
    }

    /// The file, once every block is written.
    async fn finish(&mut self) -> std::io::Result<std::fs::File> {
        match self.writing.take() {
            Some(writing) => writing.await.map_err(std::io::Error::other)?,
            None => self
                .file
                .take()
                .ok_or_else(|| std::io::Error::other("the spool file was lost")),
        }
    }
}

/// Where a download's blocks go as they arrive, besides its spool file.
#[derive(Debug, Default)]
pub struct Tee<'a> {
    /// An upload running beside the download: it gets the announced size
    /// (when there is one) and every block, never [`UploadChunk::End`] (the
    /// caller decides whether the upload commits). The upload stopping stops
    /// the download.
    pub upload: Option<&'a mpsc::Sender<UploadChunk>>,
    /// A reader of the zip as it arrives (`package::scan_entries`): it gets
    /// every block until it stops reading, which is no error. Dropped when
    /// the download ends, so the reader sees the end of the stream.
    pub scan: Option<mpsc::Sender<Bytes>>,
}

/// Writes a block of a download to its spool file and passes it on.
async fn pass_on(block: Bytes, spool: &mut Spool, tee: &mut Tee<'_>) -> Result<(), FetchError> {
    spool
        .write(block.clone())
        .await
        .map_err(|e| FetchError::Local(e.to_string()))?;
    if let Some(tx) = tee.upload {
        tx.send(UploadChunk::Data(block.clone()))
            .await
            .map_err(|_| FetchError::Local("the upload stopped".into()))?;
    }
    if let Some(tx) = &tee.scan {
        if tx.send(block).await.is_err() {
            tee.scan = None;
        }
    }
    Ok(())
}

/// Limits and policy for outbound requests.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Largest download accepted, in bytes (checked while streaming).
    pub max_download_bytes: u64,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole download, from request to last byte.
    pub download_timeout: Duration,
    /// Longest pause between two reads of a body.
    pub read_timeout: Duration,
    /// Time for a whole callback request.
    pub callback_timeout: Duration,
    /// Where `file://` downloads may come from; `None` refuses `file://`.
    pub uploads_dir: Option<PathBuf>,
    /// Which destinations may be reached.
    pub policy: AddressPolicy,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            max_download_bytes: 256 << 20,
            connect_timeout: Duration::from_secs(10),
            download_timeout: Duration::from_secs(25),
            read_timeout: Duration::from_secs(10),
            callback_timeout: Duration::from_secs(10),
            uploads_dir: None,
            policy: AddressPolicy::default(),
        }
    }
}

/// A downloaded file, hashed on the way in.
#[derive(Debug)]
pub struct Download {
    /// The temporary file; removed when dropped (see [`Drop`] below).
    file: Option<tempfile::NamedTempFile>,
    /// Hex SHA-256 of its content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl Download {
    fn new(file: tempfile::NamedTempFile, sha256: String, size: u64) -> Self {
        Download {
            file: Some(file),
            sha256,
            size,
        }
    }

    /// Where the downloaded file is.
    pub fn path(&self) -> &Path {
        self.file.as_ref().expect("present until dropped").path()
    }

    /// A new handle on the downloaded file, reading from its start.
    pub fn reopen(&self) -> std::io::Result<std::fs::File> {
        self.file.as_ref().expect("present until dropped").reopen()
    }
}

impl Drop for Download {
    /// Removes the file's name at once, and closes the file on the blocking
    /// pool when there is a runtime: closing the last handle of a removed
    /// file frees its pages, which takes milliseconds for a large download
    /// (about 25 ms for 68 MiB) and would otherwise hold up the async task
    /// that drops it, such as a create still to commit and answer.
    fn drop(&mut self) {
        let Some(named) = self.file.take() else {
            return;
        };
        let (file, path) = named.into_parts();
        drop(path);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(file))),
            Err(_) => drop(file),
        }
    }
}

/// Why a download failed. Shown to the user after `fail to download file {uri}: `.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered, but not with success.
    #[error("cannot download the file with status: {0}")]
    Status(String),
    /// Larger than the cap.
    #[error("the file is larger than the download limit of {0} bytes (KUIPER_MAX_DOWNLOAD_BYTES)")]
    TooLarge(u64),
    /// The download did not finish in time.
    #[error("timed out after {0} s")]
    Timeout(u64),
    /// Connection refused, reset, closed early, TLS failure, too many redirects...
    #[error("{0}")]
    Transport(String),
    /// The destination (or a redirect's) is not allowed by the address policy.
    #[error("{0}")]
    Refused(String),
    /// `file://` outside the allowed directory, or not allowed at all.
    #[error("file access denied: {0}")]
    FileAccess(String),
    /// A local error while writing the temporary file.
    #[error("cannot store the download locally: {0}")]
    Local(String),
}

/// Outbound HTTP client for downloads and callbacks.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Built on first use: building it loads the system's trust store, which
    /// would otherwise add milliseconds to every cold start.
    client: Arc<OnceLock<Result<reqwest::Client, String>>>,
    settings: FetchSettings,
}

/// Sends a file's bytes to an upload, in 1 MiB chunks.
async fn feed_file(path: &Path, tx: &mpsc::Sender<UploadChunk>) -> Result<(), FetchError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| FetchError::Local(e.to_string()))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| FetchError::Local(e.to_string()))?
        .len();
    tx.send(UploadChunk::Size(len))
        .await
        .map_err(|_| FetchError::Local("the upload stopped".into()))?;
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| FetchError::Local(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        tx.send(UploadChunk::Data(Bytes::from(buf)))
            .await
            .map_err(|_| FetchError::Local("the upload stopped".into()))?;
    }
}

/// A redirect refused by the policy.
#[derive(Debug, thiserror::Error)]
#[error("redirect to {url} refused: {reason}")]
struct RedirectRefused {
    url: String,
    reason: String,
}

/// The policy's own words, when `err` (or one of its sources) is a refusal.
fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r.to_string());
        }
        if let Some(r) = e.downcast_ref::<RedirectRefused>() {
            return Some(r.to_string());
        }
        cur = e.source();
    }
    None
}

/// `err` and its sources, joined by `: `.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

impl Fetcher {
    /// A fetcher; its client is built on first use. TLS certificates are
    /// verified; at most 3 redirects, each checked against the address policy,
    /// as is every resolved address.
    pub fn new(settings: FetchSettings) -> Result<Self, String> {
        Ok(Fetcher {
            client: Arc::new(OnceLock::new()),
            settings,
        })
    }

    /// The HTTP client, built the first time it is needed.
    fn client(&self) -> Result<&reqwest::Client, FetchError> {
        self.client
            .get_or_init(|| {
                let policy = self.settings.policy.clone();
                let redirects = reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() > 3 {
                        return attempt.error("too many redirects (at most 3 are followed)");
                    }
                    match policy.check_url(attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(reason) => {
                            let url = attempt.url().to_string();
                            attempt.error(RedirectRefused { url, reason })
                        }
                    }
                });
                reqwest::Client::builder()
                    .connect_timeout(self.settings.connect_timeout)
                    .read_timeout(self.settings.read_timeout)
                    .redirect(redirects)
                    .dns_resolver(self.settings.policy.resolver())
                    .user_agent(concat!("kuiper-registry/", env!("CARGO_PKG_VERSION")))
                    .no_proxy()
                    .build()
                    .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))
            })
            .as_ref()
            .map_err(|e| FetchError::Local(e.clone()))
    }

    /// The settings in force.
    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// Downloads `url` into a temporary file in `tmp_dir`, hashing it, and
    /// passing each block on to `tee` as it arrives, so that an upload and a
    /// scan of the zip can run while the download does (a `file://` upload is
    /// passed on to the upload only, once copied).
    pub async fn download(
        &self,
        url: &Url,
        tmp_dir: &Path,
        tee: Tee<'_>,
    ) -> Result<Download, FetchError> {
        let tmp = tempfile::Builder::new()
            .prefix(SPOOL_PREFIX)
            .suffix(".zip")
            .tempfile_in(tmp_dir)
            .map_err(|e| FetchError::Local(e.to_string()))?;
        // Held while the file is open: `gc` and a starting service leave a
        // spool file alone while its lock is held (see `SPOOL_PREFIX`).
        let _ = tmp.as_file().try_lock();
        match url.scheme() {
            "file" => {
                let download = self.copy_upload(url, tmp).await?;
                if let Some(tx) = tee.upload {
                    feed_file(download.path(), tx).await?;
                }
                Ok(download)
            }
            _ => {
                let secs = self.settings.download_timeout.as_secs();
                match tokio::time::timeout(
                    self.settings.download_timeout,
                    self.http_download(url, tmp, tee),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(FetchError::Timeout(secs)),
                }
            }
        }
    }

    async fn http_download(
        &self,
        url: &Url,
        tmp: tempfile::NamedTempFile,
        mut tee: Tee<'_>,
    ) -> Result<Download, FetchError> {
        let limit = self.settings.max_download_bytes;
        self.settings
            .policy
            .check_url(url)
            .map_err(FetchError::Refused)?;
        let transport = |e: reqwest::Error| {
            if let Some(r) = refusal(&e) {
                FetchError::Refused(r)
            } else if e.is_timeout() {
                FetchError::Timeout(self.settings.read_timeout.as_secs())
            } else if e.is_body() || e.is_decode() {
                FetchError::Transport(format!(
                    "the connection broke before the whole file arrived ({})",
                    error_chain(&e)
                ))
            } else {
                FetchError::Transport(error_chain(&e))
            }
        };
        let mut resp = self
            .client()?
            .get(url.clone())
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().to_string()));
        }
        let announced = resp.content_length();
        if announced.is_some_and(|n| n > limit) {
            return Err(FetchError::TooLarge(limit));
        }
        if let (Some(tx), Some(n)) = (tee.upload, announced) {
            tx.send(UploadChunk::Size(n))
                .await
                .map_err(|_| FetchError::Local("the upload stopped".into()))?;
        }
        let (std_file, path) = tmp.into_parts();
        let mut spool = Spool::new(std_file);
        let mut pending = bytes::BytesMut::new();
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            size += chunk.len() as u64;
            if size > limit {
                return Err(FetchError::TooLarge(limit));
            }
            hasher.update(&chunk);
            pending.extend_from_slice(&chunk);
            if pending.len() >= BLOCK {
                pass_on(pending.split().freeze(), &mut spool, &mut tee).await?;
            }
        }
        if !pending.is_empty() {
            pass_on(pending.freeze(), &mut spool, &mut tee).await?;
        }
        if let Some(expected) = announced {
            if expected != size {
                return Err(FetchError::Transport(format!(
                    "the server announced {expected} bytes but sent {size}"
                )));
            }
        }
        let std_file = spool
            .finish()
            .await
            .map_err(|e| FetchError::Local(e.to_string()))?;
        Ok(Download::new(
            tempfile::NamedTempFile::from_parts(std_file, path),
            hex::encode(hasher.finalize()),
            size,
        ))
    }

    async fn copy_upload(
        &self,
        url: &Url,
        tmp: tempfile::NamedTempFile,
    ) -> Result<Download, FetchError> {
        let Some(dir) = &self.settings.uploads_dir else {
            return Err(FetchError::FileAccess(
                "file:// URLs are only accepted with a local store and KUIPER_UPLOADS_DIR set"
                    .into(),
            ));
        };
        let path = url
            .to_file_path()
            .map_err(|_| FetchError::FileAccess("not a local file path".into()))?;
        let dir = dir.clone();
        let limit = self.settings.max_download_bytes;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let real = uploads::resolve(&dir, &path)?;
            let meta =
                std::fs::metadata(&real).map_err(|e| FetchError::FileAccess(e.to_string()))?;
            if !meta.is_file() {
                return Err(FetchError::FileAccess(format!(
                    "{} is not a regular file",
                    real.display()
                )));
            }
            if meta.len() > limit {
                return Err(FetchError::TooLarge(limit));
            }
            let mut input =
                std::fs::File::open(&real).map_err(|e| FetchError::FileAccess(e.to_string()))?;
            let mut out = tmp.as_file();
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            loop {
                let n = input
                    .read(&mut buf)
                    .map_err(|e| FetchError::Local(e.to_string()))?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > limit {
                    return Err(FetchError::TooLarge(limit));
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|e| FetchError::Local(e.to_string()))?;
            }
            Ok(Download::new(tmp, hex::encode(hasher.finalize()), size))
        })
        .await
        .map_err(|e| FetchError::Local(e.to_string()))?
    }

    /// Checks a URL against the address policy before it is used (names are
    /// checked again when resolved).
    pub fn check_destination(&self, url: &Url) -> Result<(), String> {
        self.settings.policy.check_url(url)
    }

    /// Sends one `GET` to a callback URL; `Err` holds what went wrong
    /// (`status 500 Internal Server Error`, or the transport error).
    pub async fn callback(&self, url: &Url) -> Result<(), String> {
        self.settings.policy.check_url(url)?;
        let resp = self
            .client()
            .map_err(|e| e.to_string())?
            .get(url.clone())
            .timeout(self.settings.callback_timeout)
            .send()
            .await
            .map_err(|e| {
                if let Some(r) = refusal(&e) {
                    r
                } else if e.is_timeout() {
                    format!(
                        "GET {url}: timed out after {} s",
                        self.settings.callback_timeout.as_secs()
                    )
                } else {
                    error_chain(&e)
                }
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", resp.status()))
        }
    }
}
