//! The zip's structure, checked so that every zip reader sees the same
//! entries: one end record, at the very end, agreeing with its ZIP64
//! record; a central directory holding exactly the records it counts, in
//! exactly the bytes it declares; each local header repeating its central
//! record; and the entries, then the central directory, tiling the file
//! from its first byte with nothing between them and nothing overlapping.
//! See `docs/zip-rules.md`.

use std::io::{self, Read, Seek, SeekFrom};

use super::PackageError;

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;

/// The end record's size without its comment.
const END_LEN: u64 = 22;
/// The longest comment an end record can have.
const MAX_COMMENT: u64 = 0xffff;

/// General purpose flag: the entry is encrypted.
pub(super) const FLAG_ENCRYPTED: u16 = 1;
/// General purpose flag: crc and sizes follow the data, in a descriptor.
pub(super) const FLAG_DESCRIPTOR: u16 = 1 << 3;

/// One entry as its central record (checked against its local header) gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    /// The name's bytes.
    pub name: Vec<u8>,
    /// General purpose flags.
    pub flags: u16,
    /// The compression method's number (0 stored, 8 deflate).
    pub method: u16,
    /// CRC-32 of the decoded bytes.
    pub crc32: u32,
    /// Bytes of compressed data.
    pub compressed: u64,
    /// Bytes it decodes to.
    pub size: u64,
    /// Where its local header starts.
    pub header_start: u64,
}

impl Record {
    fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn refuse(message: String) -> PackageError {
    PackageError::Structure(message)
}

/// The fields of a ZIP64 extended information extra field (id 1), in its
/// order, for the ones whose 32-bit (or 16-bit disk) field is saturated:
/// uncompressed size, compressed size, local header offset.
pub(super) fn zip64_values(
    extra: &[u8],
    wanted: [bool; 3],
) -> Result<[Option<u64>; 3], &'static str> {
    let mut out = [None; 3];
    if !wanted.iter().any(|&w| w) {
        return Ok(out);
    }
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at), usize::from(u16_at(extra, at + 2)));
        let body = extra
            .get(at + 4..at + 4 + len)
            .ok_or("an extra field runs past its header")?;
        if id == 1 {
            let mut i = 0;
            for (slot, want) in out.iter_mut().zip(wanted) {
                if want {
                    let v = body
                        .get(i..i + 8)
                        .ok_or("its ZIP64 extra field is too short")?;
                    *slot = Some(u64::from_le_bytes(v.try_into().expect("8 bytes")));
                    i += 8;
                }
            }
            return Ok(out);
        }
        at += 4 + len;
    }
    Err("its sizes are saturated (0xFFFFFFFF) but it has no ZIP64 extra field")
}

/// A local header: its fixed part, name and extra field.
pub(super) struct Local {
    pub flags: u16,
    pub method: u16,
    pub crc32: u32,
    pub compressed: u64,
    pub size: u64,
    pub name: Vec<u8>,
    /// It has a ZIP64 extra field (its descriptor, if any, has 8-byte sizes).
    pub zip64: bool,
    /// Bytes of the header, fixed part, name and extra field.
    pub len: u64,
}

/// Reads a local header from `r`; `None` at anything else (the central
/// directory's start, the end of the stream).
pub(super) fn read_local(r: &mut impl Read) -> io::Result<Option<Result<Local, &'static str>>> {
    let mut fixed = [0u8; 30];
    match r.read_exact(&mut fixed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if u32_at(&fixed, 0) != LOCAL {
        return Ok(None);
    }
    let (n, m) = (
        usize::from(u16_at(&fixed, 26)),
        usize::from(u16_at(&fixed, 28)),
    );
    let mut rest = vec![0u8; n + m];
    r.read_exact(&mut rest)?;
    let extra = rest.split_off(n);
    let (mut size, mut compressed) = (u64::from(u32_at(&fixed, 22)), u64::from(u32_at(&fixed, 18)));
    let saturated = [size == 0xffff_ffff, compressed == 0xffff_ffff, false];
    let zip64 = has_zip64_field(&extra);
    match zip64_values(&extra, saturated) {
        Ok([s, c, _]) => {
            size = s.unwrap_or(size);
            compressed = c.unwrap_or(compressed);
        }
        Err(e) => return Ok(Some(Err(e))),
    }
    Ok(Some(Ok(Local {
        flags: u16_at(&fixed, 6),
        method: u16_at(&fixed, 8),
        crc32: u32_at(&fixed, 14),
        compressed,
        size,
        name: rest,
        zip64,
        len: 30 + (n + m) as u64,
    })))
}

