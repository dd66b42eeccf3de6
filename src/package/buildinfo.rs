//! Go build information: what `go version -m` reads from a Go binary or
//! plugin's `.go.buildinfo` section (Go 1.18 and later).
//!
//! The section starts with a 32-byte header: the magic `\xff Go buildinf:`,
//! the pointer size, and flags (bit 1: the strings follow inline, as every
//! Go since 1.18 writes them). Then two strings, each a uvarint length and
//! its bytes: the Go version (`go1.26.8`) and the module information, framed
//! by 16-byte sentinels, in lines of tab-separated fields (shown with spaces):
//!
//! ```text
//! path    github.com/lf-edge/ekuiper/v2/cmd/kuiperd
//! mod    github.com/lf-edge/ekuiper/v2    v2.4.0    h1:…
//! dep    github.com/lf-edge/ekuiper/contract/v2    v2.3.1    h1:…
//! =>    github.com/yisaer/kafka-go    v0.0.0-…    h1:…        (the dep above is replaced)
//! build    -trimpath=true
//! build    CGO_ENABLED=1
//! ```
//!
//! [`parse`] is pure and total: damaged or hostile input (cut short, lengths
//! pointing outside the section, oversized, not UTF-8, unknown lines) is an
//! error naming the problem, never a panic and never a guess.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The section's magic.
pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// The header's length; the strings start after it.
const HEADER_LEN: usize = 32;
/// The longest Go version string accepted.
const MAX_VERSION_LEN: u64 = 128;
/// The longest module information accepted (kuiperd v2.4.0 has about 9 KiB).
pub const MAX_MODINFO_LEN: u64 = (256 << 10) - 64;
/// Most module lines accepted.
const MAX_MODULES: usize = 10_000;
/// The sentinels around the module information.
const SENTINEL_START: &[u8; 16] = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6";
const SENTINEL_END: &[u8; 16] = b"\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2";

/// One module of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Module {
    /// Module path.
    pub path: String,
    /// Version (`v2.3.1`, or `(devel)` for a main module built from a checkout).
    pub version: String,
    /// `go.sum` hash (`h1:…`), empty when the go command recorded none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sum: String,
    /// The module it was replaced by (`replace` in go.mod), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<Box<Module>>,
}

impl Module {
    /// The module whose code was built: the replacement when there is one.
    pub fn effective(&self) -> &Module {
        self.replaced_by.as_deref().unwrap_or(self)
    }
}

/// The Go build information of one binary or plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoBuild {
    /// The toolchain (`go1.26.8`).
    pub go_version: String,
    /// The main package's import path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The main module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<Module>,
    /// Every dependency module, in the order recorded (sorted by path).
    pub deps: Vec<Module>,
    /// Build settings (`-trimpath`, `CGO_ENABLED`, `GOOS`, `GOARCH`, `GOAMD64`, `-tags`, …).
    pub settings: BTreeMap<String, String>,
}

/// Parses a `.go.buildinfo` section (its bytes from the magic on; more may follow).
pub fn parse(section: &[u8]) -> Result<GoBuild, String> {
    if section.len() < HEADER_LEN {
        return Err(format!(
            "Go build information is cut short: {} bytes, its header alone has {HEADER_LEN}",
            section.len()
        ));
    }
    if &section[..MAGIC.len()] != MAGIC {
        return Err("Go build information does not start with its magic".into());
    }
    let ptr_size = section[14];
    let flags = section[15];
    if flags & 2 == 0 {
        return Err(format!(
            "Go build information in the format of Go before 1.18 (pointer size {ptr_size}, flags {flags:#x}) is not supported: rebuild with a current Go"
        ));
    }
    let mut rest = &section[HEADER_LEN..];
    let version = take(&mut rest, "the Go version", MAX_VERSION_LEN)?;
    let modinfo = take(&mut rest, "the module information", MAX_MODINFO_LEN)?;
    let version =
        std::str::from_utf8(version).map_err(|_| "the Go version is not UTF-8".to_string())?;
    if !version.starts_with("go")
        || version.len() < 3
        || !version.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "Go build information names no Go version: {version:?}"
        ));
    }
    let modinfo = std::str::from_utf8(strip_sentinels(modinfo)?)
        .map_err(|_| "the module information is not UTF-8".to_string())?;
    let mut build = parse_modinfo(modinfo)?;
    build.go_version = version.to_string();
    Ok(build)
}

