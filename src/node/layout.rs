//! eKuiper's on-disk layout, and where each entry of a plugin zip goes on a node.
//!
//! eKuiper keeps libraries in `plugins/{type}/` and configuration in
//! `etc/{type}/` under its base directory. Installing a zip puts:
//!
//! | zip entry | on the node |
//! |---|---|
//! | the library (`Random@v1.0.0.so`) | `plugins/{type}/Random@v1.0.0.so` |
//! | `{name}.yaml` (sources) | `etc/{type}/{name}.yaml` and `data/{type}/{name}.yaml` |
//! | `{name}.json` | `etc/{type}/{name}.json` and `data/{type}/{name}.json` |
//! | `etc/{path}` | `etc/{type}/{name}/{path}` and `data/{type}/{name}/{path}` |
//! | anything else (`install.sh` and what it needs) | a temporary directory, only for `install.sh` |
//!
//! This is what stock eKuiper v2.4.0's own installer (`POST /plugins/{type}`)
//! writes: every configuration file goes to `etc/` and to a copy under
//! `data/` (which eKuiper reads first for a plugin's `.json` metadata). The
//! real-eKuiper parity test compares the two layouts file by file.

use std::path::{Component, Path, PathBuf};

use crate::package::{check_entry_name, PluginType};

/// The node agent's own directory under the root: manifest, lock, temporary files.
pub const STATE_DIR: &str = ".kuiper-node";

/// Where one zip entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Installed under the root, at this relative path (`/`-separated).
    Installed(String),
    /// Only extracted into the temporary directory where `install.sh` runs,
    /// at this relative path.
    InstallOnly(String),
}

/// Where `entry` of the zip of plugin `name` of type `ty` (whose library is
/// `so_file`) goes. Refuses entry names that could leave the root.
pub fn placement(
    ty: PluginType,
    name: &str,
    so_file: &str,
    entry: &str,
) -> Result<Placement, String> {
    check_entry_name(entry).map_err(|reason| format!("entry {entry:?} refused: {reason}"))?;
    if entry.ends_with('/') {
        return Err(format!("entry {entry:?} is a directory, not a file"));
    }
    let t = ty.as_str();
    let placed = if entry == so_file {
        Placement::Installed(format!("plugins/{t}/{entry}"))
    } else if (ty == PluginType::Source && entry == format!("{name}.yaml"))
        || entry == format!("{name}.json")
    {
        Placement::Installed(format!("etc/{t}/{entry}"))
    } else if let Some(rest) = entry.strip_prefix("etc/") {
        Placement::Installed(format!("etc/{t}/{name}/{rest}"))
    } else {
        Placement::InstallOnly(entry.to_string())
    };
    let rel = match &placed {
        Placement::Installed(p) | Placement::InstallOnly(p) => p,
    };
    if !is_plain_relative(rel) {
        return Err(format!(
            "entry {entry:?} would be written outside the plugin directories"
        ));
    }
    Ok(placed)
}

/// Whether `rel` is a relative path made only of normal components (no `..`,
/// no root, no `.`), so joining it to a directory stays inside that directory.
pub fn is_plain_relative(rel: &str) -> bool {
    !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The absolute path of `rel` under `root`, after checking it stays inside.
pub fn under(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if is_plain_relative(rel) {
        Ok(root.join(rel))
    } else {
        Err(format!("path {rel:?} is not inside the node directory"))
    }
}

/// The `data/` copy eKuiper keeps of a configuration file installed at
/// `rel` (`etc/{type}/...` -> `data/{type}/...`); `None` for other files.
pub fn data_copy(rel: &str) -> Option<String> {
    rel.strip_prefix("etc/").map(|rest| format!("data/{rest}"))
}

/// The plugin name eKuiper gives the library file `file` (its `parseName`):
/// the part before `@` and `.so`, with the first letter lower-cased.
/// `Random@v1.0.0.so` and `random.so` are both `random`.
pub fn library_plugin_name(file: &str) -> Option<String> {
    let stem = file.strip_suffix(".so")?;
    let name = stem.split('@').next().unwrap_or(stem);
    let mut chars = name.chars();
    let first = chars.next()?;
    Some(first.to_lowercase().chain(chars).collect())
}

/// Every library under `plugins/{type}/` that eKuiper would take for plugin
/// `name` (relative paths, sorted); empty when the directory is absent.
pub fn libraries_of(root: &Path, ty: PluginType, name: &str) -> Vec<String> {
    let dir = root.join("plugins").join(ty.as_str());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| library_plugin_name(f).as_deref() == Some(name))
        .map(|f| library_path(ty, &f))
        .collect();
    out.sort();
    out
}

/// The library of an installed plugin: `plugins/{type}/{so_file}`.
pub fn library_path(ty: PluginType, so_file: &str) -> String {
    format!("plugins/{}/{so_file}", ty.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ekuiper_layout() {
        let p = |ty, entry| placement(ty, "random", "Random@v1.0.0.so", entry);
        assert_eq!(
            p(PluginType::Source, "Random@v1.0.0.so"),
            Ok(Placement::Installed(
                "plugins/sources/Random@v1.0.0.so".into()
            ))
        );
        assert_eq!(
            p(PluginType::Source, "random.yaml"),
            Ok(Placement::Installed("etc/sources/random.yaml".into()))
        );
        assert_eq!(
            p(PluginType::Sink, "random.yaml"),
            Ok(Placement::InstallOnly("random.yaml".into()))
        );
        assert_eq!(
            p(PluginType::Function, "random.json"),
            Ok(Placement::Installed("etc/functions/random.json".into()))
        );
        assert_eq!(
            p(PluginType::Sink, "etc/a/b.txt"),
            Ok(Placement::Installed("etc/sinks/random/a/b.txt".into()))
        );
        assert_eq!(
            p(PluginType::Sink, "install.sh"),
            Ok(Placement::InstallOnly("install.sh".into()))
        );
        for bad in ["../x.so", "etc/../../x", "/abs", "etc/", "a//b"] {
            assert!(p(PluginType::Sink, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configuration_is_copied_to_data() {
        assert_eq!(
            data_copy("etc/sources/random.yaml").as_deref(),
            Some("data/sources/random.yaml")
        );
        assert_eq!(
            data_copy("etc/sinks/random/a/b.txt").as_deref(),
            Some("data/sinks/random/a/b.txt")
        );
        assert_eq!(data_copy("plugins/sinks/Random.so"), None);
    }

    #[test]
    fn library_names_as_ekuiper_parses_them() {
        for (file, name) in [
            ("Random@v1.0.0.so", Some("random")),
            ("random.so", Some("random")),
            ("Random.so", Some("random")),
            ("RandomX@1.so", Some("randomX")),
            ("random.yaml", None),
        ] {
            assert_eq!(library_plugin_name(file).as_deref(), name, "{file}");
        }
    }

    #[test]
    fn under_root_only() {
        assert!(under(Path::new("/r"), "plugins/sinks/A.so").is_ok());
        assert!(under(Path::new("/r"), "../x").is_err());
        assert!(under(Path::new("/r"), "/etc/passwd").is_err());
        assert!(under(Path::new("/r"), "").is_err());
    }
}
