//! Loading installed plugins through the Kuiper plugin ABI v1
//! (`docs/plugin-abi.md`, C header `docs/kuiper_plugin.h`).
//!
//! A plugin library exports, under `uc_first(name)` (`Random` for `random`), a
//! C function returning a pointer to a static [`KuiperPluginV1`] descriptor.
//! Loading opens the library, resolves and calls that function, and checks the
//! descriptor against the directory the library was installed in.

use std::ffi::CStr;
use std::os::raw::c_char;
use std::path::Path;

use libloading::Library;
use serde::Serialize;

use crate::package::{self, uc_first, PluginType};

/// The ABI version this loader implements.
pub const ABI_VERSION: u32 = 1;

/// The descriptor a plugin's entry point returns (ABI v1), laid out as C lays
/// out `struct KuiperPluginV1`.
#[repr(C)]
#[derive(Debug)]
pub struct KuiperPluginV1 {
    /// Always 1 for this layout.
    pub abi_version: u32,
    /// 0 source, 1 sink, 2 function.
    pub kind: u32,
    /// NUL-terminated plugin name.
    pub name: *const c_char,
    /// NUL-terminated version, possibly empty.
    pub version: *const c_char,
}

/// The entry point's type: `const KuiperPluginV1 *Name(void)`.
pub type EntryPoint = unsafe extern "C" fn() -> *const KuiperPluginV1;

/// What a successful load reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadedInfo {
    /// Plugin type (the directory it was loaded from).
    #[serde(rename = "type")]
    pub plugin_type: PluginType,
    /// Plugin name, as the descriptor gives it.
    pub name: String,
    /// Version, as the descriptor gives it.
    pub version: String,
    /// The symbol that was resolved.
    pub symbol: String,
}

/// A loaded plugin: the library stays mapped as long as this lives.
#[derive(Debug)]
pub struct LoadedPlugin {
    /// What was loaded.
    pub info: LoadedInfo,
    /// The open library.
    pub library: Library,
}

/// The ABI `kind` value's name, for messages.
fn kind_name(kind: u32) -> String {
    match PluginType::ALL.into_iter().find(|t| t.abi_kind() == kind) {
        Some(t) => format!("{kind} ({})", t.as_str()),
        None => format!("{kind} (unknown)"),
    }
}

/// An error and its sources, `: `-separated (libloading keeps dlerror's text in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Reads a NUL-terminated string of at most 4 KiB; `None` for a null pointer.
///
/// # Safety
/// `p` must be null or point at a NUL-terminated string that stays valid while read.
unsafe fn c_string(p: *const c_char) -> Option<Result<String, String>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `p` is a valid NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    let bytes = s.to_bytes();
    if bytes.len() > 4096 {
        return Some(Err("longer than 4096 bytes".into()));
    }
    Some(
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| "not valid UTF-8".to_string()),
    )
}

/// Checks that the ELF file at `path` can be loaded, with the check the
/// registry runs at publish ([`package::check_library_file`]): a shared
/// object, not a PIE, whose program headers, segments and section headers
/// lie within the file. glibc's `dlopen` maps a truncated library's
/// segments past the end of the file and the process dies with SIGBUS when
/// they are touched, so this runs first. Reads the headers only, not the
/// segments: a library of hundreds of MiB costs no more memory than a small
/// one.
pub fn check_complete_elf(path: &Path) -> Result<(), String> {
    package::check_library_file(path)
        .map(drop)
        .map_err(|e| format!("cannot load {}: {e}; not loaded", path.display()))
}

