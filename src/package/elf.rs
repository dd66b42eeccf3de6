//! The ELF checks of a plugin library: what a node needs to load it.
//!
//! One check, [`check_library`], runs at publish (over the parts of the
//! library an [`ElfCapture`] kept while the entry was decoded) and on the
//! node before `dlopen` (over the installed file). It reads the ELF header,
//! the program headers, the first section header when a count is kept
//! there, and the dynamic segment; the rest it checks against the file's
//! length, without reading it.

use std::ops::Range;

use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::ReadRef;

use super::fingerprint::{self, BuildFingerprint, Scanned, Scanner};

/// Bytes of the library an [`ElfCapture`] keeps from its start: the ELF
/// header and the program headers must lie within them at publish.
pub(super) const ELF_PREFIX: usize = 64 * 1024;

/// The largest dynamic segment [`check_library`] reads.
pub const MAX_DYNAMIC_BYTES: u64 = 1 << 20;

/// `DF_1_PIE` in `DT_FLAGS_1`: a position-independent executable.
const DF_1_PIE: u64 = 0x0800_0000;

/// Checks that the ELF file `data` of `len` bytes can be loaded as a shared
/// library: an ELF shared object (`ET_DYN`, not a position-independent
/// executable) whose program headers are present and lie within the file,
/// with a dynamic segment, every segment's bytes within the file, and its
/// section headers within the file. Returns its architecture name, as
/// [`machine_name`] gives it.
///
/// glibc's `dlopen` maps a truncated library's segments past the end of the
/// file, and the process dies with SIGBUS when they are touched; it refuses
/// a PIE ("cannot dynamically load position-independent executable").
pub fn check_library<'data, R: ReadRef<'data>>(data: R, len: u64) -> Result<String, String> {
    match object::FileKind::parse(data) {
        Ok(object::FileKind::Elf64) => {
            check_class::<object::elf::FileHeader64<object::Endianness>, R>(data, len)
        }
        Ok(object::FileKind::Elf32) => {
            check_class::<object::elf::FileHeader32<object::Endianness>, R>(data, len)
        }
        Ok(other) => Err(format!("it is a {other:?} file, not ELF")),
        Err(_) => Err("it does not start with an ELF header".to_string()),
    }
}

/// Whether `start..start + size` ends within `len` bytes.
fn within(start: u64, size: u64, len: u64) -> bool {
    start.checked_add(size).is_some_and(|end| end <= len)
}

/// [`check_library`] for one ELF class.
fn check_class<'data, H, R>(data: R, len: u64) -> Result<String, String>
where
    H: FileHeader<Endian = object::Endianness>,
    R: ReadRef<'data>,
{
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

    // Section headers first: an extended program header count is kept in
    // the first one.
    let shoff: u64 = header.e_shoff(endian).into();
    if shoff != 0 {
        let entsize = u64::from(header.e_shentsize(endian));
        if !within(shoff, entsize, len) {
            return Err(truncated("its section headers", shoff, entsize, len));
        }
        let count = header
            .shnum(endian, data)
            .map_err(|e| format!("the section headers cannot be read ({e})"))?;
        let size = entsize.saturating_mul(count as u64);
        if !within(shoff, size, len) {
            return Err(truncated("its section headers", shoff, size, len));
        }
    }

    let phoff: u64 = header.e_phoff(endian).into();
    let count = header
        .phnum(endian, data)
        .map_err(|e| format!("the program headers cannot be read ({e})"))?;
    if phoff == 0 || count == 0 {
        return Err(
            "it has no program headers, so there is nothing to load; build it as a shared library"
                .to_string(),
        );
    }
    let size = u64::from(header.e_phentsize(endian)).saturating_mul(count as u64);
    if !within(phoff, size, len) {
        return Err(truncated("its program headers", phoff, size, len));
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| format!("the program headers cannot be read ({e})"))?;
    let mut dynamic = None;
    for p in phdrs {
        let (offset, size) = p.file_range(endian);
        // A segment with no bytes in the file (e.g. only .bss) needs none.
        if size != 0 && !within(offset, size, len) {
            return Err(format!(
                "the file is truncated: a segment spans bytes {offset}..{} but the file has {len} bytes",
                offset.saturating_add(size),
            ));
        }
        if p.p_type(endian) == object::elf::PT_DYNAMIC && dynamic.is_none() {
            dynamic = Some(p);
        }
    }
    let dynamic = dynamic.ok_or("it has no dynamic segment")?;
    let (_, size) = dynamic.file_range(endian);
    if size > MAX_DYNAMIC_BYTES {
        return Err(format!(
            "its dynamic segment is {size} bytes, more than the {MAX_DYNAMIC_BYTES} a plugin library may have"
        ));
    }
    let entries = dynamic
        .dynamic(endian, data)
        .map_err(|e| format!("the dynamic segment cannot be read ({e})"))?
        .unwrap_or_default();
    for d in entries {
        let tag: u64 = d.d_tag(endian).into();
        if tag == u64::from(object::elf::DT_NULL) {
            break;
        }
        let value: u64 = d.d_val(endian).into();
        if tag == u64::from(object::elf::DT_FLAGS_1) && value & DF_1_PIE != 0 {
            return Err(
                "it is a position-independent executable (DF_1_PIE), which dlopen refuses to load; build it as a shared library (cdylib, -buildmode=plugin or -shared, not -pie)"
                    .to_string(),
            );
        }
    }
    Ok(machine_name(header.e_machine(endian)).to_string())
}

