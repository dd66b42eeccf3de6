//! The build fingerprint read from the rig's real binaries (streamed, as
//! publish reads a library) agrees with `go version -m` and `readelf`.

use std::process::Command;

use kuiper_harness::rig::Rig;
use kuiper_registry::package::{fingerprint_file, Libc};

use crate::common::blocking;

/// `go version -m FILE`: the Go version, and module lines as (kind, path, version).
fn go_version_m(path: &std::path::Path) -> (String, Vec<(String, String, String)>, Vec<String>) {
    let out = Command::new("go")
        .arg("version")
        .arg("-m")
        .arg(path)
        .output()
        .expect("go version -m");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let go = lines
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let mut mods = Vec::new();
    let mut settings = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.trim_start().split('\t').collect();
        match f[0] {
            "mod" | "dep" | "=>" => mods.push((f[0].into(), f[1].into(), f[2].into())),
            "build" => settings.push(f[1].to_string()),
            _ => {}
        }
    }
    (go, mods, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_information_matches_go_version_m() {
    let rig = blocking(Rig::get);
    for file in [
        rig.kuiperd(),
        rig.plugin("v1", "sources/Ticker.so"),
        rig.plugin("notrim", "sinks/Linefile.so"),
    ] {
        let f = fingerprint_file(&file).unwrap();
        assert_eq!(f.libc, Libc::Glibc, "{} needs libc.so.6", file.display());
        let b = f.go.expect("built by Go");
        let (go, mods, settings) = go_version_m(&file);
        assert_eq!(b.go_version, go, "{}", file.display());
        let mut ours = Vec::new();
        if let Some(m) = &b.main {
            ours.push(("mod".to_string(), m.path.clone(), m.version.clone()));
        }
        for d in &b.deps {
            ours.push(("dep".into(), d.path.clone(), d.version.clone()));
            if let Some(r) = &d.replaced_by {
                ours.push(("=>".into(), r.path.clone(), r.version.clone()));
            }
        }
        assert_eq!(ours, mods, "{}", file.display());
        for s in settings {
            let (k, v) = s.split_once('=').unwrap();
            assert_eq!(
                b.settings.get(k).map(String::as_str),
                Some(v.trim_matches('"')),
                "{k} of {}",
                file.display()
            );
        }
    }
    // A library built without Go has no build information.
    let c = kuiper_harness::plugins::example_so("print");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("Print.so");
    std::fs::write(&p, c).unwrap();
    let f = fingerprint_file(&p).unwrap();
    assert_eq!(f.go, None);
    assert_eq!(f.libc, Libc::Glibc);
}

/// The offset of the `.go.buildinfo` section in `elf`.
fn buildinfo_offset(elf: &[u8]) -> usize {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).expect("ELF");
    let section = file
        .section_by_name(".go.buildinfo")
        .expect(".go.buildinfo");
    section.file_range().expect("in the file").0 as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_the_fingerprint_recorded_at_publish() {
    let stack = crate::common::Stack::start().await;
    crate::common::publish_all(&stack).await;
    let (status, body) = stack
        .registry(reqwest::Method::GET, "/plugins/sources/ticker", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let meta: serde_json::Value = serde_json::from_str(&body).unwrap();
    let build = &meta["build"];
    assert_eq!(build["libc"], "glibc", "{build}");
    assert_eq!(build["go"]["goVersion"], "go1.26.8", "{build}");
    assert_eq!(build["go"]["settings"]["-trimpath"], "true", "{build}");
    assert_eq!(build["go"]["settings"]["-buildmode"], "plugin", "{build}");
    assert_eq!(build["go"]["settings"]["CGO_ENABLED"], "1", "{build}");
    let contract = build["go"]["deps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "github.com/lf-edge/ekuiper/contract/v2")
        .unwrap_or_else(|| panic!("the contract module: {build}"));
    assert_eq!(contract["version"], "v2.3.1");
    assert!(
        contract["sum"].as_str().unwrap().starts_with("h1:"),
        "{contract}"
    );
}

/// Damaged or hostile build information in a real Go plugin is a 400 that
/// names the problem, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_build_information_is_refused_at_publish() {
    let stack = crate::common::Stack::start().await;
    let good = blocking(Rig::get).plugin_bytes("v1", "sinks/Linefile.so");
    let at = buildinfo_offset(&good);
    let text_at = at
        + good[at..]
            .windows(4)
            .position(|w| w == b"dep\t")
            .expect("a dep line");
    type Damage = (&'static str, Box<dyn Fn(&mut Vec<u8>)>, &'static str);
    let cases: Vec<Damage> = vec![
        (
            "overlong length",
            Box::new(move |b| b[at + 32..at + 43].copy_from_slice(&[0xff; 11])),
            "the length of the Go version is damaged",
        ),
        (
            "oversized",
            Box::new(move |b| {
                let v = b[at + 32] as usize;
                b[at + 33 + v..at + 33 + v + 5].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
            }),
            "more than the",
        ),
        (
            "old pointer format",
            Box::new(move |b| b[at + 15] = 0),
            "format of Go before 1.18",
        ),
        (
            "not UTF-8",
            Box::new(move |b| b[text_at + 4] = 0xff),
            "not UTF-8",
        ),
        (
            "unknown line",
            Box::new(move |b| b[text_at + 2] = b'q'),
            "unknown kind",
        ),
    ];
    for (what, damage, want) in cases {
        let mut lib = good.clone();
        damage(&mut lib);
        let zip = kuiper_harness::zips::ZipBuilder::new()
            .file("Linefile@v1.0.0.so", lib)
            .build();
        let url = stack
            .serve(&format!("/damaged/{}.zip", what.replace(' ', "-")), zip)
            .await;
        let (status, body) = stack
            .registry(
                reqwest::Method::POST,
                "/plugins/sinks",
                Some(serde_json::json!({"name": "linefile", "file": url})),
            )
            .await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body.contains("Go build information") && body.contains(want),
            "{what}: {body}"
        );
    }
    let (_, list) = stack
        .registry(reqwest::Method::GET, "/plugins/sinks", None)
        .await;
    assert_eq!(list, "[]", "nothing stored");
}

/// Publish hands a library to the capture in pieces of whatever size the
/// decoder gives: the fingerprint must not depend on where they are cut
/// (the magic and the C library's name can straddle two pieces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fingerprint_does_not_depend_on_the_pieces() {
    use kuiper_registry::package::ElfCapture;
    let rig = blocking(Rig::get);
    for (set, rel) in [("v1", "sources/Ticker.so"), ("musl", "sinks/Linefile.so")] {
        let lib = rig.plugin_bytes(set, rel);
        let whole = {
            let mut c = ElfCapture::new();
            c.write(&lib);
            c.finish().fingerprint().unwrap()
        };
        assert!(whole.go.is_some(), "{set}");
        // Pieces of 1..=97 bytes near the interesting places, larger elsewhere.
        let mut seed = 0x9e37_79b9_u64;
        for round in 0..4 {
            let mut c = ElfCapture::new();
            let mut at = 0;
            while at < lib.len() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = if round % 2 == 0 {
                    1 + (seed % 97) as usize
                } else {
                    1 + (seed % 70_000) as usize
                };
                let end = (at + n).min(lib.len());
                c.write(&lib[at..end]);
                at = end;
            }
            assert_eq!(
                c.finish().fingerprint().unwrap(),
                whole,
                "{set}, round {round}"
            );
        }
    }
}