fn has_zip64_field(extra: &[u8]) -> bool {
    let mut at = 0;
    while at + 4 <= extra.len() {
        if u16_at(extra, at) == 1 {
            return true;
        }
        at += 4 + usize::from(u16_at(extra, at + 2));
    }
    false
}

/// The end record, resolved with its ZIP64 record if there is one.
struct End {
    entries: u64,
    cd_size: u64,
    cd_offset: u64,
    /// Where the central directory must end: the ZIP64 end record, or the end record.
    cd_end: u64,
}

/// Checks the structure of the zip `r` of `len` bytes (see the module
/// docs) and returns its entries' central records, in central directory
/// order. `max_entries` bounds what is read.
pub(super) fn check<R: Read + Seek>(
    r: &mut R,
    len: u64,
    max_entries: usize,
) -> Result<Vec<Record>, PackageError> {
    let io_err = |e: io::Error| PackageError::NotAZip(e.to_string());
    let end = read_end(r, len)?;
    if end.entries > max_entries as u64 {
        return Err(PackageError::TooManyEntries(max_entries));
    }
    if end.cd_offset.checked_add(end.cd_size) != Some(end.cd_end) {
        return Err(refuse(match end.cd_offset.checked_add(end.cd_size) {
            Some(cd_end) if cd_end < end.cd_end => format!(
                "{} bytes between the central directory (bytes {}..{cd_end}, as its end record gives it) and the end record belong to no record",
                end.cd_end - cd_end,
                end.cd_offset
            ),
            _ => format!(
                "the central directory's offset and size ({} + {}) run past its end record at byte {}",
                end.cd_offset, end.cd_size, end.cd_end
            ),
        }));
    }

    // The central directory, record by record, over exactly its bytes.
    r.seek(SeekFrom::Start(end.cd_offset)).map_err(io_err)?;
    let mut cd = io::BufReader::new(r.by_ref().take(end.cd_size));
    let mut records = Vec::new();
    let mut read: u64 = 0;
    while read < end.cd_size {
        if records.len() as u64 == end.entries {
            return Err(refuse(format!(
                "the central directory holds more records than the {} its end record counts (unzip and Python's zipfile would list entries these checks do not see)",
                end.entries
            )));
        }
        let mut fixed = [0u8; 46];
        cd.read_exact(&mut fixed)
            .map_err(|_| cd_size_mismatch(&end, records.len()))?;
        if u32_at(&fixed, 0) != CENTRAL {
            return Err(cd_size_mismatch(&end, records.len()));
        }
        let (n, m, k) = (
            usize::from(u16_at(&fixed, 28)),
            usize::from(u16_at(&fixed, 30)),
            usize::from(u16_at(&fixed, 32)),
        );
        let mut rest = vec![0u8; n + m + k];
        cd.read_exact(&mut rest)
            .map_err(|_| cd_size_mismatch(&end, records.len()))?;
        read += 46 + rest.len() as u64;
        let name = rest[..n].to_vec();
        let extra = &rest[n..n + m];
        let (size, compressed, offset, disk) = (
            u64::from(u32_at(&fixed, 24)),
            u64::from(u32_at(&fixed, 20)),
            u64::from(u32_at(&fixed, 42)),
            u16_at(&fixed, 34),
        );
        let values = zip64_values(
            extra,
            [
                size == 0xffff_ffff,
                compressed == 0xffff_ffff,
                offset == 0xffff_ffff,
            ],
        )
        .map_err(|e| refuse(format!("entry {:?}: {e}", String::from_utf8_lossy(&name))))?;
        if disk != 0 && disk != 0xffff {
            return Err(refuse(
                "split (multi-disk) zips are not supported".to_string(),
            ));
        }
        records.push(Record {
            name,
            flags: u16_at(&fixed, 8),
            method: u16_at(&fixed, 10),
            crc32: u32_at(&fixed, 16),
            compressed: values[1].unwrap_or(compressed),
            size: values[0].unwrap_or(size),
            header_start: values[2].unwrap_or(offset),
        });
    }
    drop(cd);
    if records.len() as u64 != end.entries {
        return Err(cd_size_mismatch(&end, records.len()));
    }

    // Each entry's local header and data, in file order, tiling the bytes
    // before the central directory.
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| records[i].header_start);
    let mut pos: u64 = 0;
    let mut previous: Option<&Record> = None;
    for &i in &order {
        let rec = &records[i];
        if rec.header_start != pos {
            return Err(not_tiled(previous, Some(rec), pos, rec.header_start));
        }
        if rec.header_start.saturating_add(30) > end.cd_offset {
            return Err(into_cd(rec));
        }
        r.seek(SeekFrom::Start(rec.header_start)).map_err(io_err)?;
        let local = match read_local(&mut r.by_ref().take(end.cd_offset - rec.header_start)) {
            Ok(Some(Ok(local))) => local,
            Ok(Some(Err(e))) => {
                return Err(refuse(format!(
                    "entry {:?}: its local header: {e}",
                    rec.display_name()
                )))
            }
            Ok(None) | Err(_) => {
                return Err(refuse(format!(
                    "entry {:?}: no local header where its central record points (byte {})",
                    rec.display_name(),
                    rec.header_start
                )))
            }
        };
        compare(rec, &local)?;
        let data_end = rec
            .header_start
            .checked_add(local.len)
            .and_then(|p| p.checked_add(rec.compressed))
            .filter(|&p| p <= end.cd_offset)
            .ok_or_else(|| into_cd(rec))?;
        pos = data_end;
        if rec.flags & FLAG_DESCRIPTOR != 0 {
            r.seek(SeekFrom::Start(data_end)).map_err(io_err)?;
            let mut desc = Vec::with_capacity(24);
            r.by_ref()
                .take(24.min(end.cd_offset - data_end))
                .read_to_end(&mut desc)
                .map_err(io_err)?;
            pos += descriptor_len(rec, &local, &desc)?;
        }
        previous = Some(rec);
    }
    if pos != end.cd_offset {
        return Err(not_tiled(previous, None, pos, end.cd_offset));
    }
    Ok(records)
}