/// The message for `what` spanning `size` bytes from `start` in a file of `len`.
fn truncated(what: &str, start: u64, size: u64, len: u64) -> String {
    format!(
        "the file is truncated: {what} span bytes {start}..{} but the file has {len} bytes",
        start.saturating_add(size)
    )
}

/// Keeps the parts of a library [`check_library`] reads, as its bytes go
/// by in order: the first [`ELF_PREFIX`] bytes, then the dynamic segment
/// and the first section header, located from the headers in those first
/// bytes. Holds at most `ELF_PREFIX` plus [`MAX_DYNAMIC_BYTES`] plus one
/// section header, however large the library.
#[derive(Debug, Default)]
pub struct ElfCapture {
    prefix: Vec<u8>,
    /// Ranges wanted beyond the prefix, by start, with the bytes kept so far.
    ranges: Vec<(u64, u64, Vec<u8>)>,
    pos: u64,
    planned: bool,
    /// Finds the build fingerprint's places (see [`super::fingerprint`]).
    scanner: Scanner,
}

impl ElfCapture {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the library's next bytes.
    pub fn write(&mut self, mut bytes: &[u8]) {
        if !self.planned {
            let take = bytes.len().min(ELF_PREFIX - self.prefix.len());
            self.prefix.extend_from_slice(&bytes[..take]);
            self.pos += take as u64;
            bytes = &bytes[take..];
            if self.prefix.len() == ELF_PREFIX {
                self.plan();
            }
        }
        let (start, end) = (self.pos, self.pos + bytes.len() as u64);
        if self.planned && !bytes.is_empty() {
            self.scanner.observe(start, bytes);
        }
        for (from, to, kept) in &mut self.ranges {
            let (a, b) = ((*from).max(start), (*to).min(end));
            if a < b {
                kept.extend_from_slice(&bytes[(a - start) as usize..(b - start) as usize]);
            }
        }
        self.pos = end;
    }

    /// Decides which ranges past the prefix to keep, once the prefix is full.
    fn plan(&mut self) {
        self.planned = true;
        self.scanner = Scanner::plan(&self.prefix);
        self.scanner.observe(0, &self.prefix);
        let wanted = match object::FileKind::parse(&self.prefix[..]) {
            Ok(object::FileKind::Elf64) => {
                wanted::<object::elf::FileHeader64<object::Endianness>>(&self.prefix)
            }
            Ok(object::FileKind::Elf32) => {
                wanted::<object::elf::FileHeader32<object::Endianness>>(&self.prefix)
            }
            _ => Vec::new(),
        };
        let pos = self.pos;
        for r in wanted {
            if r.end <= pos || r.end - r.start > MAX_DYNAMIC_BYTES {
                continue;
            }
            // What of the range is in the prefix already.
            let kept = if r.start < pos {
                self.prefix[r.start as usize..].to_vec()
            } else {
                Vec::new()
            };
            self.ranges.push((r.start, r.end, kept));
        }
    }

    /// The library's parts, to check with [`check_library`] (`&capture.finish()`).
    pub fn finish(mut self) -> CapturedElf {
        if !self.planned {
            self.plan();
        }
        CapturedElf {
            len: self.pos,
            scanned: self.scanner.finish(),
            prefix: self.prefix,
            ranges: self
                .ranges
                .into_iter()
                .map(|(start, _, kept)| (start, kept))
                .collect(),
        }
    }
}

