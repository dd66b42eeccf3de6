//! Staging a downloaded plugin: the zip verified against the metadata,
//! checked again and extracted into `.kuiper-node/tmp/`.

use std::fs::{self, File};
use std::io::{self, Cursor, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::node::layout::{self, Placement};
use crate::package::{self, ZipLimits};
use crate::registry::PluginMeta;

/// A downloaded zip.
pub(super) enum Download {
    /// Small zips are kept in memory, holding their share of the memory budget
    /// ([`SyncOptions::memory_bytes`]).
    Memory {
        zip: Bytes,
        _budget: OwnedSemaphorePermit,
    },
    /// Larger ones are streamed to a file.
    File(PathBuf),
}

/// The staged files of one plugin.
pub(super) struct Staged {
    /// (relative destination, staged file)
    pub(super) files: Vec<(String, PathBuf)>,
    /// The directory with the root files for `install.sh`, when the zip has one.
    pub(super) install_dir: Option<PathBuf>,
}

/// Verifies the downloaded zip, checks it again, and extracts the listed
/// entries into `dir` (blocking).
pub(super) fn stage(
    meta: &PluginMeta,
    dir: &Path,
    download: &Download,
    limits: &ZipLimits,
    arch: &str,
    memory: &Semaphore,
) -> Result<Staged, String> {
    let (sha256, size) = match download {
        Download::Memory { zip, .. } => (hex::encode(Sha256::digest(zip)), zip.len() as u64),
        Download::File(path) => {
            hash_file(path).map_err(|e| format!("cannot read the download: {e}"))?
        }
    };
    verify_download(meta, &sha256, size)?;
    // Memory to decode entries whole in, if the budget has it now: twice
    // the largest file, for its compressed bytes and its output.
    let largest = meta.files.iter().map(|f| f.size).max().unwrap_or(0);
    let permit = u32::try_from(largest.saturating_mul(2))
        .ok()
        .filter(|&n| n > 0 && n as usize <= Semaphore::MAX_PERMITS)
        .and_then(|n| memory.try_acquire_many(n).ok());
    let whole_entry_max = if permit.is_some() { largest } else { 0 };
    match download {
        Download::Memory { zip, .. } => check_and_extract(
            meta,
            dir,
            Cursor::new(zip.as_ref()),
            limits,
            arch,
            whole_entry_max,
        ),
        Download::File(path) => {
            let file = File::open(path).map_err(|e| format!("cannot open the download: {e}"))?;
            check_and_extract(
                meta,
                dir,
                io::BufReader::new(file),
                limits,
                arch,
                whole_entry_max,
            )
        }
    }
}

/// Compares the downloaded zip's size and SHA-256 with the metadata's,
/// naming each that differs.
fn verify_download(meta: &PluginMeta, sha256: &str, size: u64) -> Result<(), String> {
    let mut differs = Vec::new();
    if size != meta.size {
        differs.push(format!(
            "size mismatch: metadata says {} bytes, downloaded {size}",
            meta.size
        ));
    }
    if sha256 != meta.sha256 {
        differs.push(format!(
            "sha256 mismatch: metadata says {}, downloaded {sha256}",
            meta.sha256
        ));
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} (the store's zip {}); nothing installed",
        differs.join("; "),
        meta.blob
    ))
}

/// Checks a verified zip again with [`package::inspect_and_extract`] against
/// the metadata and the node, extracting the listed entries into `dir` as
/// the check decompresses them (blocking): each entry is decompressed once.
/// On an error the caller removes `dir` with whatever was extracted.
fn check_and_extract<R: Read + Seek>(
    meta: &PluginMeta,
    dir: &Path,
    reader: R,
    limits: &ZipLimits,
    arch: &str,
    whole_entry_max: u64,
) -> Result<Staged, String> {
    let ty = meta.plugin_type;
    let mut into = Extractor {
        meta,
        whole_entry_max,
        files_dir: dir.join("files"),
        install_dir: dir.join("install"),
        staged: Staged {
            files: Vec::new(),
            install_dir: None,
        },
    };
    fs::create_dir_all(&into.files_dir)
        .map_err(|e| format!("cannot create {}: {e}", into.files_dir.display()))?;
    let info =
        package::inspect_and_extract(reader, ty, &meta.name, &meta.shell_paras, limits, &mut into)
            .map_err(|e| match e {
                package::PackageError::Extract { .. } => e.to_string(),
                e => format!("the zip fails the node's check: {e}; nothing installed"),
            })?;
    if info.so_file != meta.so_file {
        return Err(format!(
            "the zip's library is {}, the metadata says {}; nothing installed",
            info.so_file, meta.so_file
        ));
    }
    if info.arch != arch {
        return Err(format!(
            "the library is built for {}, but this node is {arch}; skipped: not installed and not loaded",
            info.arch
        ));
    }
    // Every listed file was extracted, with the size the metadata gives.
    for f in &meta.files {
        if !info.files.contains(f) {
            return Err(format!(
                "the metadata lists {} ({} bytes), which the zip does not contain as such; nothing installed",
                f.name, f.size
            ));
        }
    }
    let mut staged = into.staged;
    if !into.install_dir.join("install.sh").is_file() {
        staged.install_dir = None;
    }
    Ok(staged)
}

