//! Whether a Go plugin loads into a stock eKuiper, decided from both build
//! fingerprints: the node's gate (before anything is downloaded) and the
//! registry's `ekuiper` check (before anything is stored) use this one rule.
//!
//! Go's `plugin.Open` loads a library only into a host built the same way:
//! the same toolchain, the same version of every package both contain (the
//! standard library, the contract module, any shared module), the same
//! `-trimpath`, the same target, and the same C library. The rig's real
//! kuiperd showed each (harness/go/README.md): another module version or
//! `-trimpath` setting, and a musl library, are refused with a log line;
//! another Go minor release crashes kuiperd at start, on every start. So
//! every difference below refuses the plugin, and so does a library not
//! built by Go (a C or Rust library of the plugin ABI): kuiperd exits at
//! start on it too. (A plugin from another patch
//! release of the same Go may load or not, depending on whether the
//! standard library packages it shares changed: the gate refuses it too,
//! as eKuiper's own advice is to build with exactly the node's toolchain.)

use std::collections::BTreeMap;

use super::{BuildFingerprint, GoBuild, GoModule};

/// Build settings that must be equal, and how to name each in a message.
const SAME_SETTINGS: &[&str] = &[
    "GOOS",
    "GOARCH",
    "GOAMD64",
    "GOARM64",
    "GOARM",
    "CGO_ENABLED",
];

/// Why the eKuiper built as `node` would refuse the plugin built as
/// `plugin`, one reason per difference; empty when it would load it.
/// Nothing is judged against a node without Go build information.
pub fn refusals(node: &BuildFingerprint, plugin: &BuildFingerprint) -> Vec<String> {
    let mut why = Vec::new();
    let Some(n) = &node.go else {
        return why;
    };
    let Some(p) = &plugin.go else {
        // The rig's kuiperd, given a C or Rust library, dies at start.
        why.push(
            "not built by Go (a plugin-ABI library for kuiper-node run): stock eKuiper cannot open it, and exits at start with \"no plugin module data\""
                .into(),
        );
        return why;
    };
    if p.go_version != n.go_version {
        why.push(format!(
            "built with {}, node has {}",
            p.go_version, n.go_version
        ));
    }
    if plugin.libc != node.libc {
        why.push(format!("needs {}, node is {}", plugin.libc, node.libc));
    }
    let trimpath = |b: &GoBuild| b.settings.get("-trimpath").map(String::as_str) == Some("true");
    match (trimpath(p), trimpath(n)) {
        (false, true) => why.push("built without -trimpath, node's eKuiper with it".into()),
        (true, false) => why.push("built with -trimpath, node's eKuiper without it".into()),
        _ => {}
    }
    for key in SAME_SETTINGS {
        let (pv, nv) = (p.settings.get(*key), n.settings.get(*key));
        if pv != nv {
            let show = |v: Option<&String>| v.map_or("unset".to_string(), |v| v.to_string());
            why.push(format!(
                "{key}={} here, {key}={} on the node",
                show(pv),
                show(nv)
            ));
        }
    }
    let node_modules = modules(n);
    for m in p.main.iter().chain(&p.deps) {
        let built = m.effective();
        let Some(theirs) = node_modules.get(m.path.as_str()) else {
            continue;
        };
        if built.version != theirs.version || built.path != theirs.path {
            why.push(format!(
                "{} {} here, {} on the node",
                m.path,
                describe(m),
                theirs.version
            ));
        } else if !built.sum.is_empty() && !theirs.sum.is_empty() && built.sum != theirs.sum {
            why.push(format!(
                "{} {}: other contents here ({}) than on the node ({})",
                m.path, built.version, built.sum, theirs.sum
            ));
        }
    }
    why
}

/// The node's modules by path, as built (replacements applied).
fn modules(b: &GoBuild) -> BTreeMap<&str, &GoModule> {
    b.main
        .iter()
        .chain(&b.deps)
        .map(|m| (m.path.as_str(), m.effective()))
        .collect()
}

fn describe(m: &GoModule) -> String {
    match &m.replaced_by {
        Some(r) => format!("{} (replaced by {} {})", m.version, r.path, r.version),
        None => m.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::{encode_go_build, parse_go_build, Libc};

    fn build(go: &str, lines: &str, libc: Libc) -> BuildFingerprint {
        BuildFingerprint {
            libc,
            go: Some(parse_go_build(&encode_go_build(go, lines)).unwrap()),
        }
    }

    const NODE: &str = "mod\tgithub.com/lf-edge/ekuiper/v2\tv2.4.0\th1:a\n\
        dep\tgithub.com/lf-edge/ekuiper/contract/v2\tv2.3.1\th1:c\n\
        build\t-trimpath=true\nbuild\tCGO_ENABLED=1\nbuild\tGOARCH=amd64\nbuild\tGOOS=linux\nbuild\tGOAMD64=v1\n";

    #[test]
    fn a_plugin_built_like_the_node_passes() {
        let node = build("go1.26.8", NODE, Libc::Glibc);
        let plugin = build(
            "go1.26.8",
            "mod\texample.com/p\t(devel)\t\ndep\tgithub.com/lf-edge/ekuiper/contract/v2\tv2.3.1\th1:c\n\
             build\t-buildmode=plugin\nbuild\t-trimpath=true\nbuild\tCGO_ENABLED=1\nbuild\tGOARCH=amd64\nbuild\tGOOS=linux\nbuild\tGOAMD64=v1\n",
            Libc::Glibc,
        );
        assert_eq!(refusals(&node, &plugin), Vec::<String>::new());
    }

    #[test]
    fn each_difference_is_named() {
        let node = build("go1.26.8", NODE, Libc::Glibc);
        let plugin = build(
            "go1.25.4",
            "dep\tgithub.com/lf-edge/ekuiper/contract/v2\tv2.3.0\th1:d\n\
             build\tCGO_ENABLED=1\nbuild\tGOARCH=arm64\nbuild\tGOOS=linux\n",
            Libc::Musl,
        );
        let why = refusals(&node, &plugin);
        for want in [
            "built with go1.25.4, node has go1.26.8",
            "needs musl, node is glibc",
            "built without -trimpath, node's eKuiper with it",
            "GOARCH=arm64 here, GOARCH=amd64 on the node",
            "GOAMD64=unset here, GOAMD64=v1 on the node",
            "github.com/lf-edge/ekuiper/contract/v2 v2.3.0 here, v2.3.1 on the node",
        ] {
            assert!(why.iter().any(|w| w == want), "{want:?} not in {why:#?}");
        }
        // The same version with other contents (a fork under a replace).
        let forked = build(
            "go1.26.8",
            "dep\tgithub.com/lf-edge/ekuiper/contract/v2\tv2.3.1\th1:other\n\
             build\t-trimpath=true\nbuild\tCGO_ENABLED=1\nbuild\tGOARCH=amd64\nbuild\tGOOS=linux\nbuild\tGOAMD64=v1\n",
            Libc::Glibc,
        );
        let why = refusals(&node, &forked);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("other contents here (h1:other)"), "{why:?}");
    }

    #[test]
    fn libraries_not_built_by_go_are_refused() {
        let node = build("go1.26.8", NODE, Libc::Glibc);
        let c = BuildFingerprint {
            libc: Libc::Musl,
            go: None,
        };
        let why = refusals(&node, &c);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("not built by Go"), "{why:?}");
        assert!(
            refusals(&c, &node).is_empty(),
            "nothing is judged against a non-Go node"
        );
    }
}