/// The ranges past the prefix that [`check_library`] reads, from the
/// headers in `prefix`: the dynamic segment and the first section header.
fn wanted<H: FileHeader<Endian = object::Endianness>>(prefix: &[u8]) -> Vec<Range<u64>> {
    let Ok(header) = H::parse(prefix) else {
        return Vec::new();
    };
    let Ok(endian) = header.endian() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let shoff: u64 = header.e_shoff(endian).into();
    if shoff != 0 {
        // The whole table when its count is in the header (the build
        // information is found by it), else the first header, which holds it.
        let entsize = u64::from(header.e_shentsize(endian));
        let count = u64::from(header.e_shnum(endian)).max(1);
        out.push(shoff..shoff.saturating_add(entsize.saturating_mul(count)));
    }
    if let Ok(phdrs) = header.program_headers(endian, prefix) {
        for p in phdrs {
            let t = p.p_type(endian);
            if t == object::elf::PT_DYNAMIC || t == object::elf::PT_INTERP {
                let (offset, size) = p.file_range(endian);
                out.push(offset..offset.saturating_add(size));
            }
        }
    }
    out
}

/// The parts of a library an [`ElfCapture`] kept; reads of anything else fail.
#[derive(Debug)]
pub struct CapturedElf {
    len: u64,
    scanned: Scanned,
    prefix: Vec<u8>,
    ranges: Vec<(u64, Vec<u8>)>,
}

impl CapturedElf {
    /// The library's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the library is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// [`check_library`] over these parts.
    pub fn check(&self) -> Result<String, String> {
        check_library(self, self.len)
    }

    /// The library's build fingerprint (C library, Go build information).
    pub fn fingerprint(&self) -> Result<BuildFingerprint, String> {
        fingerprint::fingerprint(self, &self.scanned)
    }

    /// [`CapturedElf::check`] and [`CapturedElf::fingerprint`]: what publish records.
    pub fn facts(&self) -> Result<LibraryFacts, String> {
        let arch = self.check()?;
        let build = self.fingerprint()?;
        Ok(LibraryFacts { arch, build })
    }

    /// The kept bytes holding `offset..offset + size`, and where they start.
    fn part(&self, offset: u64, size: u64) -> Option<(&[u8], u64)> {
        let end = offset.checked_add(size)?;
        std::iter::once((&self.prefix[..], 0))
            .chain(self.ranges.iter().map(|(s, b)| (&b[..], *s)))
            .find(|(bytes, start)| *start <= offset && end <= start + bytes.len() as u64)
    }
}

impl<'a> ReadRef<'a> for &'a CapturedElf {
    fn len(self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        let (bytes, start) = self.part(offset, size).ok_or(())?;
        let at = (offset - start) as usize;
        Ok(&bytes[at..at + size as usize])
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        let (bytes, start) = self.part(range.start, 0).ok_or(())?;
        let from = (range.start - start) as usize;
        let to = (range.end.saturating_sub(start) as usize).min(bytes.len());
        let slice = bytes.get(from..to).ok_or(())?;
        let n = slice.iter().position(|&b| b == delimiter).ok_or(())?;
        Ok(&slice[..n])
    }
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

/// What the ELF check found out about a library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryFacts {
    /// Its architecture, as [`machine_name`] names it.
    pub arch: String,
    /// What it was built with.
    pub build: BuildFingerprint,
}

/// The build fingerprint of the ELF file at `path` (a plugin library, or the
/// node's eKuiper executable), read as publish reads a library: in one pass,
/// keeping only the parts it needs.
pub fn fingerprint_file(path: &std::path::Path) -> Result<BuildFingerprint, String> {
    use std::io::Read;
    let cannot_read = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(cannot_read)?;
    let mut capture = ElfCapture::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).map_err(cannot_read)?;
        if n == 0 {
            break;
        }
        capture.write(&buf[..n]);
    }
    capture
        .finish()
        .fingerprint()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks the library file at `path` with [`check_library`], reading only
/// the parts it needs (a library of hundreds of MiB costs no more memory
/// than a small one). Returns its architecture name.
pub fn check_library_file(path: &std::path::Path) -> Result<String, String> {
    let cannot_read = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let len = file.metadata().map_err(cannot_read)?.len();
    let data = object::ReadCache::new(file);
    check_library(&data, len)
}