/// Reads one uvarint-length-prefixed string's bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], what: &str, max: u64) -> Result<&'a [u8], String> {
    let (len, used) = uvarint(rest).ok_or_else(|| format!("the length of {what} is damaged"))?;
    if len > max {
        return Err(format!(
            "{what} claims {len} bytes, more than the {max} accepted"
        ));
    }
    let after = &rest[used..];
    let len = len as usize;
    if after.len() < len {
        return Err(format!(
            "{what} claims {len} bytes, past the end of the build information ({} left)",
            after.len()
        ));
    }
    *rest = &after[len..];
    Ok(&after[..len])
}

/// A little-endian base-128 varint, as Go's `binary.Uvarint`; `None` when cut
/// short or over 64 bits.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The module information between its sentinels (empty stays empty).
fn strip_sentinels(modinfo: &[u8]) -> Result<&[u8], String> {
    if modinfo.is_empty() {
        return Ok(modinfo);
    }
    if modinfo.len() < 32
        || !modinfo.starts_with(SENTINEL_START)
        || !modinfo.ends_with(SENTINEL_END)
    {
        return Err("the module information is not framed as the go command writes it".into());
    }
    Ok(&modinfo[16..modinfo.len() - 16])
}

/// Parses the lines of the module information (`runtime/debug.ParseBuildInfo`'s format).
fn parse_modinfo(text: &str) -> Result<GoBuild, String> {
    let mut build = GoBuild {
        go_version: String::new(),
        path: String::new(),
        main: None,
        deps: Vec::new(),
        settings: BTreeMap::new(),
    };
    // Which module a `=>` line replaces: the main module or the last dep.
    let mut last: Option<bool> = None;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('\t')
            .ok_or_else(|| format!("module information line {n} has no field: {line:?}"))?;
        match key {
            "go" => {}
            "path" => build.path = value.to_string(),
            "mod" => {
                build.main = Some(module(value, n)?);
                last = Some(true);
            }
            "dep" => {
                if build.deps.len() >= MAX_MODULES {
                    return Err(format!("more than {MAX_MODULES} modules"));
                }
                build.deps.push(module(value, n)?);
                last = Some(false);
            }
            "=>" => {
                let replacement = Box::new(module(value, n)?);
                let target = match last {
                    Some(true) => build.main.as_mut(),
                    Some(false) => build.deps.last_mut(),
                    None => None,
                };
                let target = target
                    .ok_or_else(|| format!("module information line {n} replaces no module"))?;
                if target.replaced_by.is_some() {
                    return Err(format!(
                        "module information line {n} replaces a module twice"
                    ));
                }
                target.replaced_by = Some(replacement);
            }
            "build" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("build setting on line {n} has no '=': {value:?}"))?;
                if k.is_empty() {
                    return Err(format!("build setting on line {n} has no key"));
                }
                build.settings.insert(k.to_string(), unquote(v));
            }
            other => {
                return Err(format!(
                    "module information line {n} is of an unknown kind {other:?}"
                ))
            }
        }
    }
    Ok(build)
}

/// One `path\tversion[\tsum]` module.
fn module(value: &str, line: usize) -> Result<Module, String> {
    let mut f = value.split('\t');
    let path = f.next().unwrap_or_default();
    let version = f.next().unwrap_or_default();
    let sum = f.next().unwrap_or_default();
    if path.is_empty() || f.next().is_some() {
        return Err(format!("module on line {line} is malformed: {value:?}"));
    }
    Ok(Module {
        path: path.to_string(),
        version: version.to_string(),
        sum: sum.to_string(),
        replaced_by: None,
    })
}

/// A build setting's value, with the quoting `go` uses for values with spaces removed.
fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    }
}

