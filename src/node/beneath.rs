//! Writing under the node's root without following symbolic links.
//!
//! The root itself may be a link (operators do that); below it, every
//! directory the agent writes in, creates, renames into or removes from is
//! checked with `lstat`, component by component, right before the
//! operation, and a link anywhere on the way refuses it. This guards against
//! links that exist in the directory (e.g. `plugins/sources` pointing at
//! another disk), not against someone making links while a sync runs.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Refuses `rel` (relative to `root`) when one of its directories is a
/// symbolic link; with `last`, when `rel` itself is one too. Components that
/// do not exist end the check (what the agent creates there is a directory).
pub fn check(root: &Path, rel: &str, last: bool) -> Result<(), String> {
    let comps: Vec<Component<'_>> = Path::new(rel).components().collect();
    let upto = if last {
        comps.len()
    } else {
        comps.len().saturating_sub(1)
    };
    let mut path = root.to_path_buf();
    let mut shown = PathBuf::new();
    for c in &comps[..upto] {
        path.push(c);
        shown.push(c);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_symlink() => {
                let target = fs::read_link(&path)
                    .map(|t| format!(" (to {})", t.display()))
                    .unwrap_or_default();
                return Err(format!(
                    "{} is a symbolic link{target} inside the node directory {}; kuiper-node never writes through a link there (make it a real directory)",
                    shown.display(),
                    root.display()
                ));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// [`check`] as an `io::Error`.
fn checked(root: &Path, rel: &str, last: bool) -> io::Result<()> {
    check(root, rel, last).map_err(io::Error::other)
}

/// Creates directory `rel` and its parents under `root`, refusing links.
pub fn create_dir_all(root: &Path, rel: &Path) -> io::Result<()> {
    let rel_s = rel.to_string_lossy();
    checked(root, &rel_s, true)?;
    fs::create_dir_all(root.join(rel))?;
    // Created now, so no link can have been followed unless one was made
    // meanwhile; checked again for that.
    checked(root, &rel_s, true)
}

/// The absolute path of `rel` under `root`, after checking that no
/// directory on the way is a link (`rel` itself may be one: renaming over
/// it or removing it touches the link, not its target).
pub fn path(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let p = super::layout::under(root, rel).map_err(io::Error::other)?;
    checked(root, rel, false)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_below_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        let root = dir.path().join("root");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::create_dir_all(root.join("plugins")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("plugins/sinks")).unwrap();

        let err = check(&root, "plugins/sinks/A.so", false).unwrap_err();
        assert!(
            err.starts_with("plugins/sinks is a symbolic link (to "),
            "{err}"
        );
        assert!(check(&root, "plugins/sinks", false).is_ok());
        assert!(check(&root, "plugins/sinks", true).is_err());
        assert!(check(&root, "plugins/sources/A.so", false).is_ok());
        assert!(create_dir_all(&root, Path::new("plugins/sinks/x")).is_err());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);

        // The root itself may be a link.
        let linked_root = dir.path().join("linked-root");
        std::os::unix::fs::symlink(&root, &linked_root).unwrap();
        assert!(check(&linked_root, "plugins/sources/A.so", false).is_ok());
    }
}
