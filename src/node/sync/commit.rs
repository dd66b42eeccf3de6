//! Committing staged plugins: files renamed into place under the root, the
//! previous versions' files removed, the manifest written around both.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::{Book, Ready};
use crate::node::manifest::{self, Entry, Manifest};
use crate::node::{beneath, layout};
use crate::package::PluginType;

/// What committing one staged plugin changes.
struct Plan {
    /// Its files after the commit.
    new_files: Vec<String>,
    /// The previous version's files that go.
    old_only: Vec<String>,
}

/// Moves a group of staged plugins into place and records them (blocking),
/// crash-safely: one manifest write marks every plugin of the group
/// `pending` (listing its old and new files) before its first file is
/// renamed into place, and one more records them installed once their old
/// files are gone. Returns each plugin's result, in order.
pub(super) fn commit(
    book: &Book,
    root: &Path,
    tmp: &Path,
    group: &[Box<Ready>],
) -> Vec<Result<(), String>> {
    // The staged files reach the disk before any of them is renamed into
    // place: one flush for the group rather than one per file.
    if let Err(e) = flush_fs(tmp) {
        let e = format!(
            "cannot flush the staged files in {} to disk: {e}; nothing installed",
            tmp.display()
        );
        return vec![Err(e); group.len()];
    }
    let mut results = Vec::with_capacity(group.len());
    let mut plans = Vec::with_capacity(group.len());
    {
        let mut m = book.lock();
        for r in group {
            match plan(&m, root, r) {
                Ok((plan, pending)) => {
                    m.plugins.insert(pending.key(), pending);
                    plans.push(Some(plan));
                    results.push(Ok(()));
                }
                Err(e) => {
                    plans.push(None);
                    results.push(Err(e));
                }
            }
        }
    }
    if plans.iter().all(Option::is_none) {
        return results;
    }
    if let Err(e) = book.save() {
        for (result, plan) in results.iter_mut().zip(&plans) {
            if plan.is_some() {
                *result = Err(e.clone());
            }
        }
        return results;
    }

    for ((r, plan), result) in group.iter().zip(&plans).zip(results.iter_mut()) {
        if let Some(plan) = plan {
            if let Err(e) = move_into_place(root, r, plan) {
                *result = Err(e);
            }
        }
    }
    // The renames reach the disk before the manifest says they are done
    // (best effort, as a directory's flush is).
    let _ = flush_fs(root);

    {
        let mut m = book.lock();
        for ((r, plan), result) in group.iter().zip(plans).zip(&results) {
            let (Some(plan), Ok(())) = (plan, result) else {
                continue;
            };
            let key = manifest::key(r.meta.plugin_type, &r.meta.name);
            if let Some(e) = m.plugins.get_mut(&key) {
                e.files = plan.new_files;
                e.pending = false;
                e.meta_etag = Some(r.etag.clone()).filter(|t| !t.is_empty());
            }
        }
    }
    if let Err(e) = book.save() {
        for result in results.iter_mut().filter(|r| r.is_ok()) {
            *result = Err(e.clone());
        }
    }
    results
}

/// Checks that a staged plugin may take its files' places, and returns the
/// plan and its `pending` manifest entry.
fn plan(m: &Manifest, root: &Path, r: &Ready) -> Result<(Plan, Entry), String> {
    let meta = &r.meta;
    let key = manifest::key(meta.plugin_type, &meta.name);
    let old_files: Vec<String> = m
        .plugins
        .get(&key)
        .map(|e| e.files.clone())
        .unwrap_or_default();
    let new_files: Vec<String> = r.files.iter().map(|(rel, _)| rel.clone()).collect();
    let old_only: Vec<String> = old_files
        .iter()
        .filter(|f| !new_files.contains(f))
        .cloned()
        .collect();

    // Never write through a link inside the root.
    for rel in new_files.iter().chain(&old_only) {
        beneath::check(root, rel, false).map_err(|e| format!("{e}; nothing installed"))?;
    }

    // Never take over a file that someone else put there.
    let owners = m.owners();
    for rel in &new_files {
        match owners.get(rel.as_str()) {
            Some(owner) if *owner != key => {
                return Err(format!(
                    "{rel} belongs to plugin {owner} on this node; nothing installed"
                ))
            }
            Some(_) => {}
            None => {
                let dest = layout::under(root, rel)?;
                let Ok(md) = dest.symlink_metadata() else {
                    continue;
                };
                // A directory of the previous version's files that becomes a file is fine.
                let ours = md.is_dir() && {
                    let inside = files_under(&dest);
                    !inside.is_empty()
                        && inside
                            .iter()
                            .all(|f| old_only.contains(&format!("{rel}/{f}")))
                };
                if !ours {
                    return Err(format!(
                        "{} exists but was not installed by kuiper-node (placed by hand?); it is left alone and the plugin is not installed",
                        dest.display()
                    ));
                }
            }
        }
    }

    // eKuiper opens one library per plugin name: with another one beside
    // ours it would run one and report the other's version.
    for other in layout::libraries_of(root, meta.plugin_type, &meta.name) {
        if !new_files.contains(&other) && !old_files.contains(&other) {
            return Err(format!(
                "{other} is another library of plugin {} (not installed by kuiper-node); eKuiper would load one of the two and report the other's version: remove it; nothing installed",
                meta.name
            ));
        }
    }

    let mut union = old_files;
    for f in &new_files {
        if !union.contains(f) {
            union.push(f.clone());
        }
    }
    let pending = Entry {
        plugin_type: meta.plugin_type,
        name: meta.name.clone(),
        version: meta.version.clone(),
        sha256: meta.sha256.clone(),
        so_file: meta.so_file.clone(),
        shell_paras: meta.shell_paras.clone(),
        files: union,
        pending: true,
        meta_etag: None,
        id: Some(meta.id.clone()),
        functions: (meta.plugin_type == PluginType::Function)
            .then(|| super::conflicts::claimed_functions(meta)),
    };
    Ok((
        Plan {
            new_files,
            old_only,
        },
        pending,
    ))
}

