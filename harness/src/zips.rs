//! Builds plugin zips in memory: valid ones, and malformed or malicious ones.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

#[derive(Debug, Clone)]
enum Entry {
    File {
        name: String,
        data: Vec<u8>,
        mode: Option<u32>,
    },
    Dir(String),
    Symlink {
        name: String,
        target: String,
    },
}

/// A zip under construction.
#[derive(Debug, Clone, Default)]
pub struct ZipBuilder {
    entries: Vec<Entry>,
    stored: bool,
}

impl ZipBuilder {
    /// An empty zip.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a regular file.
    pub fn file(mut self, name: &str, data: impl Into<Vec<u8>>) -> Self {
        self.entries.push(Entry::File {
            name: name.to_string(),
            data: data.into(),
            mode: None,
        });
        self
    }

    /// Adds a file with explicit unix permission bits.
    pub fn file_with_mode(mut self, name: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.entries.push(Entry::File {
            name: name.to_string(),
            data: data.into(),
            mode: Some(mode),
        });
        self
    }

    /// Adds a directory entry (`name` ends with `/`).
    pub fn dir(mut self, name: &str) -> Self {
        self.entries.push(Entry::Dir(name.to_string()));
        self
    }

    /// Adds a symbolic link.
    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            name: name.to_string(),
            target: target.to_string(),
        });
        self
    }

    /// Stores entries without compression.
    pub fn stored(mut self) -> Self {
        self.stored = true;
        self
    }

    /// The zip's bytes.
    pub fn build(self) -> Vec<u8> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        let method = if self.stored {
            CompressionMethod::Stored
        } else {
            CompressionMethod::Deflated
        };
        let opts = SimpleFileOptions::default()
            .compression_method(method)
            .large_file(false);
        for e in self.entries {
            match e {
                Entry::File { name, data, mode } => {
                    let o = match mode {
                        Some(m) => opts.unix_permissions(m),
                        None => opts.unix_permissions(0o644),
                    };
                    w.start_file(name, o).expect("start file");
                    w.write_all(&data).expect("write");
                }
                Entry::Dir(name) => {
                    w.add_directory(name, opts).expect("dir");
                }
                Entry::Symlink { name, target } => {
                    w.add_symlink(name, target, opts).expect("symlink");
                }
            }
        }
        w.finish().expect("finish").into_inner()
    }
}

/// Replaces every occurrence of `from` with `to` (same length) in a zip's
/// bytes: renames entries in both the local headers and the central directory,
/// e.g. to make two entries share one name.
pub fn rename_in_place(mut bytes: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "same length names only");
    let (f, t) = (from.as_bytes(), to.as_bytes());
    let mut i = 0;
    while i + f.len() <= bytes.len() {
        if &bytes[i..i + f.len()] == f {
            bytes[i..i + f.len()].copy_from_slice(t);
            i += f.len();
        } else {
            i += 1;
        }
    }
    bytes
}

/// Sets the "encrypted" flag (general purpose bit 0) on every entry, in the
/// local headers and the central directory, as an encrypting zip tool would.
pub fn mark_encrypted(mut bytes: Vec<u8>) -> Vec<u8> {
    let mut i = 0;
    while i + 10 <= bytes.len() {
        match &bytes[i..i + 4] {
            [0x50, 0x4b, 0x03, 0x04] => {
                bytes[i + 6] |= 1;
                i += 4;
            }
            [0x50, 0x4b, 0x01, 0x02] => {
                bytes[i + 8] |= 1;
                i += 4;
            }
            _ => i += 1,
        }
    }
    bytes
}

/// Incompressible bytes (xorshift), so zips are as large as their content.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bytes drawn from eight symbols: deflate packs them about 2.3:1 and
/// unpacks them a little slower than a built binary (about 385 against
/// 450 MB/s out for this project's release binary, measured with zlib-rs on
/// its AVX2 path on the bench machine).
pub fn compressible(len: usize, seed: u64) -> Vec<u8> {
    noise(len, seed)
        .into_iter()
        .map(|b| b"\0\x01\x48\x89\x8beflo"[(b & 7) as usize])
        .collect()
}

/// One entry of a zip crafted byte by byte with [`RawEntry::local_header`],
/// [`RawEntry::central_record`] and [`end_record`]: every field is public,
/// so a test can make the local header and the central record disagree.
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// The name's bytes.
    pub name: Vec<u8>,
    /// General purpose flags (bit 3: a data descriptor follows the data).
    pub flags: u16,
    /// 0 stored, 8 deflated.
    pub method: u16,
    /// CRC-32 of the decoded bytes.
    pub crc32: u32,
    /// The data as stored in the zip (compressed, if deflated).
    pub data: Vec<u8>,
    /// The compressed size the headers give.
    pub compressed: u32,
    /// The decoded size the headers give.
    pub size: u32,
}

