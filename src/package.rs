//! The plugin package rules: plugin types, names, versions and the zip layout.
//!
//! Everything here is a pure function over names or over a zip reader; nothing
//! here touches the network or the store. The same checks run in `plugin-api`
//! (before anything is stored) and on the node (before anything is extracted).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::{self, Read, Seek, Write};

use object::read::elf::{FileHeader, ProgramHeader};
use serde::{Deserialize, Serialize};

/// The three kinds of native plugin eKuiper knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginType {
    /// `sources`: needs `{name}.yaml` next to its library.
    #[serde(rename = "sources")]
    Source,
    /// `sinks`
    #[serde(rename = "sinks")]
    Sink,
    /// `functions`: may export several function symbols.
    #[serde(rename = "functions")]
    Function,
}

impl PluginType {
    /// All types, in the order eKuiper lists them.
    pub const ALL: [PluginType; 3] = [PluginType::Source, PluginType::Sink, PluginType::Function];

    /// The path segment and directory name: `sources`, `sinks`, `functions`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginType::Source => "sources",
            PluginType::Sink => "sinks",
            PluginType::Function => "functions",
        }
    }

    /// Parses a path segment; anything but the three names is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        PluginType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The ABI v1 `kind` value of this type (0 source, 1 sink, 2 function).
    pub fn abi_kind(self) -> u32 {
        match self {
            PluginType::Source => 0,
            PluginType::Sink => 1,
            PluginType::Function => 2,
        }
    }
}

impl fmt::Display for PluginType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest plugin or function name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Why a plugin or function name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("invalid name : should not be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("invalid name {0}: longer than 128 characters")]
    TooLong(String),
    /// Leading or trailing white space.
    #[error("invalid name {0:?}: contains leading or trailing whitespace")]
    Whitespace(String),
    /// A character outside `[A-Za-z0-9_-]`, or a leading `-`.
    #[error("invalid name {0:?}: only letters, digits, '_' and '-' are allowed, and it must not start with '-'")]
    Characters(String),
}

/// Checks a plugin or function name: `^[A-Za-z0-9_-]{1,128}$`, not starting with `-`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.trim() != name {
        return Err(NameError::Whitespace(name.to_string()));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok || name.starts_with('-') {
        return Err(NameError::Characters(name.to_string()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.to_string()));
    }
    Ok(())
}