/// Renames a staged plugin's files into place, then removes the previous
/// version's other files. Only a previous file that is in a new file's way
/// (a file that became a directory, or the reverse) goes before it.
fn move_into_place(root: &Path, r: &Ready, plan: &Plan) -> Result<(), String> {
    let mut removed: BTreeSet<&str> = BTreeSet::new();
    for (rel, src) in &r.files {
        let in_the_way = plan.old_only.iter().filter(|old| {
            rel.starts_with(&format!("{old}/")) || old.starts_with(&format!("{rel}/"))
        });
        for old in in_the_way {
            removed.insert(old);
            remove_file_and_empty_dirs(root, old).map_err(|e| {
                format!("cannot remove the previous version's {old}: {e}; the next sync retries")
            })?;
        }
        let dest = layout::under(root, rel)?;
        place(root, src, rel).map_err(|e| {
            format!(
                "cannot install {}: {e}; the next sync retries",
                dest.display()
            )
        })?;
    }
    for old in plan
        .old_only
        .iter()
        .filter(|f| !removed.contains(f.as_str()))
    {
        remove_file_and_empty_dirs(root, old).map_err(|e| {
            format!("cannot remove the previous version's {old}: {e}; the next sync retries")
        })?;
    }
    Ok(())
}

/// Flushes the file system holding `dir` to disk: the data of files written
/// in it and the renames done there (blocking). One flush covers every file
/// of a group of plugins, where flushing each file would wait for the disk
/// once per file.
fn flush_fs(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: plain syscall on a descriptor this function owns.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        drop(d);
        // SAFETY: plain syscall.
        unsafe { libc::sync() };
    }
    Ok(())
}

/// Renames `src` to `rel` under `root` (replacing the directory entry, never writing into
/// an existing file). Across file systems, copies to a hidden temporary name
/// next to `dest` first. The caller flushes `dest`'s directory.
fn place(root: &Path, src: &Path, rel: &str) -> io::Result<()> {
    let rel_parent = Path::new(rel)
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    beneath::create_dir_all(root, rel_parent)?;
    let dest = &beneath::path(root, rel)?;
    let parent = &root.join(rel_parent);
    match fs::rename(src, dest) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let file_name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut tmp = tempfile::Builder::new()
                .prefix(&format!(".{file_name}."))
                .suffix(".kuiper-node-tmp")
                .tempfile_in(parent)?;
            io::copy(&mut File::open(src)?, tmp.as_file_mut())?;
            tmp.as_file()
                .set_permissions(fs::metadata(src)?.permissions())?;
            tmp.as_file().sync_all()?;
            tmp.persist(dest).map_err(|e| e.error)?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Every file under `dir` (relative, `/`-separated); directories are walked, not listed.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Removes `rel` under `root` (absent is fine) and the directories of a
/// plugin's `etc/` tree that it leaves empty (never `plugins/{type}` or `etc/{type}`).
pub(super) fn remove_file_and_empty_dirs(root: &Path, rel: &str) -> io::Result<()> {
    let path = beneath::path(root, rel)?;
    match fs::remove_file(&path) {
        Ok(()) => {}
        // Absent, or a parent is now a file: either way the file is not there.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) => {}
        Err(e) => return Err(e),
    }
    let mut dir = Path::new(rel).parent();
    while let Some(d) = dir {
        if d.components().count() <= 2 {
            break;
        }
        if fs::remove_dir(root.join(d)).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
