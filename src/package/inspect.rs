//! The zip checks after the download: every entry, its name, type, sizes and
//! bytes, and the package layout; optionally extracting as it goes.

use std::collections::BTreeSet;
use std::io::{self, Read, Seek, Write};

use super::decode::{decode, Declared, DecodeError, DEFLATED};
use super::elf::{ElfCapture, LibraryFacts};
use super::names::{check_entry_name, match_library, uc_first};
use super::scan::{is_library_candidate, Scanned};
use super::structure;
use super::{PackageError, PackageFile, PackageInfo, PluginType, ZipLimits};

/// What kind of entry a zip member is, by its unix mode.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Whether an entry of `size` bytes stored in `compressed` bytes is packed
/// more tightly than `limits` allow (entries up to 1 MiB never are).
pub(super) fn ratio_too_high(size: u64, compressed: u64, limits: &ZipLimits) -> bool {
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
        .map_err(|e| PackageError::NotAZip(e.to_string()))?;
    // Every zip reader must see the same entries this check sees.
    let records = structure::check(&mut reader, zip_len, limits.max_entries)?;
    reader
        .rewind()
        .map_err(|e| PackageError::NotAZip(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| PackageError::NotAZip(e.to_string()))?;
    // The zip crate keeps one of several entries of a name: say so first.
    if zip.has_duplicate_names() {
        return Err(PackageError::DuplicateNames);
    }
    if zip.len() != records.len() {
        return Err(PackageError::NotAZip(format!(
            "the zip reader found {} entries where its central directory has {}",
            zip.len(),
            records.len()
        )));
    }

    let yaml_name = format!("{name}.yaml");
    let json_name = format!("{name}.json");
    let mut names_in_zip = Vec::new();
    let mut seen_lower = BTreeSet::new();
    let mut files = Vec::new();
    let mut libraries: Vec<(String, String)> = Vec::new();
    let mut elf: Option<(String, Result<LibraryFacts, String>)> = None;
    let mut total: u64 = 0;
    let whole_max = extract.whole_entry_max();
    let mut inflater = WholeInflater::default();

    for (i, record) in records.iter().enumerate() {
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
        if raw.header_start() != record.header_start || raw.name_raw() != record.name {
            return Err(PackageError::NotAZip(format!(
                "the zip reader read entry {entry:?} differently from its central record"
            )));
        }
        let declared = Declared {
            method: record.method,
            compressed: record.compressed,
            size: record.size,
            crc32: record.crc32,
        };
        let compressed = declared.compressed;
        let vouched = scanned.entries.get(&record.header_start).filter(|e| {
            e.name == record.name
                && e.method == declared.method
                && e.compressed == compressed
                && e.crc32 == declared.crc32
                && e.size == declared.size
        });
        drop(raw);
        names_in_zip.push(entry.clone());
        if is_dir_name {
            continue;
        }

        let version = if is_library_candidate(entry.as_bytes()) {
            match_library(name, &entry)
        } else {
            None
        };
        let extract_err = |e: io::Error| PackageError::Extract {
            entry: entry.clone(),
            reason: e.to_string(),
        };
        let mut capture = version.is_some().then(ElfCapture::new);
        // Whole decoding, when allowed and the entry is within every limit
        // as declared; whatever it cannot settle is decoded as a stream.
        let whole = if whole_max > 0
            && declared.method == DEFLATED
            && declared.size <= whole_max
            && compressed <= whole_max.min(zip_len)
            && check_size(&entry, declared.size, total, limits).is_ok()
            && !zip_ratio_too_high(total + declared.size, zip_len, limits)
            && !ratio_too_high(declared.size, compressed, limits)
        {
            zip.by_index_raw(i).ok().and_then(|mut raw| {
                inflater.inflate(&mut raw, compressed, declared.size, declared.crc32)
            })
        } else {
            None
        };
        let mut out;
        let (size, verdict) = if let Some(bytes) = whole {
            out = extract.open(&entry).map_err(extract_err)?;
            if let Some(out) = out.as_mut() {
                out.write_all(&bytes).map_err(extract_err)?;
            }
            if let Some(capture) = capture.as_mut() {
                capture.write(&bytes);
            }
            (declared.size, capture.map(|c| c.finish().facts()))
        } else {
            out = extract.open(&entry).map_err(extract_err)?;
            // An entry the scan vouched for is not decoded again, unless its
            // bytes are wanted (or, for a library, its ELF verdict).
            match vouched.filter(|e| out.is_none() && (version.is_none() || e.elf.is_some())) {
                Some(e) => {
                    check_size(&entry, e.size, total, limits)?;
                    check_zip_ratio(total + e.size, zip_len, limits)?;
                    (e.size, version.as_ref().and(e.elf.clone()))
                }
                None => {
                    let raw = zip
                        .by_index_raw(i)
                        .map_err(|e| PackageError::NotAZip(e.to_string()))?;
                    let size = read_entry(
                        raw,
                        &entry,
                        declared,
                        limits,
                        (total, zip_len),
                        capture.as_mut(),
                        out.as_mut(),
                    )?;
                    (size, capture.map(|c| c.finish().facts()))
                }
            }
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
            elf = Some((entry.clone(), verdict.expect("a library's ELF verdict")));
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

    let (elf_entry, verdict) = elf.expect("the library's ELF verdict");
    let LibraryFacts { arch, build } = verdict.map_err(|reason| PackageError::NotElf {
        entry: elf_entry,
        reason,
    })?;

    Ok(PackageInfo {
        so_file,
        version,
        arch,
        build,
        has_yaml,
        has_json,
        has_install_script,
        files,
    })
}

/// Decodes one entry as declared ([`decode`]) under the limits, handing
/// its bytes to `capture` and `out` if given; `before` is the bytes of the
/// entries before it and the zip's length. Once the entry is bound to fail
/// the ratio check (its size only grows), it is still decoded, for the same
/// verdict as without `out`, but no longer written: a bomb writes at most
/// about `max_ratio` times its compressed size.
fn read_entry(
    raw: impl Read,
    entry: &str,
    declared: Declared,
    limits: &ZipLimits,
    (total_before, zip_len): (u64, u64),
    mut capture: Option<&mut ElfCapture>,
    mut out: Option<&mut impl Write>,
) -> Result<u64, PackageError> {
    let decoded = decode(raw, declared, |piece, size| {
        check_size(entry, size, total_before, limits)?;
        check_zip_ratio(total_before + size, zip_len, limits)?;
        if ratio_too_high(size, declared.compressed, limits) {
            out = None;
        }
        if let Some(out) = out.as_mut() {
            out.write_all(piece).map_err(|e| PackageError::Extract {
                entry: entry.to_string(),
                reason: e.to_string(),
            })?;
        }
        if let Some(capture) = capture.as_mut() {
            capture.write(piece);
        }
        Ok(())
    });
    decoded.map_err(|e| match e {
        DecodeError::Data(reason) => PackageError::Corrupt {
            entry: entry.to_string(),
            reason,
        },
        DecodeError::Piece(e) => e,
    })
}

/// Whether entries decoding to `total` bytes in all make a zip of
/// `zip_len` bytes more than `max_ratio` times larger (never under 1 MiB).
fn zip_ratio_too_high(total: u64, zip_len: u64, limits: &ZipLimits) -> bool {
    total > (1 << 20) && total / zip_len.max(1) > limits.max_ratio
}

/// [`zip_ratio_too_high`] as an error.
fn check_zip_ratio(total: u64, zip_len: u64, limits: &ZipLimits) -> Result<(), PackageError> {
    if zip_ratio_too_high(total, zip_len, limits) {
        return Err(PackageError::ZipRatioTooHigh {
            limit: limits.max_ratio,
            zip_len,
        });
    }
    Ok(())
}

/// Checks `size` bytes of `entry`, after `total_before` bytes of the entries
/// before it, against the size limits.
pub(super) fn check_size(
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
}
