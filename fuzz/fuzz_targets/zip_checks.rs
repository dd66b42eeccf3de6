//! Fuzzes the zip checks the registry and the nodes run on untrusted archives:
//! they must never panic, what they accept must be safe to extract, and
//! checking after a scan of the zip's local headers (as the registry does
//! while a zip downloads) or while extracting every entry (as a node does,
//! decoding entries as streams or whole) must give the same verdict as
//! checking without (but for the one documented leniency of whole decoding).

#![no_main]

use kuiper_registry::package::{
    check_entry_name, inspect_and_extract, inspect_zip, inspect_zip_scanned, scan_entries, Extract,
    PackageError, PluginType, ZipLimits,
};
use libfuzzer_sys::fuzz_target;

/// Keeps every entry it is handed, in memory; deflated entries of up to
/// `whole` bytes are decoded whole.
struct Collect {
    files: Vec<(String, Vec<u8>)>,
    whole: u64,
}

impl Extract for Collect {
    type Out = Vec<u8>;

    fn open(&mut self, _: &str) -> std::io::Result<Option<Vec<u8>>> {
        Ok(Some(Vec::new()))
    }

    fn close(&mut self, entry: &str, out: Vec<u8>) -> std::io::Result<()> {
        self.files.push((entry.to_string(), out));
        Ok(())
    }

    fn whole_entry_max(&self) -> u64 {
        self.whole
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = ZipLimits {
        max_entries: 64,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        max_ratio: 200,
    };
    let scanned = scan_entries(data, &limits);
    for ty in [PluginType::Source, PluginType::Function] {
        let plain = inspect_zip(std::io::Cursor::new(data), ty, "p", &[], &limits);
        let after_scan =
            inspect_zip_scanned(std::io::Cursor::new(data), ty, "p", &[], &limits, &scanned);
        assert_eq!(
            plain.as_ref().map_err(ToString::to_string),
            after_scan.as_ref().map_err(ToString::to_string)
        );
        let mut extractions = Vec::new();
        for whole in [0, u64::MAX] {
            let mut into = Collect {
                files: Vec::new(),
                whole,
            };
            let extracted =
                inspect_and_extract(std::io::Cursor::new(data), ty, "p", &[], &limits, &mut into);
            // The one documented difference (`Extract::whole_entry_max`):
            // whole decoding also takes a few constructs deflate reserves,
            // which the streams refuse as corrupt. The files' sizes are
            // still checked below.
            let lenient = whole > 0
                && matches!(plain, Err(PackageError::Corrupt { .. }))
                && extracted.is_ok();
            if !lenient {
                assert_eq!(
                    plain.as_ref().map_err(ToString::to_string),
                    extracted.as_ref().map_err(ToString::to_string)
                );
            }
            if let Ok(info) = &extracted {
                // Every file was handed over whole, once.
                assert_eq!(into.files.len(), info.files.len());
                for ((name, bytes), f) in into.files.iter().zip(&info.files) {
                    assert_eq!((name, bytes.len() as u64), (&f.name, f.size));
                }
            }
            extractions.push((lenient, into.files));
        }
        // Decoded as streams or whole, the same bytes.
        if !extractions[1].0 {
            assert_eq!(extractions[0].1, extractions[1].1);
        }
        if let Ok(info) = plain {
            assert!(
                info.so_file == "P.so"
                    || info.so_file.starts_with("P@")
                    || info.so_file.starts_with("p")
            );
            for f in &info.files {
                assert!(check_entry_name(&f.name).is_ok(), "{}", f.name);
                assert!(!f.name.split('/').any(|c| c == ".."));
            }
        }
    }
});
