//! Real `.so` plugins, compiled once per test run from the example crates in
//! `harness/plugins/` (Rust `cdylib`s exporting the ABI v1 descriptor), and
//! variants of the C example `harness/c-plugin/plugin.c` built with `cc`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The example plugins: crate directory name, plugin type directory, exported symbol.
pub const EXAMPLES: [(&str, &str, &str); 3] = [
    ("random", "sources", "Random"),
    ("print", "sinks", "Print"),
    ("echo", "functions", "Echo"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The target directory used for the example plugins (separate from the
/// outer build, so a test can build them while `cargo test` runs).
pub fn target_dir() -> PathBuf {
    workspace_root().join("target").join("example-plugins")
}

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds every example plugin (once per process) and returns the directory
/// holding `libplugin_{name}.so`.
pub fn build_examples() -> Result<PathBuf, String> {
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(workspace_root())
                .arg("build")
                .arg("--quiet")
                .env("CARGO_TARGET_DIR", target_dir());
            for (name, _, _) in EXAMPLES {
                cmd.arg("-p").arg(format!("plugin-{name}"));
            }
            let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building the example plugins failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(target_dir().join("debug"))
        })
        .clone()
}

/// The bytes of example plugin `name` (`random`, `print` or `echo`).
pub fn example_so(name: &str) -> Vec<u8> {
    let dir = build_examples().expect("example plugins build");
    let path = dir.join(format!("libplugin_{name}.so"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A variant of the C example plugin (`harness/c-plugin/plugin.c`, built
/// against `docs/kuiper_plugin.h`): the exported symbol and the descriptor's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CPlugin {
    /// The exported entry point, e.g. `Cprint`.
    pub symbol: String,
    /// The descriptor's `name`.
    pub name: String,
    /// The descriptor's `kind` (0 source, 1 sink, 2 function).
    pub kind: u32,
    /// The descriptor's `version`.
    pub version: String,
    /// The descriptor's `abi_version`.
    pub abi: u32,
    /// `PLUGIN_DEFECT`: 0 none, 1 an initialiser that aborts, 2 a descriptor
    /// whose name is a wild pointer.
    pub defect: u32,
}

impl CPlugin {
    /// Plugin `name` of `kind`, version `version`, exporting `Name` (ABI v1).
    pub fn new(name: &str, kind: u32, version: &str) -> Self {
        let mut chars = name.chars();
        let symbol = match chars.next() {
            Some(c) => c.to_uppercase().chain(chars).collect(),
            None => String::new(),
        };
        CPlugin {
            symbol,
            name: name.to_string(),
            kind,
            version: version.to_string(),
            abi: 1,
            defect: 0,
        }
    }

    /// Compiles this variant with `cc -shared -fPIC` (or `$CC`), once, and
    /// returns the library's path.
    pub fn build(&self) -> Result<PathBuf, String> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !ok(&self.symbol) || !ok(&self.name) || !(self.version.is_empty() || ok(&self.version)) {
            return Err(format!("unsupported characters in {self:?}"));
        }
        // One build at a time in this process; across processes the
        // temporary name is unique and the rename atomic.
        static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = target_dir().join("c");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let out = dir.join(format!(
            "lib{}-{}-{}-{}-{}-{}.so",
            self.symbol, self.name, self.kind, self.version, self.abi, self.defect
        ));
        if out.exists() {
            return Ok(out);
        }
        let root = workspace_root();
        let tmp = dir.join(format!(".{}.{}.tmp", self.symbol, std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let output = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror"])
            .arg("-I")
            .arg(root.join("docs"))
            .arg(format!("-DPLUGIN_SYMBOL={}", self.symbol))
            .arg(format!("-DPLUGIN_NAME=\"{}\"", self.name))
            .arg(format!("-DPLUGIN_KIND={}u", self.kind))
            .arg(format!("-DPLUGIN_VERSION=\"{}\"", self.version))
            .arg(format!("-DPLUGIN_ABI={}u", self.abi))
            .arg(format!("-DPLUGIN_DEFECT={}", self.defect))
            .arg("-o")
            .arg(&tmp)
            .arg(root.join("harness/c-plugin/plugin.c"))
            .output()
            .map_err(|e| format!("cannot run {cc}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{cc} failed to build the C plugin:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        std::fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
        Ok(out)
    }

    /// The bytes of this variant's library.
    pub fn so(&self) -> Vec<u8> {
        let path = self.build().expect("C plugin builds");
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }
}

/// A position-independent executable (`cc -fPIE -pie`, or `$CC`) that
/// exports `symbol`: an ELF `ET_DYN` file with `DF_1_PIE` set, which glibc's
/// `dlopen` refuses ("cannot dynamically load position-independent
/// executable"). Built once; returns its bytes.
pub fn pie_executable(symbol: &str) -> Vec<u8> {
    assert!(
        !symbol.is_empty()
            && symbol
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "unsupported symbol {symbol:?}"
    );
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = target_dir().join("c");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let out = dir.join(format!("pie-{symbol}"));
    if !out.exists() {
        let src = dir.join(format!(".pie-{symbol}.{}.c", std::process::id()));
        let tmp = dir.join(format!(".pie-{symbol}.{}.tmp", std::process::id()));
        std::fs::write(
            &src,
            format!(
                "int {symbol}(void) {{ return 1; }}\nint main(void) {{ return {symbol}() - 1; }}\n"
            ),
        )
        .expect("write the PIE's source");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let output = Command::new(&cc)
            .args(["-fPIE", "-pie", "-O1", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
        let _ = std::fs::remove_file(&src);
        assert!(
            output.status.success(),
            "{cc} failed to build a PIE:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    }
    std::fs::read(&out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()))
}

/// Where the program headers of a little-endian ELF64 file start, each's
/// size, and how many there are.
fn program_headers(elf: &[u8]) -> (usize, usize, usize) {
    assert_eq!(&elf[..6], b"\x7fELF\x02\x01", "a little-endian ELF64 file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let offset = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    (offset, u16_at(0x36), u16_at(0x38))
}

/// `elf` (a little-endian ELF64 library) with no program headers
/// (`e_phoff` and `e_phnum` 0).
pub fn without_program_headers(mut elf: Vec<u8>) -> Vec<u8> {
    program_headers(&elf);
    elf[0x20..0x28].fill(0);
    elf[0x38..0x3a].fill(0);
    elf
}

/// `elf` (a little-endian ELF64 library) with its last `PT_LOAD` segment
/// moved to start one page past the end of the file.
pub fn with_segment_past_the_end(mut elf: Vec<u8>) -> Vec<u8> {
    const PT_LOAD: u32 = 1;
    let (offset, size, count) = program_headers(&elf);
    let at = (0..count)
        .rev()
        .map(|i| offset + i * size)
        .find(|&at| u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == PT_LOAD)
        .expect("a PT_LOAD segment");
    let past = (elf.len() as u64 + 4096).to_le_bytes();
    elf[at + 8..at + 16].copy_from_slice(&past);
    elf
}
