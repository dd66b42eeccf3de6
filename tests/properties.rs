//! Property tests for the input rules: names, entry names, file URLs, the
//! address policy and the zip checks.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path};

use kuiper_harness::zips::ZipBuilder;
use kuiper_registry::fetch::policy::{non_public_reason, AddressPolicy};
use kuiper_registry::fetch::{FetchSettings, Fetcher};
use kuiper_registry::package::{
    check_entry_name, inspect_and_extract, inspect_zip, inspect_zip_scanned, scan_entries,
    validate_name, Extract, PackageInfo, PluginType, ZipLimits,
};
use kuiper_registry::registry::{Registry, RegistrySettings};
use kuiper_registry::store::local::LocalStore;
use proptest::prelude::*;

fn registry() -> &'static Registry<LocalStore> {
    static REGISTRY: std::sync::OnceLock<Registry<LocalStore>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        Registry::new(
            LocalStore::new(dir).unwrap(),
            Fetcher::new(FetchSettings::default()).unwrap(),
            RegistrySettings::default(),
        )
    })
}

fn library() -> &'static [u8] {
    static SO: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SO.get_or_init(|| kuiper_harness::plugins::example_so("print"))
}

/// What a user sees of the checks of `zip`: the package, or the message. The
/// second is from checking after a scan of the zip as it streamed in, with
/// how many entries the scan found intact.
fn verdicts(
    zip: &[u8],
    limits: &ZipLimits,
) -> (
    Result<PackageInfo, String>,
    Result<PackageInfo, String>,
    usize,
) {
    let check = |r: Result<PackageInfo, _>| {
        r.map_err(|e: kuiper_registry::package::PackageError| e.to_string())
    };
    let plain = check(inspect_zip(
        std::io::Cursor::new(zip),
        PluginType::Sink,
        "p",
        &[],
        limits,
    ));
    let scanned = scan_entries(zip, limits);
    let after_scan = check(inspect_zip_scanned(
        std::io::Cursor::new(zip),
        PluginType::Sink,
        "p",
        &[],
        limits,
        &scanned,
    ));
    (plain, after_scan, scanned.len())
}

/// Keeps in memory every entry [`inspect_and_extract`] hands out; decodes
/// deflated entries of up to `whole` bytes whole.
#[derive(Default)]
struct Collect {
    files: std::collections::BTreeMap<String, Vec<u8>>,
    whole: u64,
}

impl Extract for Collect {
    type Out = Vec<u8>;

    fn open(&mut self, _: &str) -> std::io::Result<Option<Vec<u8>>> {
        Ok(Some(Vec::new()))
    }

    fn close(&mut self, entry: &str, out: Vec<u8>) -> std::io::Result<()> {
        self.files.insert(entry.to_string(), out);
        Ok(())
    }

    fn whole_entry_max(&self) -> u64 {
        self.whole
    }
}

/// The verdict of checking `zip` (as sink `p`) while handing its entries to `into`.
fn extract_into(
    zip: &[u8],
    limits: &ZipLimits,
    into: &mut impl Extract,
) -> Result<PackageInfo, String> {
    inspect_and_extract(
        std::io::Cursor::new(zip),
        PluginType::Sink,
        "p",
        &[],
        limits,
        into,
    )
    .map_err(|e| e.to_string())
}

/// The verdict of checking `zip` while extracting every entry, and what was
/// extracted; deflated entries of up to `whole` bytes are decoded whole.
fn extracted(
    zip: &[u8],
    limits: &ZipLimits,
    whole: u64,
) -> (
    Result<PackageInfo, String>,
    std::collections::BTreeMap<String, Vec<u8>>,
) {
    let mut into = Collect {
        whole,
        ..Collect::default()
    };
    let verdict = extract_into(zip, limits, &mut into);
    (verdict, into.files)
}

/// `len` bytes that deflate barely packs.
fn scrambled(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect()
}

