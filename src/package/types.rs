//! What a package check is given (limits) and gives back (the package, or why not).

use serde::{Deserialize, Serialize};

/// Limits applied while reading an archive.
#[derive(Debug, Clone, Copy)]
pub struct ZipLimits {
    /// Most entries (files and directories) in one zip.
    pub max_entries: usize,
    /// Most bytes one entry may decompress to.
    pub max_entry_bytes: u64,
    /// Most bytes all entries together may decompress to.
    pub max_total_bytes: u64,
    /// Largest ratio of decompressed to compressed size for one entry
    /// (entries under 1 MiB are not held to it), and of all entries'
    /// decompressed size to the zip's size (under 1 MiB in all, neither).
    pub max_ratio: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        ZipLimits {
            max_entries: 1000,
            max_entry_bytes: 1 << 30,
            max_total_bytes: 1 << 30,
            max_ratio: 200,
        }
    }
}

/// One file of a validated package, as recorded in the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFile {
    /// Entry name in the zip (`Random@v1.0.0.so`, `random.yaml`, `etc/a.txt`).
    pub name: String,
    /// Decompressed size in bytes.
    pub size: u64,
}

/// What a valid plugin zip contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// The library entry, e.g. `Random@v1.0.0.so`.
    pub so_file: String,
    /// The version from the library's file name, without a leading `v` (`""` when none).
    pub version: String,
    /// The library's architecture, e.g. `x86_64`, `aarch64`.
    pub arch: String,
    /// What the library was built with (C library, Go build information).
    pub build: super::BuildFingerprint,
    /// `{name}.yaml` is present.
    pub has_yaml: bool,
    /// `{name}.json` is present.
    pub has_json: bool,
    /// `install.sh` is present.
    pub has_install_script: bool,
    /// Every regular file of the zip, in zip order.
    pub files: Vec<PackageFile>,
}

/// Why a zip is not a valid plugin package. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// Not a zip archive at all, or a broken one.
    #[error("invalid zip file: not a readable zip archive ({0})")]
    NotAZip(String),
    /// An entry whose name or type could escape the plugin directory.
    #[error("invalid zip file: entry {entry:?} is not allowed: {reason}")]
    UnsafeEntry {
        /// The entry name (lossy UTF-8).
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The same name twice (compared without case, as case-insensitive file systems would).
    #[error(
        "invalid zip file: entry {0:?} appears more than once (names are compared without case)"
    )]
    DuplicateEntry(String),
    /// The central directory names one entry more than once.
    #[error("invalid zip file: the same entry name appears more than once")]
    DuplicateNames,
    /// Encrypted entries cannot be checked.
    #[error("invalid zip file: entry {0:?} is encrypted; plugin zips must not be encrypted")]
    Encrypted(String),
    /// Too many entries.
    #[error("invalid zip file: more than {0} entries")]
    TooManyEntries(usize),
    /// One entry decompresses to more than allowed.
    #[error("invalid zip file: entry {entry:?} decompresses to more than {limit} bytes")]
    EntryTooLarge {
        /// Entry name.
        entry: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// All entries together decompress to more than allowed.
    #[error("invalid zip file: entries decompress to more than {0} bytes in total")]
    TotalTooLarge(u64),
    /// Suspicious compression ratio.
    #[error("invalid zip file: entry {entry:?} has a compression ratio above {limit}:1")]
    RatioTooHigh {
        /// Entry name.
        entry: String,
        /// The ratio bound.
        limit: u64,
    },
    /// All entries together decompress to more than `limit` times the zip's size.
    #[error("invalid zip file: its entries decompress to more than {limit} times the zip's {zip_len} bytes")]
    ZipRatioTooHigh {
        /// The ratio bound ([`ZipLimits::max_ratio`]).
        limit: u64,
        /// The zip's size in bytes.
        zip_len: u64,
    },
    /// The zip's structure lets zip readers disagree about what it holds
    /// (`docs/zip-rules.md`).
    #[error("invalid zip file: {0}")]
    Structure(String),
    /// An entry could not be decompressed (bad CRC, truncated data, unsupported method).
    #[error("invalid zip file: entry {entry:?} cannot be read: {reason}")]
    Corrupt {
        /// Entry name.
        entry: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The files are not laid out as a plugin of this type and name needs.
    #[error("invalid zip file: {0}")]
    Layout(String),
    /// The library is not an ELF shared object.
    #[error("invalid zip file: {entry} is not an ELF shared library: {reason}")]
    NotElf {
        /// Entry name.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry could not be written where [`inspect_and_extract`] was told
    /// to put it (a local failure, not the zip's).
    #[error("cannot extract {entry}: {reason}")]
    Extract {
        /// Entry name.
        entry: String,
        /// The writer's complaint.
        reason: String,
    },
    /// `shellParas` were given but there is no `install.sh`.
    #[error("have shell parameters : [{0}] but no install.sh file")]
    ShellParasWithoutScript(String),
}
