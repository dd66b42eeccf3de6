//! Fuzzes the Go build information parser (`.go.buildinfo`, as publish and
//! the node read it from untrusted libraries): never a panic, and what it
//! accepts names a Go version and only well-formed modules.

#![no_main]

use kuiper_registry::package::parse_go_build;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut section = b"\xff Go buildinf:\x08\x02".to_vec();
    section.resize(32, 0);
    section.extend_from_slice(data);
    for input in [data, &section[..]] {
        if let Ok(b) = parse_go_build(input) {
            assert!(b.go_version.starts_with("go"));
            for m in b.main.iter().chain(&b.deps) {
                assert!(!m.path.is_empty() && !m.path.contains('\t'));
            }
        }
    }
});
