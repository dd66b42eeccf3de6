//! Fuzzes the zip checks the registry and the nodes run on untrusted archives:
//! they must never panic, and what they accept must be safe to extract.

#![no_main]

use kuiper_registry::package::{check_entry_name, inspect_zip, PluginType, ZipLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ZipLimits {
        max_entries: 64,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        max_ratio: 200,
    };
    for ty in [PluginType::Source, PluginType::Function] {
        if let Ok(info) = inspect_zip(std::io::Cursor::new(data), ty, "p", &[], &limits) {
            assert!(info.so_file == "P.so" || info.so_file.starts_with("P@") || info.so_file.starts_with("p"));
            for f in &info.files {
                assert!(check_entry_name(&f.name).is_ok(), "{}", f.name);
                assert!(!f.name.split('/').any(|c| c == ".."));
            }
        }
    }
});
