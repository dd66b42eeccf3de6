//! A library's build fingerprint: the C library it needs and, for Go
//! plugins, its Go build information ([`super::buildinfo`]). Read at publish
//! from the library's bytes as they stream by (with the ELF check of
//! [`super::elf`]), and on a node from the node's eKuiper executable.
//!
//! A library streams by in file order, and its section headers come last, so
//! the places that matter are found on the way and confirmed at the end:
//! - the Go build information starts with a magic at a 16-byte boundary in a
//!   writable segment; each such place is kept (at most [`MAX_CANDIDATES`],
//!   [`CANDIDATE_BYTES`] each), and the one where a section starts is read;
//! - the C library is the interpreter (`ld-musl-*`, `ld-linux-*`) or a needed
//!   library (`libc.so.6`, `libc.musl-*`), whose names are in the dynamic
//!   string table, somewhere in a read-only segment before the dynamic
//!   segment says where: every NUL-started string that names a C library or
//!   loader is kept with its place, and the needed names are looked up there.

use std::collections::BTreeMap;
use std::ops::Range;

use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};
use object::ReadRef;
use serde::{Deserialize, Serialize};

use super::buildinfo::{self, GoBuild, MAGIC};

/// Most places with the Go build information's magic kept.
pub const MAX_CANDIDATES: usize = 4;
/// Bytes kept from each such place (the build information's largest size).
pub const CANDIDATE_BYTES: usize = 256 << 10;
/// Most C library names kept.
const MAX_NAMES: usize = 64;
/// Longest name kept.
const MAX_NAME: usize = 64;
/// Bytes of the previous piece kept, so matches across pieces are found.
const TAIL: usize = 2 * MAX_NAME;

/// The C library a library needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Libc {
    /// GNU libc (`libc.so.6`, `ld-linux-*`).
    Glibc,
    /// musl (`libc.musl-*`, `ld-musl-*`): Alpine, eKuiper's default images.
    Musl,
    /// No C library at all.
    None,
}

impl std::fmt::Display for Libc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Libc::Glibc => "glibc",
            Libc::Musl => "musl",
            Libc::None => "no C library",
        })
    }
}

/// What a library was built with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildFingerprint {
    /// The C library it needs.
    pub libc: Libc,
    /// Its Go build information; `None` when it was not built by Go (a C or
    /// Rust library of the plugin ABI).
    pub go: Option<GoBuild>,
}

/// The places found while a library streamed by.
#[derive(Debug, Default)]
pub(super) struct Scanner {
    writable: Vec<Range<u64>>,
    readonly: Vec<Range<u64>>,
    pos: u64,
    tail: Vec<u8>,
    magic_upto: u64,
    names_upto: u64,
    candidates: Vec<(u64, Vec<u8>)>,
    too_many: bool,
    names: BTreeMap<u64, String>,
}

impl Scanner {
    /// A scanner for the library whose headers are in `prefix`.
    pub(super) fn plan(prefix: &[u8]) -> Scanner {
        let mut s = Scanner::default();
        match object::FileKind::parse(prefix) {
            Ok(object::FileKind::Elf64) => {
                s.segments::<object::elf::FileHeader64<object::Endianness>>(prefix)
            }
            Ok(object::FileKind::Elf32) => {
                s.segments::<object::elf::FileHeader32<object::Endianness>>(prefix)
            }
            _ => {}
        }
        s
    }

    fn segments<H: FileHeader<Endian = object::Endianness>>(&mut self, prefix: &[u8]) {
        let Ok(header) = H::parse(prefix) else { return };
        let Ok(endian) = header.endian() else { return };
        let Ok(phdrs) = header.program_headers(endian, prefix) else {
            return;
        };
        for p in phdrs {
            if p.p_type(endian) != object::elf::PT_LOAD {
                continue;
            }
            let (offset, size) = p.file_range(endian);
            let range = offset..offset.saturating_add(size);
            let flags = p.p_flags(endian);
            if flags & object::elf::PF_W != 0 {
                self.writable.push(range);
            } else if flags & object::elf::PF_X == 0 {
                self.readonly.push(range);
            }
        }
    }

