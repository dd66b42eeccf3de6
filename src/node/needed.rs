//! Why the dynamic linker would not open a library on this node: the shared
//! libraries it needs (`DT_NEEDED`) that are in none of the places the linker
//! looks. Stock eKuiper skips a plugin it cannot open with only a log line;
//! a missing system library is the usual cause, and naming it in the node's
//! report saves the operator a trip to that log.
//!
//! The places, as glibc's and musl's loaders search them: the library's
//! `DT_RPATH` (when it has no `DT_RUNPATH`), `LD_LIBRARY_PATH`, its
//! `DT_RUNPATH` (`$ORIGIN` expanded), the directories of `/etc/ld.so.conf`
//! (and the files it includes) or musl's `/etc/ld-musl-*.path`, and the
//! default directories. A name with a `/` is a path.

use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{Dyn as _, FileHeader};
use object::Endianness;

/// The default directories of the loaders (Debian's multiarch ones too).
const DEFAULT_DIRS: &[&str] = &[
    "/lib",
    "/usr/lib",
    "/lib64",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
];

/// The `DT_NEEDED`, `DT_RPATH` and `DT_RUNPATH` strings of a 64-bit ELF.
#[derive(Debug, Default, PartialEq, Eq)]
struct Dynamic {
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

fn dynamic(data: &[u8]) -> Option<Dynamic> {
    let header = elf::FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let (entries, link) = sections.dynamic(endian, data).ok()??;
    let strings = sections.strings(endian, data, link).ok()?;
    let mut out = Dynamic::default();
    for d in entries {
        let tag = d.d_tag(endian) as u32;
        let list = match tag {
            elf::DT_NEEDED => &mut out.needed,
            elf::DT_RPATH => &mut out.rpath,
            elf::DT_RUNPATH => &mut out.runpath,
            _ => continue,
        };
        let Ok(s) = d.string(endian, strings) else {
            continue;
        };
        let s = String::from_utf8_lossy(s).into_owned();
        if tag == elf::DT_NEEDED {
            list.push(s);
        } else {
            list.extend(s.split(':').filter(|p| !p.is_empty()).map(str::to_string));
        }
    }
    Some(out)
}

/// The directories of an `ld.so.conf`-style file, following `include` lines
/// (with a `*` in the file name only), at most `depth` deep.
fn conf_dirs(path: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include ") {
            if depth == 0 {
                continue;
            }
            let pattern = Path::new(pattern.trim());
            let (dir, name) = (
                pattern.parent(),
                pattern.file_name().and_then(|n| n.to_str()),
            );
            let (Some(dir), Some(name)) = (dir, name) else {
                continue;
            };
            let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
                })
                .collect();
            files.sort();
            for f in files {
                conf_dirs(&f, depth - 1, out);
            }
        } else if line.starts_with('/') {
            out.extend(
                line.split([':', ' ', '\t'])
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from),
            );
        }
    }
}

/// Where the loader looks for the needs of a library in `origin` with `dynamic`.
fn search_dirs(origin: &Path, dynamic: &Dynamic, ld_library_path: Option<&str>) -> Vec<PathBuf> {
    let expand = |p: &String| PathBuf::from(p.replace("$ORIGIN", &origin.display().to_string()));
    let mut dirs: Vec<PathBuf> = Vec::new();
    if dynamic.runpath.is_empty() {
        dirs.extend(dynamic.rpath.iter().map(expand));
    }
    dirs.extend(
        ld_library_path
            .unwrap_or("")
            .split([':', ';'])
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    );
    dirs.extend(dynamic.runpath.iter().map(expand));
    conf_dirs(Path::new("/etc/ld.so.conf"), 3, &mut dirs);
    for arch in ["x86_64", "aarch64"] {
        conf_dirs(
            Path::new(&format!("/etc/ld-musl-{arch}.path")),
            0,
            &mut dirs,
        );
    }
    dirs.extend(DEFAULT_DIRS.iter().map(PathBuf::from));
    dirs
}

/// The libraries `library` needs that the loader would find nowhere, with
/// `ld_library_path` as eKuiper's environment has it. Empty when all are
/// found or the file cannot be read as a 64-bit ELF.
pub fn missing(library: &Path, ld_library_path: Option<&str>) -> Vec<String> {
    let Ok(data) = std::fs::read(library) else {
        return Vec::new();
    };
    let Some(dynamic) = dynamic(&data) else {
        return Vec::new();
    };
    let origin = library.parent().unwrap_or(Path::new("/"));
    let dirs = search_dirs(origin, &dynamic, ld_library_path);
    dynamic
        .needed
        .iter()
        .filter(|name| {
            if name.contains('/') {
                !Path::new(name).exists()
            } else {
                !dirs.iter().any(|d| d.join(name).exists())
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_needs_nothing_missing() {
        let exe = std::env::current_exe().unwrap();
        let d = dynamic(&std::fs::read(&exe).unwrap()).expect("an ELF with a dynamic section");
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        assert_eq!(missing(&exe, None), Vec::<String>::new());
        assert_eq!(
            missing(Path::new("/nonexistent"), None),
            Vec::<String>::new()
        );
    }

    #[test]
    fn conf_includes_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(d.join("conf.d/a.conf"), "/opt/a/lib # comment\n").unwrap();
        std::fs::write(d.join("conf.d/b.txt"), "/opt/b/lib\n").unwrap();
        std::fs::write(
            d.join("ld.so.conf"),
            format!("include {}/conf.d/*.conf\n/opt/c:/opt/d\n", d.display()),
        )
        .unwrap();
        let mut out = Vec::new();
        conf_dirs(&d.join("ld.so.conf"), 3, &mut out);
        assert_eq!(
            out,
            ["/opt/a/lib", "/opt/c", "/opt/d"]
                .map(PathBuf::from)
                .to_vec()
        );
    }
}
