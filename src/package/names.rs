//! Plugin types and the rules for names: plugins, functions, entries, libraries.

use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
