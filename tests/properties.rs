//! Property tests for the input rules: names, entry names, file URLs, the
//! address policy and the zip checks.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path};

use kuiper_harness::zips::ZipBuilder;
use kuiper_registry::fetch::policy::{non_public_reason, AddressPolicy};
use kuiper_registry::fetch::{FetchSettings, Fetcher};
use kuiper_registry::package::{
    check_entry_name, inspect_zip, validate_name, PluginType, ZipLimits,
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
}