    /// Takes the bytes at `start..start + bytes.len()`, which follow the last ones taken.
    pub(super) fn observe(&mut self, start: u64, bytes: &[u8]) {
        let end = start + bytes.len() as u64;
        self.pos = end;
        for (at, kept) in &mut self.candidates {
            let want = (*at + CANDIDATE_BYTES as u64).min(end);
            let from = *at + kept.len() as u64;
            if from >= start && from < want {
                kept.extend_from_slice(&bytes[(from - start) as usize..(want - start) as usize]);
            }
        }
        let mut window = std::mem::take(&mut self.tail);
        let wstart = start - window.len() as u64;
        window.extend_from_slice(bytes);
        self.find_magic(&window, wstart);
        self.find_names(&window, wstart, false);
        let keep = window.len().min(TAIL);
        self.tail = window[window.len() - keep..].to_vec();
    }

    fn find_magic(&mut self, window: &[u8], wstart: u64) {
        let wend = wstart + window.len() as u64;
        let mut at = self.magic_upto.max(wstart).next_multiple_of(16);
        while at + MAGIC.len() as u64 <= wend {
            let i = (at - wstart) as usize;
            if window[i] == MAGIC[0]
                && &window[i..i + MAGIC.len()] == MAGIC
                && self.writable.iter().any(|r| r.contains(&at))
            {
                if self.candidates.len() == MAX_CANDIDATES {
                    self.too_many = true;
                } else {
                    let kept = window[i..window.len().min(i + CANDIDATE_BYTES)].to_vec();
                    self.candidates.push((at, kept));
                }
            }
            at += 16;
        }
        self.magic_upto = at;
    }

    fn find_names(&mut self, window: &[u8], wstart: u64, last: bool) {
        let wend = wstart + window.len() as u64;
        // A name is decided once its NUL, or MAX_NAME bytes after it, are in the window.
        let decided = if last {
            wend
        } else {
            wend.saturating_sub(MAX_NAME as u64)
        };
        let mut at = self.names_upto.max(wstart + 1);
        while at < decided {
            let i = (at - wstart) as usize;
            if window[i - 1] == 0
                && (window[i] == b'l')
                && self.readonly.iter().any(|r| r.contains(&at))
            {
                let rest = &window[i..window.len().min(i + MAX_NAME)];
                if let Some(n) = rest.iter().position(|&b| b == 0) {
                    let name = &rest[..n];
                    if (name.starts_with(b"libc.") || name.starts_with(b"ld-"))
                        && self.names.len() < MAX_NAMES
                    {
                        if let Ok(s) = std::str::from_utf8(name) {
                            self.names.insert(at, s.to_string());
                        }
                    }
                }
            }
            at += 1;
        }
        self.names_upto = at;
    }

    /// Settles what the last bytes left open.
    pub(super) fn finish(mut self) -> Scanned {
        let window = std::mem::take(&mut self.tail);
        let wstart = self.pos - window.len() as u64;
        if !window.is_empty() {
            self.find_names(&window, wstart, true);
        }
        Scanned {
            candidates: self.candidates,
            too_many: self.too_many,
            names: self.names,
        }
    }
}

/// What a [`Scanner`] kept.
#[derive(Debug, Default)]
pub(super) struct Scanned {
    candidates: Vec<(u64, Vec<u8>)>,
    too_many: bool,
    names: BTreeMap<u64, String>,
}

/// The fingerprint of the library read through `data` (what an
/// [`super::ElfCapture`] kept, or a whole file), with the places `scanned`.
pub(super) fn fingerprint<'data, R: ReadRef<'data>>(
    data: R,
    scanned: &Scanned,
) -> Result<BuildFingerprint, String> {
    match object::FileKind::parse(data) {
        Ok(object::FileKind::Elf64) => {
            of_class::<object::elf::FileHeader64<object::Endianness>, R>(data, scanned)
        }
        Ok(object::FileKind::Elf32) => {
            of_class::<object::elf::FileHeader32<object::Endianness>, R>(data, scanned)
        }
        _ => Err("it is not an ELF file".into()),
    }
}