/// Loads the library at `path`, installed as plugin `name` of type `ty`, and
/// checks its ABI v1 descriptor.
pub fn load(path: &Path, ty: PluginType, name: &str) -> Result<LoadedPlugin, String> {
    let symbol = uc_first(name);
    check_complete_elf(path)?;
    // SAFETY: loading a library runs its initialisers; the node agent's whole
    // purpose is to load the plugins the registry validated and it installed.
    let library = unsafe { Library::new(path) }
        .map_err(|e| format!("cannot load {}: {}", path.display(), chain(&e)))?;
    let descriptor = {
        // SAFETY: ABI v1 defines the symbol as `const KuiperPluginV1 *Name(void)`.
        let entry = unsafe { library.get::<EntryPoint>(symbol.as_bytes()) }.map_err(|e| {
            format!(
                "symbol {symbol} not found in {} (ABI v1 plugins export `const KuiperPluginV1 *{symbol}(void)`): {}",
                path.display(),
                chain(&e)
            )
        })?;
        // SAFETY: as above; the function takes no arguments.
        unsafe { entry() }
    };
    if descriptor.is_null() {
        return Err(format!("{symbol}() returned a null descriptor"));
    }
    // SAFETY: a non-null pointer to the plugin's static descriptor (ABI v1);
    // `abi_version` is read first so that a different layout is refused
    // before its other fields are interpreted.
    let abi_version = unsafe { std::ptr::addr_of!((*descriptor).abi_version).read() };
    if abi_version != ABI_VERSION {
        return Err(format!(
            "{symbol}() returned a descriptor with abi_version {abi_version}; this node supports abi_version {ABI_VERSION}"
        ));
    }
    // SAFETY: abi_version 1 means the pointer is to a `KuiperPluginV1`.
    let d = unsafe { &*descriptor };
    if d.kind != ty.abi_kind() {
        return Err(format!(
            "{symbol}() describes a plugin of kind {}, but it is installed as {} (kind {})",
            kind_name(d.kind),
            ty.as_str(),
            ty.abi_kind()
        ));
    }
    // SAFETY: ABI v1 requires NUL-terminated static strings.
    let got_name = match unsafe { c_string(d.name) } {
        None => return Err(format!("{symbol}() returned a descriptor without a name")),
        Some(Err(e)) => {
            return Err(format!(
                "{symbol}() returned a descriptor whose name is {e}"
            ))
        }
        Some(Ok(n)) => n,
    };
    if got_name != name {
        return Err(format!(
            "{symbol}() describes a plugin named {got_name:?}, but it is installed as {name:?}"
        ));
    }
    // SAFETY: as above; a null version means "".
    let version = match unsafe { c_string(d.version) } {
        None => String::new(),
        Some(Err(e)) => {
            return Err(format!(
                "{symbol}() returned a descriptor whose version is {e}"
            ))
        }
        Some(Ok(v)) => v,
    };
    Ok(LoadedPlugin {
        info: LoadedInfo {
            plugin_type: ty,
            name: got_name,
            version,
            symbol,
        },
        library,
    })
}

#[cfg(test)]
mod tests {
    use super::check_complete_elf;

    const PT_GNU_STACK: u32 = 0x6474_e551;

    fn u16_at(b: &[u8], at: usize) -> usize {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
    }

    /// Where the program header of type `ty` of a little-endian ELF64 file starts.
    fn program_header(elf: &[u8], ty: u32) -> usize {
        let (offset, size, count) = (
            u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize,
            u16_at(elf, 0x36),
            u16_at(elf, 0x38),
        );
        (0..count)
            .map(|i| offset + i * size)
            .find(|&at| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == ty)
            .expect("program header of that type")
    }

    #[test]
    fn a_library_is_checked_by_its_headers_against_its_length() {
        let so = kuiper_harness::plugins::CPlugin::new("whole", 1, "1.0.0").so();
        assert_eq!(
            &so[..6],
            b"\x7fELF\x02\x01",
            "a little-endian ELF64 library"
        );
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            check_complete_elf(&path)
        };
        assert_eq!(check("whole.so", &so), Ok(()));

        let err = check("cut.so", &so[..so.len() * 3 / 4]).unwrap_err();
        assert!(err.contains("the file is truncated"), "{err}");

        // A segment with no bytes in the file needs none, wherever it points;
        // one byte past the end is a truncated file.
        let at = program_header(&so, PT_GNU_STACK);
        let mut moved = so.clone();
        moved[at + 8..at + 16].copy_from_slice(&(so.len() as u64 + 4096).to_le_bytes());
        moved[at + 32..at + 40].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(check("empty-segment.so", &moved), Ok(()));
        moved[at + 32..at + 40].copy_from_slice(&1u64.to_le_bytes());
        let err = check("past-the-end.so", &moved).unwrap_err();
        assert!(
            err.contains(&format!(
                "a segment spans bytes {}..{} but the file has {} bytes",
                so.len() + 4096,
                so.len() + 4097,
                so.len()
            )),
            "{err}"
        );
    }
}
