//! The scan of a zip's entries by their local headers, while it streams in.

use std::collections::HashMap;
use std::io::{self, Read};

use super::decode::{decode, Declared};
use super::elf::{ElfCapture, LibraryFacts};
use super::inspect::{check_size, ratio_too_high};
use super::structure::{read_local, FLAG_DESCRIPTOR, FLAG_ENCRYPTED};
use super::{PackageError, ZipLimits};

/// An entry [`scan_entries`] decompressed in full with a matching CRC-32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ScannedEntry {
    pub(super) name: Vec<u8>,
    pub(super) method: u16,
    pub(super) compressed: u64,
    pub(super) crc32: u32,
    /// Bytes it decompressed to.
    pub(super) size: u64,
    /// A library candidate's ELF verdict ([`super::check_library`]).
    pub(super) elf: Option<Result<LibraryFacts, String>>,
}

/// The entries of a zip that [`scan_entries`] read from their local headers
/// as the zip streamed in, by the offset of their local header.
#[derive(Debug, Default)]
pub struct Scanned {
    pub(super) entries: HashMap<u64, ScannedEntry>,
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
/// downloading, decompressing each entry and checking its sizes and CRC-32
/// within `limits`, so that [`inspect_zip_scanned`] need not decompress it
/// again after the download. A library candidate (a root `.so` entry) also
/// gets its ELF verdict here ([`check_library`] over an [`ElfCapture`]).
/// This only saves work: it stops quietly at the central directory, at the
/// end of the stream, and at anything it cannot settle from the stream
/// alone (sizes given only after the data, encryption, corrupt data, a
/// limit reached). Those entries, and every error message, are left to
/// [`inspect_zip_scanned`], which reads the central directory as always.
///
/// [`inspect_zip_scanned`]: super::inspect_zip_scanned
/// [`check_library`]: super::check_library
pub fn scan_entries<R: Read>(reader: R, limits: &ZipLimits) -> Scanned {
    let mut stream = Counted {
        inner: reader,
        pos: 0,
    };
    let mut scanned = Scanned::default();
    let mut total: u64 = 0;
    while scanned.entries.len() < limits.max_entries {
        let offset = stream.pos;
        let Ok(Some(Ok(local))) = read_local(&mut stream) else {
            break;
        };
        if local.flags & (FLAG_ENCRYPTED | FLAG_DESCRIPTOR) != 0 {
            break;
        }
        let declared = Declared {
            method: local.method,
            compressed: local.compressed,
            size: local.size,
            crc32: local.crc32,
        };
        let mut capture = is_library_candidate(&local.name).then(ElfCapture::new);
        let decoded = decode(&mut stream, declared, |piece, size| {
            check_size("", size, total, limits)?;
            if ratio_too_high(size, declared.compressed, limits) {
                return Err(PackageError::RatioTooHigh {
                    entry: String::new(),
                    limit: limits.max_ratio,
                });
            }
            if let Some(capture) = capture.as_mut() {
                capture.write(piece);
            }
            Ok(())
        });
        let Ok(size) = decoded else {
            break;
        };
        // The stream is now at the end of the entry's data.
        total += size;
        scanned.entries.insert(
            offset,
            ScannedEntry {
                name: local.name,
                method: local.method,
                compressed: local.compressed,
                crc32: local.crc32,
                size,
                elf: capture.map(|c| c.finish().facts()),
            },
        );
    }
    scanned
}

/// Whether an entry name could be a plugin's library: a `.so` at the root.
pub(super) fn is_library_candidate(name: &[u8]) -> bool {
    !name.contains(&b'/') && name.ends_with(b".so")
}