/// The name with its first character upper-cased (`random` -> `Random`): the
/// exported symbol of a plugin and the usual stem of its library file.
pub fn uc_first(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

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
    /// (entries under 1 MiB are not held to it).
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

/// What kind of entry a zip member is, by its unix mode.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Checks an entry name: relative, `/`-separated, no `..`, `.` or empty
/// components (a trailing `/` marks a directory), no backslash, colon or control
/// character. Returns the reason when it is refused.
pub fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    if name.contains('\\') {
        return Err("backslashes are not allowed in entry names");
    }
    if name.contains(':') {
        return Err("':' (drive letters, streams) is not allowed in entry names");
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("control characters are not allowed in entry names");
    }
    if name.len() > 1024 {
        return Err("entry names longer than 1024 bytes are not allowed");
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    for part in trimmed.split('/') {
        if part.len() > 255 {
            return Err("path components longer than 255 bytes are not allowed");
        }
        match part {
            ".." => return Err("'..' would escape the plugin directory"),
            "." | "" => return Err("'.' and empty path components are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// The library file name pattern for `name`: `^(name|Name)(@v?VERSION)?\.so$`.
/// Returns the version (leading `v` trimmed) when `file` matches.
pub fn match_library(name: &str, file: &str) -> Option<String> {
    let stem = file.strip_suffix(".so")?;
    let upper = uc_first(name);
    let rest = stem
        .strip_prefix(name)
        .or_else(|| stem.strip_prefix(upper.as_str()))?;
    if rest.is_empty() {
        return Some(String::new());
    }
    let version = rest.strip_prefix('@')?;
    let version = version.strip_prefix('v').unwrap_or(version);
    let valid = !version.is_empty()
        && version.len() <= 64
        && version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    valid.then(|| version.to_string())
}

/// Bytes of the library kept for the ELF check: header and program headers.
const ELF_PREFIX: usize = 64 * 1024;

/// An entry [`scan_entries`] decompressed in full with a matching CRC-32.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScannedEntry {
    name: Vec<u8>,
    method: zip::CompressionMethod,
    compressed: u64,
    crc32: u32,
    /// Bytes it decompressed to.
    size: u64,
}

/// The entries of a zip that [`scan_entries`] read from their local headers
/// as the zip streamed in, by the offset of their local header.
#[derive(Debug, Default)]
pub struct Scanned {
    entries: HashMap<u64, ScannedEntry>,
}

impl Scanned {
    /// How many entries were decompressed and found intact.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry was.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Counts the bytes read through it, to know each local header's offset.
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads a zip front to back by its local headers, while it is still
/// downloading, decompressing each entry and checking its CRC-32 within
/// `limits`, so that [`inspect_zip_scanned`] need not decompress it again
/// after the download. This only saves work: it stops quietly at the central
/// directory, at the end of the stream, and at anything it cannot settle from
/// the stream alone (sizes given only after the data, encryption, corrupt
/// data, a limit reached). Those entries, and every error message, are left
/// to [`inspect_zip_scanned`], which reads the central directory as always.
pub fn scan_entries<R: Read>(reader: R, limits: &ZipLimits) -> Scanned {
    let mut stream = Counted {
        inner: reader,
        pos: 0,
    };
    let mut scanned = Scanned::default();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while scanned.entries.len() < limits.max_entries {
        let offset = stream.pos;
        let Ok(Some(mut file)) = zip::read::read_zipfile_from_stream(&mut stream) else {
            break;
        };
        if file.encrypted() {
            break;
        }
        let mut entry = ScannedEntry {
            name: file.name_raw().to_vec(),
            method: file.compression(),
            compressed: file.compressed_size(),
            crc32: file.crc32(),
            size: 0,
        };
        // The reader checks the CRC-32 when it reaches the end of the entry.
        let intact = loop {
            match file.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    entry.size += n as u64;
                    if check_size("", entry.size, total, limits).is_err()
                        || ratio_too_high(entry.size, entry.compressed, limits)
                    {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        drop(file);
        if !intact {
            break;
        }
        total += entry.size;
        scanned.entries.insert(offset, entry);
    }
    scanned
}

/// Whether an entry of `size` bytes stored in `compressed` bytes is packed
/// more tightly than `limits` allow (entries up to 1 MiB never are).
fn ratio_too_high(size: u64, compressed: u64, limits: &ZipLimits) -> bool {
    size > (1 << 20) && size / compressed.max(1) > limits.max_ratio
}

/// Reads and checks a plugin zip for a plugin of type `ty` named `name`.
///
/// Every entry is decompressed (so bad CRCs, truncation and bombs are caught by
/// what is actually decoded), names and types are checked, and the layout must
/// be: exactly one library `Name[@vVERSION].so` or `name[@vVERSION].so` at the
/// root; `{name}.yaml` for sources; optionally `{name}.json`, an `etc/` tree,
/// and `install.sh` with any files it needs. `shell_paras` need `install.sh`.
pub fn inspect_zip<R: Read + Seek>(
    reader: R,
    ty: PluginType,
    name: &str,
    shell_paras: &[String],
    limits: &ZipLimits,
) -> Result<PackageInfo, PackageError> {
    inspect_zip_scanned(reader, ty, name, shell_paras, limits, &Scanned::default())
}

/// [`inspect_zip`], except that an entry `scanned` already decompressed
/// intact is not decompressed again: its local header sits where the central
/// directory says, with the same name, method, sizes and CRC-32, so the bytes
/// are the ones the scan read. Only the library's first bytes are read again,
/// for the ELF check. The result, and every error, is the same as
/// [`inspect_zip`]'s for the same zip.
pub fn inspect_zip_scanned<R: Read + Seek>(
    reader: R,
    ty: PluginType,
    name: &str,
    shell_paras: &[String],
    limits: &ZipLimits,
    scanned: &Scanned,
) -> Result<PackageInfo, PackageError> {
    inspect(
        reader,
        ty,
        name,
        shell_paras,
        limits,
        scanned,
        &mut CheckOnly,
    )
}

/// Where [`inspect_and_extract`] writes the entries it decompresses.
pub trait Extract {
    /// Takes one entry's bytes.
    type Out: Write;
    /// Called before the bytes of the file entry `entry` are read: where
    /// they go, or `None` to only check them.
    fn open(&mut self, entry: &str) -> io::Result<Option<Self::Out>>;
    /// Called once all of `entry`'s bytes went to `out` and the entry
    /// passed its checks (CRC-32, sizes, ratio). When the entry fails them,
    /// `close` is not called and `out` is dropped, holding some of the
    /// entry's bytes: the caller discards what it extracted.
    fn close(&mut self, entry: &str, out: Self::Out) -> io::Result<()>;
    /// The largest deflated entry (declared size, and compressed size) that
    /// may be decoded whole in memory rather than as a stream: up to twice
    /// this many bytes are held while it decodes. 0 (the default): always
    /// stream.
    ///
    /// Whole decoding (libdeflate) is about twice as fast. An entry it cannot
    /// decode to exactly its declared size and CRC-32 is decoded again as a
    /// stream, which gives the verdict, so every zip the streaming checks
    /// accept is accepted the same way. libdeflate also decodes a few
    /// constructs the deflate format reserves (length symbols 286 and 287,
    /// distance codes 30 and 31), which the streaming checks refuse: a zip
    /// using them, which the service never stores, can pass when decoded whole.
    fn whole_entry_max(&self) -> u64 {
        0
    }
}

/// Decodes deflated entries whole, for [`Extract::whole_entry_max`].
#[derive(Default)]
struct WholeInflater {
    decompressor: Option<libdeflater::Decompressor>,
}

impl WholeInflater {
    /// The entry's bytes if its `compressed` raw bytes, read from `raw`,
    /// decode to exactly `size` bytes with CRC-32 `crc`; `None` otherwise
    /// (damaged, not as declared, or not readable), for the streaming path
    /// to decide. Holds `compressed + size` bytes.
    fn inflate(
        &mut self,
        raw: &mut impl Read,
        compressed: u64,
        size: u64,
        crc: u32,
    ) -> Option<Vec<u8>> {
        // The caller bounds `compressed` by the zip's length and the budget.
        let mut input = Vec::with_capacity(usize::try_from(compressed).ok()?);
        raw.take(compressed).read_to_end(&mut input).ok()?;
        if input.len() as u64 != compressed {
            return None;
        }
        let mut out = vec![0u8; usize::try_from(size).ok()?];
        let decoded = self
            .decompressor
            .get_or_insert_with(libdeflater::Decompressor::new)
            .deflate_decompress(&input, &mut out)
            .ok()?;
        (decoded as u64 == size && crc32fast::hash(&out) == crc).then_some(out)
    }
}

/// Extracts nothing: the checks only.
struct CheckOnly;

impl Extract for CheckOnly {
    type Out = io::Sink;

    fn open(&mut self, _: &str) -> io::Result<Option<io::Sink>> {
        Ok(None)
    }

    fn close(&mut self, _: &str, _: io::Sink) -> io::Result<()> {
        Ok(())
    }
}

/// [`inspect_zip`] that also hands the bytes of the entries `extract` asks
/// for to it, as it decompresses them: checking and extracting a zip
/// decompress each entry once. An entry's bytes may be written before a
/// later entry, or the layout, fails the checks: on any error, the caller
/// discards what it extracted.
pub fn inspect_and_extract<R: Read + Seek>(
    reader: R,
    ty: PluginType,
    name: &str,
    shell_paras: &[String],
    limits: &ZipLimits,
    extract: &mut impl Extract,
) -> Result<PackageInfo, PackageError> {
    inspect(
        reader,
        ty,
        name,
        shell_paras,
        limits,
        &Scanned::default(),
        extract,
    )
}

/// The checks of [`inspect_zip`]. An entry `scanned` vouches for is not
/// decompressed again unless `extract` asks for its bytes.
fn inspect<R: Read + Seek, E: Extract>(
    mut reader: R,
    ty: PluginType,
    name: &str,
    shell_paras: &[String],
    limits: &ZipLimits,
    scanned: &Scanned,
    extract: &mut E,
) -> Result<PackageInfo, PackageError> {
    // What an entry's raw bytes can be at most, whatever its header claims.
    let zip_len = reader
        .seek(io::SeekFrom::End(0))
        .and_then(|len| reader.rewind().map(|()| len))
        .map_err(|e| PackageError::NotAZip(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| PackageError::NotAZip(e.to_string()))?;
    if zip.len() > limits.max_entries {
        return Err(PackageError::TooManyEntries(limits.max_entries));
    }
    if zip.has_duplicate_names() {
        return Err(PackageError::DuplicateNames);
    }

    let yaml_name = format!("{name}.yaml");
    let json_name = format!("{name}.json");
    let mut names_in_zip = Vec::new();
    let mut seen_lower = BTreeSet::new();
    let mut files = Vec::new();
    let mut libraries: Vec<(String, String)> = Vec::new();
    let mut elf: Option<(String, Vec<u8>)> = None;
    let mut total: u64 = 0;
    let whole_max = extract.whole_entry_max();
    let mut inflater = WholeInflater::default();

    for i in 0..zip.len() {
        let raw = zip
            .by_index_raw(i)
            .map_err(|e| PackageError::NotAZip(e.to_string()))?;
        let entry = match std::str::from_utf8(raw.name_raw()) {
            Ok(s) => s.to_string(),
            Err(_) => {
                return Err(PackageError::UnsafeEntry {
                    entry: String::from_utf8_lossy(raw.name_raw()).into_owned(),
                    reason: "entry names must be valid UTF-8",
                })
            }
        };
        check_entry_name(&entry).map_err(|reason| PackageError::UnsafeEntry {
            entry: entry.clone(),
            reason,
        })?;
        if !seen_lower.insert(entry.trim_end_matches('/').to_lowercase()) {
            return Err(PackageError::DuplicateEntry(entry));
        }
        if raw.encrypted() {
            return Err(PackageError::Encrypted(entry));
        }
        let is_dir_name = entry.ends_with('/');
        match raw.unix_mode().map(|m| m & S_IFMT) {
            Some(S_IFLNK) => {
                return Err(PackageError::UnsafeEntry {
                    entry,
                    reason: "symbolic links are not allowed",
                })
            }
            Some(S_IFDIR) | Some(0) | None => {}
            Some(S_IFREG) if !is_dir_name => {}
            Some(_) => {
                return Err(PackageError::UnsafeEntry {
                    entry,
                    reason: "only regular files and directories are allowed",
                })
            }
        }
        let compressed = raw.compressed_size();
        let verified = scanned
            .entries
            .get(&raw.header_start())
            .filter(|e| {
                e.name == raw.name_raw()
                    && e.method == raw.compression()
                    && e.compressed == compressed
                    && e.crc32 == raw.crc32()
                    && e.size == raw.size()
            })
            .map(|e| e.size);
        let (method, declared, crc) = (raw.compression(), raw.size(), raw.crc32());
        drop(raw);
        names_in_zip.push(entry.clone());
        if is_dir_name {
            continue;
        }

        let is_library_candidate = !entry.contains('/') && entry.ends_with(".so");
        let version = if is_library_candidate {
            match_library(name, &entry)
        } else {
            None
        };
        let corrupt = |e: &dyn fmt::Display| PackageError::Corrupt {
            entry: entry.clone(),
            reason: e.to_string(),
        };
        let keep = if version.is_some() { ELF_PREFIX } else { 0 };
        let extract_err = |e: io::Error| PackageError::Extract {
            entry: entry.clone(),
            reason: e.to_string(),
        };
        // Whole decoding, when allowed and the entry is within every limit
        // as declared; whatever it cannot settle is decoded as a stream.
        let whole = if whole_max > 0
            && method == zip::CompressionMethod::Deflated
            && declared <= whole_max
            && compressed <= whole_max.min(zip_len)
            && check_size(&entry, declared, total, limits).is_ok()
            && !ratio_too_high(declared, compressed, limits)
        {
            zip.by_index_raw(i)
                .ok()
                .and_then(|mut raw| inflater.inflate(&mut raw, compressed, declared, crc))
        } else {
            None
        };
        let (out, size, prefix) = if let Some(bytes) = whole {
            let mut out = extract.open(&entry).map_err(extract_err)?;
            if let Some(out) = out.as_mut() {
                out.write_all(&bytes).map_err(extract_err)?;
            }
            (out, declared, bytes[..keep.min(bytes.len())].to_vec())
        } else {
            let mut file = zip.by_index(i).map_err(|e| corrupt(&e))?;
            let mut out = extract.open(&entry).map_err(extract_err)?;
            let (size, prefix) = match (verified, out.as_mut()) {
                (Some(size), None) => {
                    check_size(&entry, size, total, limits)?;
                    let mut prefix = Vec::with_capacity(keep);
                    (&mut file)
                        .take(keep as u64)
                        .read_to_end(&mut prefix)
                        .map_err(|e| corrupt(&e))?;
                    (size, prefix)
                }
                (_, out) => read_entry(&mut file, &entry, keep, limits, total, compressed, out)?,
            };
            (out, size, prefix)
        };
        total += size;
        if ratio_too_high(size, compressed, limits) {
            return Err(PackageError::RatioTooHigh {
                entry,
                limit: limits.max_ratio,
            });
        }
        if let Some(out) = out {
            extract.close(&entry, out).map_err(extract_err)?;
        }
        if let Some(v) = version {
            libraries.push((entry.clone(), v));
            elf = Some((entry.clone(), prefix));
        }
        files.push(PackageFile { name: entry, size });
    }

    let upper = uc_first(name);
    let listing = format!("[{}]", names_in_zip.join(", "));
    let (so_file, version) = match libraries.len() {
        1 => libraries.pop().expect("one library"),
        0 => {
            let nested = names_in_zip.iter().any(|n| {
                n.contains('/') && n.ends_with(&format!("/{upper}.so"))
                    || n.ends_with(&format!("/{name}.so"))
            });
            let hint = if nested {
                " (files must be at the root of the zip, not in a folder)"
            } else {
                ""
            };
            return Err(PackageError::Layout(format!(
                "expected the plugin library {upper}.so or {name}.so (a version may follow '@', as in {upper}@v1.0.0.so) at the root of the zip, found none{hint}; the zip contains {listing}"
            )));
        }
        _ => {
            let found: Vec<_> = libraries.iter().map(|(f, _)| f.as_str()).collect();
            return Err(PackageError::Layout(format!(
                "expected exactly one plugin library for {name} at the root of the zip, found {}: [{}]",
                found.len(),
                found.join(", ")
            )));
        }
    };

    let has_yaml = files.iter().any(|f| f.name == yaml_name);
    let has_json = files.iter().any(|f| f.name == json_name);
    let has_install_script = files.iter().any(|f| f.name == "install.sh");
    if ty == PluginType::Source && !has_yaml {
        return Err(PackageError::Layout(format!(
            "a source plugin needs its configuration {yaml_name} at the root of the zip, next to {so_file}, but it is missing; the zip contains {listing}"
        )));
    }
    if !has_install_script {
        let allowed = |n: &str| {
            n == so_file
                || n == json_name
                || (ty == PluginType::Source && n == yaml_name)
                || n == "etc/"
                || n.starts_with("etc/")
        };
        if let Some(extra) = names_in_zip.iter().find(|n| !allowed(n)) {
            let mut expected = vec![so_file.clone()];
            if ty == PluginType::Source {
                expected.push(yaml_name.clone());
            }
            expected.push(json_name.clone());
            expected.push("etc/...".into());
            return Err(PackageError::Layout(format!(
                "unexpected entry {extra:?}: without install.sh a {ty} plugin zip may contain only [{}]; the zip contains {listing}",
                expected.join(", ")
            )));
        }
    }
    if !shell_paras.is_empty() && !has_install_script {
        return Err(PackageError::ShellParasWithoutScript(shell_paras.join(" ")));
    }

    let (elf_entry, prefix) = elf.expect("library prefix kept");
    let arch = check_elf(&prefix).map_err(|reason| PackageError::NotElf {
        entry: elf_entry,
        reason,
    })?;

    Ok(PackageInfo {
        so_file,
        version,
        arch,
        has_yaml,
        has_json,
        has_install_script,
        files,
    })
}

/// Decompresses one entry of `compressed` bytes to the end under the
/// limits, keeping its first `keep` bytes and writing them to `out` if
/// given. Once the entry is bound to fail the ratio check (its size only
/// grows), it is still decoded, for the same verdict as without `out`, but
/// no longer written: a bomb writes at most about `max_ratio` times its
/// compressed size.
fn read_entry(
    file: &mut impl Read,
    entry: &str,
    keep: usize,
    limits: &ZipLimits,
    total_before: u64,
    compressed: u64,
    mut out: Option<&mut impl Write>,
) -> Result<(u64, Vec<u8>), PackageError> {
    let mut buf = [0u8; 64 * 1024];
    let mut prefix = Vec::new();
    let mut size: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(PackageError::Corrupt {
                    entry: entry.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        size += n as u64;
        check_size(entry, size, total_before, limits)?;
        if ratio_too_high(size, compressed, limits) {
            out = None;
        }
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..n])
                .map_err(|e| PackageError::Extract {
                    entry: entry.to_string(),
                    reason: e.to_string(),
                })?;
        }
        if prefix.len() < keep {
            let take = n.min(keep - prefix.len());
            prefix.extend_from_slice(&buf[..take]);
        }
    }
    Ok((size, prefix))
}

/// Checks `size` bytes of `entry`, after `total_before` bytes of the entries
/// before it, against the size limits.
fn check_size(
    entry: &str,
    size: u64,
    total_before: u64,
    limits: &ZipLimits,
) -> Result<(), PackageError> {
    if size > limits.max_entry_bytes {
        return Err(PackageError::EntryTooLarge {
            entry: entry.to_string(),
            limit: limits.max_entry_bytes,
        });
    }
    if total_before + size > limits.max_total_bytes {
        return Err(PackageError::TotalTooLarge(limits.max_total_bytes));
    }
    Ok(())
}

/// Checks that `data` (the start of a file) is an ELF shared object with a
/// dynamic segment, and returns its architecture name.
pub fn check_elf(data: &[u8]) -> Result<String, String> {
    match object::FileKind::parse(data) {
        Ok(object::FileKind::Elf64) => {
            elf_arch::<object::elf::FileHeader64<object::Endianness>>(data)
        }
        Ok(object::FileKind::Elf32) => {
            elf_arch::<object::elf::FileHeader32<object::Endianness>>(data)
        }
        Ok(other) => Err(format!("it is a {other:?} file, not ELF")),
        Err(_) => Err("it does not start with an ELF header".to_string()),
    }
}

fn elf_arch<H: FileHeader<Endian = object::Endianness>>(data: &[u8]) -> Result<String, String> {
    let header = H::parse(data).map_err(|e| format!("bad ELF header: {e}"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("bad ELF header: {e}"))?;
    if header.e_type(endian) != object::elf::ET_DYN {
        return Err(format!(
            "ELF type is {}, not a shared object (ET_DYN); build it as a shared library (cdylib, -buildmode=plugin or -shared)",
            header.e_type(endian)
        ));
    }
    match header.program_headers(endian, data) {
        Ok(phdrs) => {
            if !phdrs.is_empty()
                && !phdrs
                    .iter()
                    .any(|p| p.p_type(endian) == object::elf::PT_DYNAMIC)
            {
                return Err("it has no dynamic segment".to_string());
            }
        }
        Err(_) if data.len() >= ELF_PREFIX => {}
        Err(e) => return Err(format!("bad program headers: {e}")),
    }
    Ok(machine_name(header.e_machine(endian)).to_string())
}

/// The conventional name of an ELF machine, as `uname -m` prints it.
pub fn machine_name(machine: u16) -> &'static str {
    match machine {
        object::elf::EM_X86_64 => "x86_64",
        object::elf::EM_AARCH64 => "aarch64",
        object::elf::EM_386 => "x86",
        object::elf::EM_ARM => "arm",
        object::elf::EM_RISCV => "riscv64",
        object::elf::EM_PPC64 => "ppc64",
        object::elf::EM_S390 => "s390x",
        object::elf::EM_MIPS => "mips",
        object::elf::EM_LOONGARCH => "loongarch64",
        _ => "unknown",
    }
}

/// The architecture of this machine, named as [`machine_name`] names ELF machines.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        "x86" => "x86",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "loongarch64" => "loongarch64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn whole(raw: &[u8], compressed: u64, size: u64, crc: u32) -> Option<Vec<u8>> {
        WholeInflater::default().inflate(&mut &raw[..], compressed, size, crc)
    }

    #[test]
    fn whole_decoding_takes_only_an_entry_exactly_as_declared() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i / 7 % 251) as u8).collect();
        let raw = deflate(&data);
        let (n, size, crc) = (raw.len() as u64, data.len() as u64, crc32fast::hash(&data));
        assert_eq!(whole(&raw, n, size, crc), Some(data));
        assert_eq!(whole(&raw, n, size, crc ^ 1), None, "CRC-32 differs");
        assert_eq!(whole(&raw, n, size + 1, crc), None, "shorter than declared");
        assert_eq!(whole(&raw, n, size - 1, crc), None, "longer than declared");
        assert_eq!(whole(&raw, n + 5, size, crc), None, "raw bytes missing");
        let mut damaged = raw.clone();
        damaged[n as usize / 2] ^= 0x55;
        assert_eq!(whole(&damaged, n, size, crc), None, "damaged");
    }

    /// A fixed-Huffman block: 'A', then length symbol 286 (reserved by the
    /// deflate format) at distance 1, then the end of the block.
    fn reserved_length_symbol() -> Vec<u8> {
        let mut bits = Vec::new();
        let mut put = |v: u32, n: u32, msb_first: bool| {
            for i in 0..n {
                let shift = if msb_first { n - 1 - i } else { i };
                bits.push((v >> shift) & 1);
            }
        };
        put(1, 1, false); // final block
        put(1, 2, false); // fixed Huffman codes
        put(0x30 + u32::from(b'A'), 8, true);
        put(0xC0 + (286 - 280), 8, true);
        put(0, 5, true); // distance code 0: distance 1
        put(0, 7, true); // end of block
        bits.chunks(8)
            .map(|byte| byte.iter().enumerate().map(|(i, b)| (b << i) as u8).sum())
            .collect()
    }

    /// The documented difference (see `Extract::whole_entry_max`): the
    /// streaming checks refuse a reserved length symbol, whole decoding
    /// takes it (as length 258) when size and CRC-32 match.
    #[test]
    fn whole_decoding_takes_a_reserved_length_symbol_the_stream_refuses() {
        let raw = reserved_length_symbol();
        let mut streamed = Vec::new();
        assert!(flate2::read::DeflateDecoder::new(&raw[..])
            .read_to_end(&mut streamed)
            .is_err());
        let expected = vec![b'A'; 259];
        let crc = crc32fast::hash(&expected);
        assert_eq!(whole(&raw, raw.len() as u64, 259, crc), Some(expected));
    }

    #[test]
    fn names() {
        for ok in ["abc", "ABC", "123", "1-2", "valid_id_123", "a-"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "1/2", "1#2", "1%2", "1.2", "\t123", "123\t", " a", "-abc", "../x", "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(128)).is_ok());
        assert!(validate_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn library_names() {
        assert_eq!(match_library("random", "Random.so"), Some(String::new()));
        assert_eq!(match_library("random", "random.so"), Some(String::new()));
        assert_eq!(
            match_library("random3", "Random3@v1.0.0.so"),
            Some("1.0.0".into())
        );
        assert_eq!(
            match_library("my", "My@20200331.so"),
            Some("20200331".into())
        );
        assert_eq!(match_library("random", "Random2.so"), None);
        assert_eq!(match_library("random", "Random@.so"), None);
        assert_eq!(match_library("random", "Random@v1/x.so"), None);
        assert_eq!(match_library("random", "RANDOM.so"), None);
    }

    #[test]
    fn entry_names() {
        assert!(check_entry_name("etc/a/b.txt").is_ok());
        assert!(check_entry_name("etc/").is_ok());
        for bad in [
            "/abs.so",
            "../evil.so",
            "a/../../x",
            "a\\..\\x",
            "C:/x",
            "a//b",
            "./a",
            "a\0b",
        ] {
            assert!(check_entry_name(bad).is_err(), "{bad:?}");
        }
    }
}
