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