#[test]
fn the_scan_reads_every_entry_whose_sizes_come_first() {
    let zip = ZipBuilder::new()
        .file("P@v1.2.so", library().to_vec())
        .file("etc/a.txt", "x".repeat(100_000))
        .dir("etc/b/")
        .file("etc/b/c.bin", scrambled(3 << 20))
        .build();
    let (plain, after_scan, intact) = verdicts(&zip, &ZipLimits::default());
    assert_eq!(intact, 4, "three files and a directory");
    let info = plain.expect("a valid zip");
    assert_eq!(after_scan, Ok(info.clone()));
    assert_eq!(info.version, "1.2");
    let sizes: Vec<u64> = info.files.iter().map(|f| f.size).collect();
    assert_eq!(sizes, [library().len() as u64, 100_000, 3 << 20]);
}

#[test]
fn a_corrupt_entry_stops_the_scan_and_is_reported_as_without_it() {
    let payload = vec![b'z'; 1 << 20];
    let mut zip = ZipBuilder::new()
        .stored()
        .file("P.so", library().to_vec())
        .file("etc/data", payload)
        .build();
    // A byte in the middle of etc/data's stored bytes: its CRC-32 no longer matches.
    let at = zip
        .windows(1024)
        .position(|w| w.iter().all(|&b| b == b'z'))
        .unwrap()
        + 4096;
    zip[at] ^= 0x20;
    let (plain, after_scan, intact) = verdicts(&zip, &ZipLimits::default());
    assert_eq!(intact, 1, "only the library, before the corrupt entry");
    let message = plain.expect_err("a corrupt entry");
    assert!(
        message.contains("etc/data") && message.contains("cannot be read"),
        "{message}"
    );
    assert_eq!(after_scan, Err(message));
}

#[test]
fn zips_whose_sizes_follow_the_data_are_checked_in_full() {
    use std::io::Write;
    // A zip written to a stream (as `zip -` or a streaming writer does): each
    // entry's sizes and CRC come in a descriptor after its data.
    let mut w = zip::ZipWriter::new_stream(Vec::new());
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    w.start_file("P.so", opts).unwrap();
    w.write_all(library()).unwrap();
    w.start_file("etc/a.txt", opts).unwrap();
    w.write_all(b"hello").unwrap();
    let zip = w.finish().unwrap().into_inner();
    let (plain, after_scan, intact) = verdicts(&zip, &ZipLimits::default());
    assert_eq!(intact, 0);
    assert!(plain.is_ok(), "{plain:?}");
    assert_eq!(after_scan, plain);
}