/// Writes the entries the metadata lists to new files in their staged
/// places (mode set, writeback started) as [`package::inspect_and_extract`]
/// decompresses them; other entries are only checked. The committer flushes
/// the files to disk ([`flush_fs`]) before renaming them into place.
struct Extractor<'a> {
    meta: &'a PluginMeta,
    /// See [`package::Extract::whole_entry_max`]: memory the node set aside.
    whole_entry_max: u64,
    /// Files to install, named by their index in `meta.files`.
    files_dir: PathBuf,
    /// Root files for `install.sh`.
    install_dir: PathBuf,
    staged: Staged,
}

/// One entry being extracted: its staged file, where that file goes once
/// the entry is intact, and its mode.
struct StagedFile {
    /// Written straight through, at most [`WRITE_PIECE`] bytes per write:
    /// the check hands over each decoded block of up to 64 KiB once (or a
    /// whole decoded entry), so a buffer would only copy the bytes once more.
    file: File,
    dest: PathBuf,
    /// Installed under the root at this path, or `None` for a file only
    /// `install.sh` sees.
    rel: Option<String>,
    mode: u32,
}

/// Most bytes a staged file takes per write: one write of megabytes (a
/// whole decoded entry) into a new file took the kernel several times as
/// long per byte (measured on ext4: `copy_folio_from_iter_atomic` 45% of the
/// node's samples, against 5% in pieces).
const WRITE_PIECE: usize = 64 << 10;

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(&buf[..buf.len().min(WRITE_PIECE)])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl package::Extract for Extractor<'_> {
    type Out = StagedFile;

    fn open(&mut self, entry: &str) -> io::Result<Option<StagedFile>> {
        let meta = self.meta;
        let Some(i) = meta.files.iter().position(|f| f.name == entry) else {
            return Ok(None);
        };
        let (dest, rel) =
            match layout::placement(meta.plugin_type, &meta.name, &meta.so_file, entry)
                .map_err(io::Error::other)?
            {
                Placement::Installed(rel) => (self.files_dir.join(i.to_string()), Some(rel)),
                Placement::InstallOnly(rel) => (
                    layout::under(&self.install_dir, &rel).map_err(io::Error::other)?,
                    None,
                ),
            };
        let mode = if entry == meta.so_file || entry == "install.sh" {
            0o755
        } else {
            0o644
        };
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = File::options().write(true).create_new(true).open(&dest)?;
        Ok(Some(StagedFile {
            file,
            dest,
            rel,
            mode,
        }))
    }

    fn whole_entry_max(&self) -> u64 {
        self.whole_entry_max
    }

    fn close(&mut self, _: &str, out: StagedFile) -> io::Result<()> {
        out.file
            .set_permissions(fs::Permissions::from_mode(out.mode))?;
        start_writeback(&out.file);
        match out.rel {
            Some(rel) => {
                // eKuiper's installer writes each configuration file twice.
                if let Some(data_rel) = layout::data_copy(&rel) {
                    let copy = out.dest.with_extension("data");
                    fs::copy(&out.dest, &copy)?;
                    self.staged.files.push((data_rel, copy));
                }
                self.staged.files.push((rel, out.dest));
            }
            None => self.staged.install_dir = Some(self.install_dir.clone()),
        }
        Ok(())
    }
}

fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Starts writing a file's data to disk without waiting for it, so that the
/// committer's flush ([`flush_fs`]) finds little left to write (best effort).
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: plain syscall on a descriptor the caller owns.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}
