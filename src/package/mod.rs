//! The plugin package rules: plugin types, names, versions and the zip layout.
//!
//! Everything here is a pure function over names or over a zip reader; nothing
//! here touches the network or the store. The same checks run in `plugin-api`
//! (before anything is stored) and on the node (before anything is extracted).

mod buildinfo;
mod compat;
mod decode;
mod elf;
mod fingerprint;
mod inspect;
mod names;
mod scan;
mod structure;
mod types;

pub use buildinfo::{
    encode as encode_go_build, parse as parse_go_build, GoBuild, Module as GoModule,
};
pub use compat::refusals;
pub use elf::{
    check_library, check_library_file, fingerprint_file, host_arch, machine_name, CapturedElf,
    ElfCapture, LibraryFacts, MAX_DYNAMIC_BYTES,
};
pub use fingerprint::{BuildFingerprint, Libc};
pub use inspect::{inspect_and_extract, inspect_zip, inspect_zip_scanned, Extract};
pub use names::{
    check_entry_name, match_library, uc_first, validate_name, NameError, PluginType, MAX_NAME_LEN,
};
pub use scan::{scan_entries, Scanned};
pub use types::{PackageError, PackageFile, PackageInfo, ZipLimits};