fn of_class<'data, H, R>(data: R, scanned: &Scanned) -> Result<BuildFingerprint, String>
where
    H: FileHeader<Endian = object::Endianness>,
    R: ReadRef<'data>,
{
    let header = H::parse(data).map_err(|e| format!("bad ELF header: {e}"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("bad ELF header: {e}"))?;
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| format!("the program headers cannot be read ({e})"))?;
    let libc = libc_of::<H, R>(data, endian, phdrs, scanned);

    if scanned.too_many {
        return Err(format!(
            "it holds more than {MAX_CANDIDATES} copies of the Go build information's magic: a damaged or crafted library"
        ));
    }
    // The build information is where a section starts (when there are
    // section headers), as the go command reads it.
    let sections = header.section_headers(endian, data).ok();
    let chosen = scanned.candidates.iter().find(|(at, _)| match sections {
        Some(s) if !s.is_empty() => s.iter().any(|sh| {
            let (offset, _) = sh.file_range(endian).unwrap_or((u64::MAX, 0));
            offset == *at
        }),
        _ => true,
    });
    let go = match chosen {
        None => None,
        Some((_, bytes)) => Some(
            buildinfo::parse(bytes)
                .map_err(|e| format!("its Go build information is damaged: {e}"))?,
        ),
    };
    Ok(BuildFingerprint { libc, go })
}

fn libc_of<'data, H, R>(
    data: R,
    endian: object::Endianness,
    phdrs: &[H::ProgramHeader],
    scanned: &Scanned,
) -> Libc
where
    H: FileHeader<Endian = object::Endianness>,
    R: ReadRef<'data>,
{
    let classify = |name: &str| {
        let base = name.rsplit('/').next().unwrap_or(name);
        if base.starts_with("ld-musl") || base.starts_with("libc.musl") || base == "libc.so" {
            Some(Libc::Musl)
        } else if base.starts_with("ld-linux") || base.starts_with("libc.so.6") {
            Some(Libc::Glibc)
        } else {
            None
        }
    };
    // The interpreter (executables).
    for p in phdrs {
        if p.p_type(endian) == object::elf::PT_INTERP {
            if let Ok(Some(path)) = p.interpreter(endian, data) {
                if let Some(l) = std::str::from_utf8(path).ok().and_then(classify) {
                    return l;
                }
            }
        }
    }
    // The needed libraries, by their names' places in the string table.
    let Some(entries) = phdrs
        .iter()
        .find(|p| p.p_type(endian) == object::elf::PT_DYNAMIC)
        .and_then(|p| p.dynamic(endian, data).ok().flatten())
    else {
        return Libc::None;
    };
    let mut strtab = None;
    let mut needed = Vec::new();
    for d in entries {
        let tag: u64 = d.d_tag(endian).into();
        let value: u64 = d.d_val(endian).into();
        match tag {
            t if t == u64::from(object::elf::DT_NULL) => break,
            t if t == u64::from(object::elf::DT_STRTAB) => strtab = Some(value),
            t if t == u64::from(object::elf::DT_NEEDED) => needed.push(value),
            _ => {}
        }
    }
    let Some(strtab) = strtab.and_then(|addr| file_offset::<H>(endian, phdrs, addr)) else {
        return Libc::None;
    };
    for n in needed {
        let at = strtab.saturating_add(n);
        let name = scanned.names.get(&at).cloned().or_else(|| {
            data.read_bytes_at_until(at..at.saturating_add(MAX_NAME as u64), 0)
                .ok()
                .and_then(|b| std::str::from_utf8(b).ok().map(str::to_string))
        });
        if let Some(l) = name.as_deref().and_then(classify) {
            return l;
        }
    }
    Libc::None
}

/// The file offset of virtual address `addr`, from the loadable segments.
fn file_offset<H: FileHeader<Endian = object::Endianness>>(
    endian: object::Endianness,
    phdrs: &[H::ProgramHeader],
    addr: u64,
) -> Option<u64> {
    phdrs.iter().find_map(|p| {
        if p.p_type(endian) != object::elf::PT_LOAD {
            return None;
        }
        let vaddr: u64 = p.p_vaddr(endian).into();
        let (offset, size) = p.file_range(endian);
        (vaddr <= addr && addr < vaddr.saturating_add(size)).then(|| offset + (addr - vaddr))
    })
}