fn cd_size_mismatch(end: &End, records: usize) -> PackageError {
    refuse(format!(
        "the central directory's {} bytes do not hold the {} records its end record counts ({records} read)",
        end.cd_size, end.entries
    ))
}

fn into_cd(rec: &Record) -> PackageError {
    refuse(format!(
        "entry {:?}'s data overlaps the central directory",
        rec.display_name()
    ))
}

/// The message for the entries `before` and `after` (`None`: the file's
/// start, or the central directory) when `after` starts at `at`, not at
/// `pos` where `before` ends.
fn not_tiled(before: Option<&Record>, after: Option<&Record>, pos: u64, at: u64) -> PackageError {
    let name = |r: Option<&Record>, none: &str| match r {
        Some(r) => format!("entry {:?}", r.display_name()),
        None => none.to_string(),
    };
    let (before, after) = (
        name(before, "the start of the file"),
        name(after, "the central directory"),
    );
    refuse(if at < pos {
        format!("{after} starts at byte {at}, inside {before} (which ends at byte {pos}): entries overlap")
    } else {
        format!(
            "{} bytes between {before} and {after} (bytes {pos}..{at}) belong to no entry; zip readers that read entries front to back would read them",
            at - pos
        )
    })
}

/// Checks that a local header repeats its central record.
fn compare(rec: &Record, local: &Local) -> Result<(), PackageError> {
    let differs = |what: &str| {
        Err(refuse(format!(
            "entry {:?}: its local header gives a different {what} than its central record",
            rec.display_name()
        )))
    };
    if local.name != rec.name {
        return differs("name");
    }
    if local.method != rec.method {
        return differs("compression method");
    }
    if (local.flags ^ rec.flags) & (FLAG_ENCRYPTED | FLAG_DESCRIPTOR) != 0 {
        return differs("encryption or data descriptor flag");
    }
    // With a descriptor, the local header may give zeros instead.
    let matches = |l: u64, c: u64| l == c || (local.flags & FLAG_DESCRIPTOR != 0 && l == 0);
    if !matches(u64::from(local.crc32), u64::from(rec.crc32)) {
        return differs("CRC-32");
    }
    if !matches(local.compressed, rec.compressed) {
        return differs("compressed size");
    }
    if !matches(local.size, rec.size) {
        return differs("uncompressed size");
    }
    Ok(())
}

/// The length of the data descriptor `desc` (the bytes after an entry's
/// data), which must repeat the central record's CRC-32 and sizes.
fn descriptor_len(rec: &Record, local: &Local, desc: &[u8]) -> Result<u64, PackageError> {
    let signed = desc.len() >= 4 && u32_at(desc, 0) == DESCRIPTOR;
    let at = if signed { 4 } else { 0 };
    let sizes = if local.zip64 { 8 } else { 4 };
    let needed = at + 4 + 2 * sizes;
    let fields = desc.get(at..needed).map(|d| {
        let (c, s) = if sizes == 8 {
            (u64_at(d, 4), u64_at(d, 12))
        } else {
            (u64::from(u32_at(d, 4)), u64::from(u32_at(d, 8)))
        };
        (u32_at(d, 0), c, s)
    });
    if fields != Some((rec.crc32, rec.compressed, rec.size)) {
        return Err(refuse(format!(
            "entry {:?}: its data descriptor is missing or gives a different CRC-32 or sizes than its central record",
            rec.display_name()
        )));
    }
    Ok(needed as u64)
}

