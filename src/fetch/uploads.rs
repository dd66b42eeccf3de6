//! Where a `file://` upload may come from: a regular file under
//! `KUIPER_UPLOADS_DIR`, after following symlinks. Every path that is not
//! under it gets the same answer, so the answers reveal nothing about what
//! exists elsewhere.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::FetchError;

/// The real path of `path`, which must be under the uploads directory `dir`
/// once symlinks are followed. A missing file gets its own message only when
/// its path is under `dir` without `..` and without crossing a symlink, so
/// that the message is about the uploads directory alone.
pub(super) fn resolve(dir: &Path, path: &Path) -> Result<PathBuf, FetchError> {
    let real_dir = dir.canonicalize().map_err(|e| {
        tracing::warn!(dir = %dir.display(), error = %e, "the uploads directory is unavailable");
        FetchError::FileAccess("the uploads directory is unavailable".into())
    })?;
    let outside = || FetchError::FileAccess(format!("path must be under {}", real_dir.display()));
    match path.canonicalize() {
        Ok(real) if real.starts_with(&real_dir) => Ok(real),
        Ok(_) => Err(outside()),
        Err(e) if e.kind() == ErrorKind::NotFound && plainly_under(path, &[&real_dir, dir]) => Err(
            FetchError::FileAccess(format!("{} does not exist", path.display())),
        ),
        Err(_) => Err(outside()),
    }
}

/// Whether `path` is under one of `dirs` by its text alone: no `.` or `..`
/// below it, and none of its existing parts below it a symlink.
fn plainly_under(path: &Path, dirs: &[&Path]) -> bool {
    let Some((base, rest)) = dirs
        .iter()
        .find_map(|d| path.strip_prefix(d).ok().map(|rest| (*d, rest)))
    else {
        return false;
    };
    let mut cur = base.to_path_buf();
    for part in rest.components() {
        let Component::Normal(name) = part else {
            return false;
        };
        cur.push(name);
        match std::fs::symlink_metadata(&cur) {
            Ok(meta) if meta.file_type().is_symlink() => return false,
            Ok(_) => {}
            Err(e) => return e.kind() == ErrorKind::NotFound,
        }
    }
    true
}
