//! The local-directory backend: each key is a file under the root directory.
//!
//! Every write goes to a temporary file under `{root}/.tmp/` and is then renamed
//! (or hard-linked, for create-only writes) into place, so readers never see a
//! half-written object. Conditional writes and deletes are serialised by an
//! advisory lock on `{root}/.lock`, which also holds across processes.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{
    check_small, Condition, ETag, Listed, Object, Store, StoreError, Unfinished, UploadChunk,
    MAX_SMALL_OBJECT_BYTES,
};

const TMP_DIR: &str = ".tmp";
const LOCK_FILE: &str = ".lock";

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(root.join(TMP_DIR)).map_err(|e| {
            StoreError::Other(format!(
                "cannot create store directory {}: {e}",
                root.display()
            ))
        })?;
        let root = root.canonicalize().map_err(|e| {
            StoreError::Other(format!(
                "cannot open store directory {}: {e}",
                root.display()
            ))
        })?;
        Ok(LocalStore {
            root,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && !key.starts_with('.')
            && key
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..")
            && !key.contains('\\');
        if !ok {
            return Err(StoreError::Other(format!("invalid key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    /// A new temporary file under `{root}/.tmp/`, locked (`flock`) while it
    /// is open, so that clean-ups can tell it is in use.
    fn temp_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let file = tempfile::Builder::new()
            .prefix("obj-")
            .tempfile_in(self.root.join(TMP_DIR))
            .map_err(io_err)?;
        let _ = file.as_file().try_lock();
        Ok(file)
    }

    /// Runs `f` while holding the store's write lock (in-process and across processes).
    async fn locked<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _guard = self.lock.lock().await;
        let lock_path = self.root.join(LOCK_FILE);
        blocking(move || {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(io_err)?;
            file.lock().map_err(io_err)?;
            let result = f();
            let _ = file.unlock();
            result
        })
        .await
    }
}

/// Seconds since the Unix epoch of a file's last modification (0 if unknown).
fn modified_secs(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Whether an open file description holds the lock of the file at `path`:
/// a writer that is alive (locks go with the process that held them).
pub(crate) fn locked_by_another(path: &Path) -> bool {
    match File::open(path) {
        Ok(file) => matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// The files in the temporary folder `tmp` (partial objects of writes in
/// progress, or of writers that died), with their last modification.
fn temp_files(tmp: &Path) -> Result<Vec<Unfinished>, StoreError> {
    let entries = match fs::read_dir(tmp) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue; // removed meanwhile
        };
        if meta.is_file() {
            out.push(Unfinished {
                name: format!("{TMP_DIR}/{name}"),
                since: modified_secs(&meta),
                in_use: locked_by_another(&entry.path()),
                handle: (name, String::new()),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn io_err(e: io::Error) -> StoreError {
    StoreError::Other(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("storage task failed: {e}")))?
}

fn etag_of(bytes: &[u8]) -> ETag {
    ETag(hex::encode(&Sha256::digest(bytes)[..16]))
}

/// Reads the small object at `path` (for `key`), refusing one over the cap.
/// The size is taken from the open file, which a rename cannot swap.
fn read_current(path: &Path, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let size = file.metadata().map_err(io_err)?.len();
    check_small(key, size)?;
    let mut body = Vec::with_capacity(size as usize);
    // Bounded too, should the file grow while it is read.
    file.take(MAX_SMALL_OBJECT_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(io_err)?;
    check_small(key, body.len() as u64)?;
    Ok(Some(body))
}

fn ensure_parent(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    Ok(())
}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn check(&self) -> Result<(), StoreError> {
        let tmp = self.temp_file()?;
        let mut file = tmp.as_file();
        file.write_all(b"probe")
            .and_then(|_| file.sync_all())
            .map_err(|e| {
                StoreError::Other(format!(
                    "store directory {} is not writable: {e}",
                    self.root.display()
                ))
            })?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            Ok(read_current(&path, &key)?.map(|b| Object {
                etag: etag_of(&b),
                body: Bytes::from(b),
            }))
        })
        .await
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<(), StoreError> {
        check_small(key, body.len() as u64)?;
        let path = self.path(key)?;
        let key = key.to_string();
        let mut tmp = self.temp_file()?;
        tmp.write_all(&body).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        let install = move || -> Result<(), StoreError> {
            ensure_parent(&path)?;
            match condition {
                Condition::None => {
                    tmp.persist(&path).map_err(|e| io_err(e.error))?;
                }
                Condition::IfNoneMatch => match fs::hard_link(tmp.path(), &path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(StoreError::PreconditionFailed)
                    }
                    Err(e) => return Err(io_err(e)),
                },
                Condition::IfMatch(expected) => match read_current(&path, &key)? {
                    Some(current) if etag_of(&current) == expected => {
                        tmp.persist(&path).map_err(|e| io_err(e.error))?;
                    }
                    _ => return Err(StoreError::PreconditionFailed),
                },
            }
            Ok(())
        };
        self.locked(install).await
    }

    async fn put_file(&self, key: &str, src: &Path) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let tmp = self.temp_file()?;
        let src = src.to_path_buf();
        blocking(move || {
            let mut out = tmp.as_file();
            let mut input = File::open(&src).map_err(io_err)?;
            io::copy(&mut input, &mut out).map_err(io_err)?;
            out.sync_all().map_err(io_err)?;
            ensure_parent(&path)?;
            tmp.persist(&path).map_err(|e| io_err(e.error))?;
            Ok(())
        })
        .await
    }

    async fn put_stream(
        &self,
        key: &str,
        mut chunks: tokio::sync::mpsc::Receiver<UploadChunk>,
    ) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let (file, tmp_path) = self.temp_file()?.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        loop {
            match chunks.recv().await {
                Some(UploadChunk::Data(bytes)) => {
                    tokio::io::AsyncWriteExt::write_all(&mut file, &bytes)
                        .await
                        .map_err(io_err)?;
                }
                Some(UploadChunk::Size(_)) => {}
                Some(UploadChunk::End) => break,
                // Closed without End: aborted; the temporary file is removed on drop.
                None => return Err(StoreError::Other("upload aborted".into())),
            }
        }
        file.sync_all().await.map_err(io_err)?;
        blocking(move || {
            ensure_parent(&path)?;
            tmp_path.persist(&path).map_err(|e| io_err(e.error))?;
            Ok(())
        })
        .await
    }

    async fn get_to_file(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        let dest = dest.to_path_buf();
        blocking(move || {
            let mut input = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err(e)),
            };
            let mut out = File::create(&dest).map_err(io_err)?;
            io::copy(&mut input, &mut out).map_err(io_err)?;
            Ok(true)
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        blocking(move || path.try_exists().map_err(io_err)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        self.locked(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        })
        .await
    }

    async fn delete_if(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let (key, etag) = (key.to_string(), etag.clone());
        self.locked(move || match read_current(&path, &key)? {
            Some(current) if etag_of(&current) == etag => match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(StoreError::PreconditionFailed)
                }
                Err(e) => Err(io_err(e)),
            },
            _ => Err(StoreError::PreconditionFailed),
        })
        .await
    }

    async fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        let tmp = self.root.join(TMP_DIR);
        blocking(move || temp_files(&tmp)).await
    }

    async fn abort_unfinished(&self, upload: &Unfinished) -> Result<(), StoreError> {
        let name = &upload.handle.0;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(StoreError::Other(format!(
                "invalid temporary file {:?}",
                upload.name
            )));
        }
        let path = self.root.join(TMP_DIR).join(name);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        })
        .await
    }

    fn remove_stale_temp_files(&self, older_than: std::time::Duration) -> Vec<String> {
        let tmp = self.root.join(TMP_DIR);
        let cutoff = std::time::SystemTime::now()
            .checked_sub(older_than)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let files = match temp_files(&tmp) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(dir = %tmp.display(), error = %e, "cannot list the store's temporary files");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for file in files.into_iter().filter(|f| f.since < cutoff && !f.in_use) {
            match fs::remove_file(tmp.join(&file.handle.0)) {
                Ok(()) => removed.push(file.name),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %file.name, error = %e, "cannot remove a stale temporary file")
                }
            }
        }
        removed
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || walk(&root, &prefix, true)).await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || {
            Ok(walk(&root, &prefix, false)?
                .into_iter()
                .map(|l| l.key)
                .collect())
        })
        .await
    }
}

/// Every file under `root` whose key starts with `prefix`, sorted; sizes and
/// times only when `with_meta` (otherwise no `stat` per file).
fn walk(root: &Path, prefix: &str, with_meta: bool) -> Result<Vec<Listed>, StoreError> {
    // Walk the deepest directory the prefix names, then filter by the rest.
    let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
    let start = if dir_part.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir_part)
    };
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err)?;
            let path = entry.path();
            let Some(rel) = path.strip_prefix(root).ok().and_then(|p| p.to_str()) else {
                continue;
            };
            if rel.starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(io_err)?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && rel.starts_with(prefix) {
                let (size, modified) = if with_meta {
                    let meta = entry.metadata().map_err(io_err)?;
                    (meta.len(), modified_secs(&meta))
                } else {
                    (0, 0)
                };
                out.push(Listed {
                    key: rel.to_string(),
                    size,
                    modified,
                    etag: None,
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}