impl RawEntry {
    /// `content` stored as it is.
    pub fn stored(name: &str, content: &[u8]) -> Self {
        RawEntry {
            name: name.as_bytes().to_vec(),
            flags: 0,
            method: 0,
            crc32: crc32(content),
            data: content.to_vec(),
            compressed: content.len() as u32,
            size: content.len() as u32,
        }
    }

    /// `content` deflated.
    pub fn deflated(name: &str, content: &[u8]) -> Self {
        let data = deflate(content);
        RawEntry {
            name: name.as_bytes().to_vec(),
            flags: 0,
            method: 8,
            crc32: crc32(content),
            compressed: data.len() as u32,
            size: content.len() as u32,
            data,
        }
    }

    /// The local header (no extra field) followed by the data.
    pub fn local_header(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        b.extend_from_slice(&20u16.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.method.to_le_bytes());
        b.extend_from_slice(&[0, 0, 0x21, 0]); // time, date (1980-01-01)
        b.extend_from_slice(&self.crc32.to_le_bytes());
        b.extend_from_slice(&self.compressed.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.name);
        b.extend_from_slice(&self.data);
        b
    }

    /// The central record for a local header at `offset` (unix, mode 0644).
    pub fn central_record(&self, offset: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        b.extend_from_slice(&((3u16 << 8) | 20).to_le_bytes()); // made by unix
        b.extend_from_slice(&20u16.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.method.to_le_bytes());
        b.extend_from_slice(&[0, 0, 0x21, 0]);
        b.extend_from_slice(&self.crc32.to_le_bytes());
        b.extend_from_slice(&self.compressed.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // extra, comment, disk, internal
        b.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&self.name);
        b
    }
}

/// An end of central directory record: `count` records, a central
/// directory of `cd_size` bytes at `cd_offset`, and `comment`.
pub fn end_record(count: u16, cd_size: u32, cd_offset: u32, comment: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]); // disks
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&cd_size.to_le_bytes());
    b.extend_from_slice(&cd_offset.to_le_bytes());
    b.extend_from_slice(&(comment.len() as u16).to_le_bytes());
    b.extend_from_slice(comment);
    b
}

/// A ZIP64 end record and its locator, for a zip whose ZIP64 end record
/// starts at `at`: `count` records, `cd_size` bytes at `cd_offset`.
pub fn zip64_end(count: u64, cd_size: u64, cd_offset: u64, at: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    b.extend_from_slice(&44u64.to_le_bytes());
    b.extend_from_slice(&45u16.to_le_bytes());
    b.extend_from_slice(&45u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]); // disks
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&cd_size.to_le_bytes());
    b.extend_from_slice(&cd_offset.to_le_bytes());
    b.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&at.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b
}

/// The parts of a zip of `entries`, laid out as a zip writer lays them
/// out: the local headers with their data, back to back, then the central
/// records. Join them (`parts.zip()`) or rearrange them.
#[derive(Debug, Clone)]
pub struct RawParts {
    /// Each entry's local header and data.
    pub locals: Vec<Vec<u8>>,
    /// Each entry's central record, pointing at its local header.
    pub centrals: Vec<Vec<u8>>,
}

impl RawParts {
    /// The parts of `entries`, each local header right after the previous data.
    pub fn new(entries: &[RawEntry]) -> Self {
        let locals: Vec<Vec<u8>> = entries.iter().map(RawEntry::local_header).collect();
        let mut offset = 0;
        let centrals = entries
            .iter()
            .zip(&locals)
            .map(|(e, l)| {
                let c = e.central_record(offset);
                offset += l.len() as u32;
                c
            })
            .collect();
        RawParts { locals, centrals }
    }

    /// Bytes of all local headers and data.
    pub fn locals_len(&self) -> usize {
        self.locals.iter().map(Vec::len).sum()
    }

    /// Bytes of all central records.
    pub fn centrals_len(&self) -> usize {
        self.centrals.iter().map(Vec::len).sum()
    }

    /// The valid zip: locals, central directory, end record.
    pub fn zip(&self) -> Vec<u8> {
        let mut b = self.locals.concat();
        b.extend(self.centrals.concat());
        b.extend(end_record(
            self.centrals.len() as u16,
            self.centrals_len() as u32,
            self.locals_len() as u32,
            b"",
        ));
        b
    }
}

/// The CRC-32 (IEEE) of `data`, as zip records it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// `data` as a raw deflate stream (the bytes a zip stores for it).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let zip = ZipBuilder::new().file("x", data.to_vec()).build();
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).expect("own zip");
    let mut raw = archive.by_index_raw(0).expect("entry");
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut raw, &mut out).expect("raw data");
    out
}