/// Builds a section as the go command writes it (for tests and the fuzz seed corpus).
pub fn encode(go_version: &str, modinfo_lines: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + modinfo_lines.len() + 48);
    out.extend_from_slice(MAGIC);
    out.push(8);
    out.push(2);
    out.resize(HEADER_LEN, 0);
    put_string(&mut out, go_version.as_bytes());
    let mut modinfo = Vec::new();
    modinfo.extend_from_slice(SENTINEL_START);
    modinfo.extend_from_slice(modinfo_lines.as_bytes());
    modinfo.extend_from_slice(SENTINEL_END);
    put_string(&mut out, &modinfo);
    out
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUIPERD: &str = "path\tgithub.com/lf-edge/ekuiper/v2/cmd/kuiperd\n\
        mod\tgithub.com/lf-edge/ekuiper/v2\tv2.4.0\th1:VeM4=\n\
        dep\tgithub.com/lf-edge/ekuiper/contract/v2\tv2.3.1\th1:ANhB=\n\
        dep\tgithub.com/segmentio/kafka-go\tv0.4.47\n\
        =>\tgithub.com/yisaer/kafka-go\tv0.0.0-20250314054731-4abde56ff0ac\th1:x=\n\
        build\t-buildmode=exe\n\
        build\t-trimpath=true\n\
        build\t-ldflags=\"-s -w -X a.b=c\"\n\
        build\tCGO_ENABLED=1\n\
        build\tGOARCH=amd64\n";

    #[test]
    fn reads_what_the_go_command_writes() {
        let b = parse(&encode("go1.26.8", KUIPERD)).unwrap();
        assert_eq!(b.go_version, "go1.26.8");
        assert_eq!(b.path, "github.com/lf-edge/ekuiper/v2/cmd/kuiperd");
        assert_eq!(b.main.as_ref().unwrap().version, "v2.4.0");
        assert_eq!(b.deps.len(), 2);
        assert_eq!(b.deps[0].sum, "h1:ANhB=");
        assert_eq!(
            b.deps[1].effective().path,
            "github.com/yisaer/kafka-go",
            "a replaced module is built from its replacement"
        );
        assert_eq!(b.settings["-trimpath"], "true");
        assert_eq!(b.settings["-ldflags"], "-s -w -X a.b=c");
        assert_eq!(b.settings["GOARCH"], "amd64");
    }

    #[test]
    fn trailing_bytes_after_the_strings_are_ignored() {
        let mut s = encode("go1.26.8", KUIPERD);
        s.extend_from_slice(&[0u8; 100]);
        assert!(parse(&s).is_ok());
    }

    #[test]
    fn damaged_information_is_named() {
        let good = encode("go1.26.8", KUIPERD);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..20].to_vec(), "cut short"),
            (good[..good.len() - 1].to_vec(), "past the end"),
            (
                {
                    let mut s = good.clone();
                    s[0] = 0;
                    s
                },
                "magic",
            ),
            (
                {
                    let mut s = good.clone();
                    s[15] = 0;
                    s
                },
                "before 1.18",
            ),
            (
                encode("go1.26.8\u{0}", "")[..].to_vec(),
                "names no Go version",
            ),
            (encode("1.26", ""), "names no Go version"),
            (encode("go1.26.8", "mod\n"), "no field"),
            (encode("go1.26.8", "wat\tx\n"), "unknown kind"),
            (encode("go1.26.8", "=>\ta\tv1\n"), "replaces no module"),
            (encode("go1.26.8", "build\tnovalue\n"), "has no '='"),
            (encode("go1.26.8", "dep\t\tv1\n"), "malformed"),
            (encode("go1.26.8", "dep\ta\tv1\th\textra\n"), "malformed"),
        ];
        for (bytes, want) in cases {
            let err = parse(&bytes).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        // Not UTF-8.
        let mut s = encode("go1.26.8", "path\tx\n");
        let at = s.len() - 18;
        s[at] = 0xff;
        assert!(parse(&s).unwrap_err().contains("not UTF-8"));
        // Oversized and overlong lengths.
        let mut s = good[..HEADER_LEN].to_vec();
        s.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(parse(&s).unwrap_err().contains("more than"));
        let mut s = good[..HEADER_LEN].to_vec();
        s.extend_from_slice(&[0xff; 11]);
        assert!(parse(&s).unwrap_err().contains("damaged"));
        // A module information without its frame.
        let mut s = good[..HEADER_LEN].to_vec();
        put_string(&mut s, b"go1.26.8");
        put_string(&mut s, b"path\tx\n");
        assert!(parse(&s).unwrap_err().contains("not framed"));
    }

    #[test]
    fn varints_as_go_reads_them() {
        assert_eq!(uvarint(&[0x00]), Some((0, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(uvarint(&max), Some((u64::MAX, 10)));
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(uvarint(&over), None);
    }
}