#[test]
fn the_scan_stops_at_the_limits_and_the_checks_report_them() {
    let zip = ZipBuilder::new()
        .file("P.so", library().to_vec())
        .file("etc/big", scrambled(6 << 20))
        .build();
    let limits = ZipLimits {
        max_entry_bytes: 5 << 20,
        ..ZipLimits::default()
    };
    let (plain, after_scan, intact) = verdicts(&zip, &limits);
    assert_eq!(intact, 1);
    let message = plain.expect_err("over the entry limit");
    assert!(message.contains("etc/big"), "{message}");
    assert_eq!(after_scan, Err(message));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_names_are_accepted(name in "[A-Za-z0-9_][A-Za-z0-9_-]{0,127}") {
        prop_assert!(validate_name(&name).is_ok());
    }

    #[test]
    fn names_outside_the_alphabet_are_refused(prefix in "[a-z]{0,5}", bad in "[^A-Za-z0-9_-]", suffix in "[a-z]{0,5}") {
        let name = format!("{prefix}{bad}{suffix}");
        prop_assert!(validate_name(&name).is_err(), "{:?}", name);
    }

    #[test]
    fn accepted_names_are_safe_file_names(name in any::<String>()) {
        if validate_name(&name).is_ok() {
            prop_assert!(!name.is_empty() && name.len() <= 128);
            prop_assert!(!name.starts_with('-') && !name.contains('/') && !name.contains('.'));
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
    }

    #[test]
    fn accepted_entry_names_stay_inside(name in "[a-z./\\\\:]{0,12}|(\\.\\./|[a-z]{1,3}/|\\./|/){0,6}[a-z.]{0,4}") {
        if check_entry_name(&name).is_ok() {
            let mut depth: i32 = 0;
            for c in Path::new(&name).components() {
                match c {
                    Component::Normal(_) => depth += 1,
                    Component::CurDir => {}
                    other => prop_assert!(false, "{:?} has {:?}", name, other),
                }
                prop_assert!(depth >= 0);
            }
            prop_assert!(!name.split('/').any(|p| p == ".."));
        }
    }

    #[test]
    fn accepted_file_urls_are_http_zip_urls(url in "(https?|ftp|file|javascript)://[a-z0-9.:@\\[\\]]{0,20}/[a-z./?=%]{0,20}(\\.zip)?(\\?[a-z=&]{0,8})?") {
        let reg = registry();
        if let Ok(u) = reg.check_file_url(&url) {
            prop_assert!(matches!(u.scheme(), "http" | "https"));
            prop_assert!(u.host_str().is_some_and(|h| !h.is_empty()));
            prop_assert!(u.path().ends_with(".zip"));
        }
    }

    #[test]
    fn private_v4_is_refused_in_every_form(a in 0u8..=255, b in 0u8..=255, c in 0u8..=255, d in 0u8..=255) {
        let v4 = Ipv4Addr::new(a, b, c, d);
        let policy = AddressPolicy::default();
        let forms = [
            format!("http://{v4}/a.zip"),
            format!("http://{}/a.zip", u32::from(v4)),
            format!("http://[{}]/a.zip", v4.to_ipv6_mapped()),
            format!("http://[::{v4}]/a.zip"),
        ];
        let private = non_public_reason(v4.into()).is_some();
        for form in forms {
            let verdict = policy.check_url(&url::Url::parse(&form).unwrap());
            // `::a.b.c.d` for 0.0.0.x is `::` or `::1`: also refused.
            if private {
                prop_assert!(verdict.is_err(), "{} should be refused", form);
            } else if !form.contains("[::") || u32::from(v4) > 1 {
                prop_assert!(verdict.is_ok(), "{} should be allowed: {:?}", form, verdict);
            }
        }
        let mapped: Ipv6Addr = v4.to_ipv6_mapped();
        prop_assert_eq!(non_public_reason(mapped.into()).is_some(), private);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_zip_checks(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = scan_entries(&bytes[..], &ZipLimits::default());
        let _ = inspect_zip(std::io::Cursor::new(bytes), PluginType::Sink, "p", &[], &ZipLimits::default());
    }

    #[test]
    fn accepted_zips_hold_one_library_and_safe_names(
        names in proptest::collection::vec("(etc/|\\.\\./|/|lib/)?[a-zA-Z.]{1,8}", 0..6),
        with_script in any::<bool>(),
    ) {
        let mut z = ZipBuilder::new().stored().file("P.so", library().to_vec());
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if seen.insert(n.to_lowercase()) && n.to_lowercase() != "p.so" {
                z = z.file(n, "x");
            }
        }
        if with_script && !seen.contains("install.sh") {
            z = z.file("install.sh", "true");
        }
        if let Ok(info) = inspect_zip(std::io::Cursor::new(z.build()), PluginType::Sink, "p", &[], &ZipLimits::default()) {
            prop_assert_eq!(info.so_file.as_str(), "P.so");
            for f in &info.files {
                prop_assert!(check_entry_name(&f.name).is_ok(), "{}", f.name);
                prop_assert!(!f.name.starts_with('/') && !f.name.split('/').any(|p| p == ".."));
            }
        }
    }

    /// Checking after a scan of the zip as it streamed in, and checking
    /// while extracting, give the verdict the full checks give, for valid,
    /// damaged and truncated zips.
    #[test]
    fn checks_after_a_scan_or_while_extracting_give_the_same_verdict(
        files in proptest::collection::vec(("(etc/)?[a-c]{1,2}", 0usize..70_000, any::<u8>()), 0..4),
        stored in any::<bool>(),
        // Bytes changed anywhere, or in the last 300 (the central directory).
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>(), 1u8..), 0..3),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        max_entry_bytes in prop_oneof![Just(1u64 << 30), 1u64..80_000],
        whole in prop_oneof![Just(0u64), Just(u64::MAX), 0u64..80_000],
    ) {
        let mut z = ZipBuilder::new().file("P.so", library().to_vec());
        if stored {
            z = z.stored();
        }
        let mut seen = std::collections::HashSet::new();
        for (name, len, seed) in &files {
            if seen.insert(name.clone()) {
                // Runs of a byte: deflate packs them, so entries vary in ratio.
                let data: Vec<u8> = (0..*len).map(|i| seed.wrapping_add((i / 97) as u8)).collect();
                z = z.file(name, data);
            }
        }
        let mut zip = z.build();
        let entries = 1 + seen.len();
        for (at, at_end, xor) in &damage {
            let i = if *at_end {
                zip.len() - 1 - at.index(zip.len().min(300))
            } else {
                at.index(zip.len())
            };
            zip[i] ^= xor;
        }
        if let Some(at) = cut {
            zip.truncate(at.index(zip.len()));
        }
        let limits = ZipLimits { max_entry_bytes, ..ZipLimits::default() };
        let (plain, after_scan, intact) = verdicts(&zip, &limits);
        if damage.is_empty() && cut.is_none() && max_entry_bytes == 1 << 30 {
            prop_assert_eq!(intact, entries, "every entry is scanned ({:?})", &plain);
        }
        prop_assert_eq!(&after_scan, &plain);
        // Checking while extracting, decoding entries as streams or (up to
        // `whole` bytes) whole: the same verdict, and for a zip that passes,
        // every file with the bytes the zip crate reads from it.
        let (verdict, files) = extracted(&zip, &limits, whole);
        prop_assert_eq!(&verdict, &plain);
        if let Ok(info) = &plain {
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&zip)).unwrap();
            for f in &info.files {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut archive.by_name(&f.name).unwrap(), &mut data).unwrap();
                prop_assert_eq!(files.get(&f.name), Some(&data), "{}", &f.name);
            }
            prop_assert_eq!(files.len(), info.files.len());
        }
    }
}