/// Finds and checks the end record: the last one in the file, ending
/// exactly at the file's end (no data after it, no second end record in its
/// comment), and its ZIP64 record agreeing with it.
fn read_end<R: Read + Seek>(r: &mut R, len: u64) -> Result<End, PackageError> {
    let io_err = |e: io::Error| PackageError::NotAZip(e.to_string());
    let tail_len = len.min(END_LEN + MAX_COMMENT + 20);
    r.seek(SeekFrom::Start(len - tail_len)).map_err(io_err)?;
    let mut tail = vec![0u8; tail_len as usize];
    r.read_exact(&mut tail).map_err(io_err)?;
    let sig = END.to_le_bytes();
    let found = (0..tail.len().saturating_sub(END_LEN as usize - 1))
        .rev()
        .find(|&i| tail[i..i + 4] == sig);
    let Some(at) = found else {
        return Err(PackageError::NotAZip(
            "no end of central directory record".to_string(),
        ));
    };
    let e = &tail[at..at + END_LEN as usize];
    let start = len - tail_len + at as u64;
    let comment = u64::from(u16_at(e, 20));
    if start + END_LEN + comment != len {
        return Err(refuse(format!(
            "its last end of central directory record (at byte {start}) has a {comment}-byte comment but {} bytes follow it: data after the zip, or an end record hidden in a comment, which zip readers find differently",
            len - start - END_LEN
        )));
    }
    let (disk, cd_disk, here, entries, cd_size, cd_offset) = (
        u16_at(e, 4),
        u16_at(e, 6),
        u16_at(e, 8),
        u16_at(e, 10),
        u32_at(e, 12),
        u32_at(e, 16),
    );
    let mut end = End {
        entries: u64::from(entries),
        cd_size: u64::from(cd_size),
        cd_offset: u64::from(cd_offset),
        cd_end: start,
    };
    let locator = (at >= 20 && u32_at(&tail, at - 20) == ZIP64_LOCATOR).then(|| &tail[at - 20..at]);
    let Some(locator) = locator else {
        if disk != 0 || cd_disk != 0 || here != entries {
            return Err(refuse(
                "split (multi-disk) zips are not supported".to_string(),
            ));
        }
        return Ok(end);
    };
    // ZIP64: the record the locator points at ends where the locator starts.
    let locator_start = start - 20;
    let z_at = u64_at(locator, 8);
    if u32_at(locator, 4) != 0 || u32_at(locator, 16) > 1 {
        return Err(refuse(
            "split (multi-disk) zips are not supported".to_string(),
        ));
    }
    let mut z = [0u8; 56];
    if z_at.checked_add(56).is_none_or(|e| e > locator_start) {
        return Err(refuse(
            "its ZIP64 end record is not where its locator points".to_string(),
        ));
    }
    r.seek(SeekFrom::Start(z_at)).map_err(io_err)?;
    r.read_exact(&mut z).map_err(io_err)?;
    if u32_at(&z, 0) != ZIP64_END
        || z_at
            .checked_add(12)
            .and_then(|p| p.checked_add(u64_at(&z, 4)))
            != Some(locator_start)
    {
        return Err(refuse("its ZIP64 end record is not where its locator points, or its size does not reach the locator".to_string()));
    }
    let (z_disk, z_cd_disk, z_here, z_entries, z_size, z_offset) = (
        u32_at(&z, 16),
        u32_at(&z, 20),
        u64_at(&z, 24),
        u64_at(&z, 32),
        u64_at(&z, 40),
        u64_at(&z, 48),
    );
    let agrees = |short: u64, saturated: u64, long: u64| short == saturated || short == long;
    if !agrees(u64::from(entries), 0xffff, z_entries)
        || !agrees(u64::from(here), 0xffff, z_here)
        || !agrees(u64::from(cd_size), 0xffff_ffff, z_size)
        || !agrees(u64::from(cd_offset), 0xffff_ffff, z_offset)
    {
        return Err(refuse(format!(
            "its end record (entries {entries}, central directory {cd_size} bytes at {cd_offset}) and its ZIP64 end record (entries {z_entries}, {z_size} bytes at {z_offset}) disagree"
        )));
    }
    if z_disk != 0 || z_cd_disk != 0 || z_here != z_entries {
        return Err(refuse(
            "split (multi-disk) zips are not supported".to_string(),
        ));
    }
    end = End {
        entries: z_entries,
        cd_size: z_size,
        cd_offset: z_offset,
        cd_end: z_at,
    };
    Ok(end)
}