/// An entry that cannot be written where the caller wants it fails the
/// extraction with the writer's reason, naming the entry.
#[test]
fn extraction_reports_a_write_failure_for_its_entry() {
    struct Full;
    impl Extract for Full {
        type Out = std::io::BufWriter<std::fs::File>;
        fn open(&mut self, _: &str) -> std::io::Result<Option<Self::Out>> {
            // /dev/full refuses every write with ENOSPC.
            let f = std::fs::OpenOptions::new().write(true).open("/dev/full")?;
            Ok(Some(std::io::BufWriter::with_capacity(16, f)))
        }
        fn close(&mut self, _: &str, mut out: Self::Out) -> std::io::Result<()> {
            std::io::Write::flush(&mut out)
        }
    }
    let zip = ZipBuilder::new().file("P.so", library().to_vec()).build();
    let err = extract_into(&zip, &ZipLimits::default(), &mut Full).unwrap_err();
    assert!(err.starts_with("cannot extract P.so: "), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

/// A bomb (an entry packed far beyond the ratio limit) is refused with the
/// verdict of the plain checks, and only about `max_ratio` times its
/// compressed size reaches the extractor's writer, not the whole entry:
/// when entries are decoded as streams, and when they may be decoded whole.
#[test]
fn extraction_of_a_bomb_stops_writing_at_the_ratio_limit() {
    use std::cell::Cell;
    use std::rc::Rc;
    /// Counts what reaches it: the bomb's writer is dropped, never closed.
    struct Counted(Rc<Cell<u64>>);
    impl std::io::Write for Counted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.set(self.0.get() + buf.len() as u64);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    struct Counting(Rc<Cell<u64>>, u64);
    impl Extract for Counting {
        type Out = Counted;
        fn open(&mut self, _: &str) -> std::io::Result<Option<Counted>> {
            Ok(Some(Counted(Rc::clone(&self.0))))
        }
        fn whole_entry_max(&self) -> u64 {
            self.1
        }
        fn close(&mut self, entry: &str, _: Counted) -> std::io::Result<()> {
            assert_eq!(
                entry, "P.so",
                "only entries that pass their checks are closed"
            );
            Ok(())
        }
    }
    let bomb = vec![0u8; 64 << 20];
    let zip = ZipBuilder::new()
        .file("P.so", library().to_vec())
        .file("etc/zeros.bin", bomb)
        .build();
    let limits = ZipLimits::default();
    let compressed = zip::ZipArchive::new(std::io::Cursor::new(&zip))
        .unwrap()
        .by_name("etc/zeros.bin")
        .unwrap()
        .compressed_size();
    let plain = verdicts(&zip, &limits).0.unwrap_err();
    let library = library().len() as u64;
    let bound = library + (limits.max_ratio + 1) * compressed + (64 << 10);
    for whole in [0, u64::MAX] {
        let written = Rc::new(Cell::new(0));
        let verdict =
            extract_into(&zip, &limits, &mut Counting(Rc::clone(&written), whole)).unwrap_err();
        assert_eq!(verdict, plain);
        assert!(
            verdict.contains("compression ratio above 200:1"),
            "{verdict}"
        );
        let written = written.get();
        assert!(
            written <= bound,
            "{written} bytes written for a {compressed}-byte bomb (bound {bound}, whole {whole})"
        );
    }
}

mod go_build_information {
    use kuiper_registry::package::{encode_go_build, parse_go_build};
    use proptest::prelude::*;

    fn module_path() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9.-]{0,12}(/[a-z0-9.-]{1,8}){0,3}"
    }

    proptest! {
        /// Any bytes after the magic: an answer, never a panic.
        #[test]
        fn any_bytes_are_an_answer(tail in proptest::collection::vec(any::<u8>(), 0..400), flags in any::<u8>()) {
            let mut s = b"\xff Go buildinf:".to_vec();
            s.push(8);
            s.push(flags);
            s.extend_from_slice(&tail);
            let _ = parse_go_build(&s);
        }

        /// What the go command writes reads back as written; cut anywhere
        /// inside its strings, it is refused.
        #[test]
        fn written_information_reads_back(
            deps in proptest::collection::vec((module_path(), "v[0-9]\\.[0-9]{1,2}\\.[0-9]", "h1:[A-Za-z0-9+/=]{4,12}"), 0..8),
            trimpath in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut lines = String::from("path\texample.com/p\nmod\texample.com/p\t(devel)\t\n");
            for (p, v, h) in &deps {
                lines.push_str(&format!("dep\t{p}\t{v}\t{h}\n"));
            }
            lines.push_str(&format!("build\t-trimpath={trimpath}\nbuild\tCGO_ENABLED=1\n"));
            let section = encode_go_build("go1.26.8", &lines);
            let b = parse_go_build(&section).unwrap();
            prop_assert_eq!(&b.go_version, "go1.26.8");
            prop_assert_eq!(b.deps.len(), deps.len());
            for (d, (p, v, h)) in b.deps.iter().zip(&deps) {
                prop_assert_eq!((&d.path, &d.version, &d.sum), (p, v, h));
            }
            prop_assert_eq!(b.settings["-trimpath"].clone(), trimpath.to_string());
            let at = 32 + cut.index(section.len() - 32);
            prop_assert!(parse_go_build(&section[..at]).is_err(), "cut at {}", at);
        }
    }
}
