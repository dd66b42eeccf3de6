//! Zips on which readers could disagree (Info-ZIP, Python's zipfile, Go's
//! archive/zip, the zip crate), and libraries no node can load: each is
//! refused at publish with a message naming the problem. The same zips are
//! in the malformed-input corpus ([`crate::corpus`]).

use kuiper_harness::plugins::{
    pie_executable, with_segment_past_the_end, without_program_headers, CPlugin,
};
use kuiper_harness::zips::{end_record, RawEntry, RawParts, ZipBuilder};
use serde_json::json;

use crate::common::{real_so, TestEnv};

/// `(case, zip, a fragment of the message)`, each zip for sink `ok`.
pub fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let so = real_so("sinks");
    let lib = RawEntry::stored("Ok.so", &so);
    let extra = RawEntry::stored("etc/hidden", b"seen by other readers");
    let two = RawParts::new(&[lib.clone(), extra.clone()]);

    // A second central record past the count the end record gives.
    let mut beyond = two.locals.concat();
    beyond.extend(two.centrals.concat());
    beyond.extend(end_record(
        1,
        two.centrals_len() as u32,
        two.locals_len() as u32,
        b"",
    ));

    // The central directory's size says less than its records take.
    let mut short_cd = two.locals.concat();
    short_cd.extend(two.centrals.concat());
    short_cd.extend(end_record(
        2,
        two.centrals_len() as u32 - 10,
        two.locals_len() as u32,
        b"",
    ));

    // A local header whose name differs from its central record's.
    let renamed = {
        let mut parts = two.clone();
        let local = &mut parts.locals[1];
        let at = 30 + extra.name.len() - 1;
        local[at] = b'X';
        parts.zip()
    };

    // A local header whose sizes differ from its central record's.
    let resized = {
        let mut parts = two.clone();
        let mut local = extra.clone();
        local.size += 1;
        local.compressed += 1;
        // The same data; only the header's sizes say one byte more.
        let mut header = local.local_header();
        header.truncate(header.len() - 1);
        parts.locals[1] = header;
        parts.zip()
    };

    // A local header whose method differs from its central record's.
    let remethod = {
        let mut parts = two.clone();
        let mut local = extra.clone();
        local.method = 8;
        parts.locals[1] = local.local_header();
        parts.zip()
    };

    // Entry etc/hidden's local header lies inside Ok.so's data.
    let overlap = {
        let inner = extra.local_header();
        let mut content = so.clone();
        content.extend(&inner);
        let outer = RawEntry::stored("Ok.so", &content);
        let outer_local = outer.local_header();
        let inner_at = (outer_local.len() - inner.len()) as u32;
        let centrals = [outer.central_record(0), extra.central_record(inner_at)].concat();
        let mut zip = outer_local;
        let cd_at = zip.len() as u32;
        zip.extend(&centrals);
        zip.extend(end_record(2, centrals.len() as u32, cd_at, b""));
        zip
    };

    // Sizes that both headers agree on, far from what the data decodes to.
    let oversized = {
        let mut e = RawEntry::deflated("etc/data", &[7u8; 4096]);
        e.size = 1 << 20;
        RawParts::new(&[lib.clone(), e]).zip()
    };

    // Many small entries of zeros, each under the per-entry ratio's floor,
    // a few hundred times the zip's size in all.
    // (A small C library, so that the zeros outweigh it.)
    let mut zeros = ZipBuilder::new().file("Ok.so", CPlugin::new("ok", 1, "1").so());
    for i in 0..16 {
        zeros = zeros.file(&format!("etc/zeros{i}"), vec![0u8; (1 << 20) - 1]);
    }

    let mut cut = so.clone();
    cut.truncate(8 * 1024);
    let elf = |bytes: Vec<u8>| ZipBuilder::new().file("Ok.so", bytes).build();
    vec![
        ("records beyond the count", beyond, "central directory"),
        ("central directory size", short_cd, "central directory"),
        ("local name differs", renamed, "local header"),
        ("local sizes differ", resized, "local header"),
        ("local method differs", remethod, "local header"),
        ("overlapping entries", overlap, "overlap"),
        ("declared size far from decoded", oversized, "etc/data"),
        ("whole-zip ratio", zeros.build(), "times the zip's"),
        ("library cut short", elf(cut), "truncated"),
        (
            "library without program headers",
            elf(without_program_headers(so.clone())),
            "program headers",
        ),
        (
            "library segment past the end",
            elf(with_segment_past_the_end(so.clone())),
            "segment",
        ),
        (
            "position-independent executable",
            elf(pie_executable("Ok")),
            "position-independent executable",
        ),
    ]
}

both_stores!(disagreeing_zips_and_unloadable_libraries_are_refused);

async fn disagreeing_zips_and_unloadable_libraries_are_refused(env: TestEnv) {
    // The valid two-entry zip the cases start from is accepted.
    let so = real_so("sinks");
    let valid = RawParts::new(&[
        RawEntry::stored("Ok.so", &so),
        RawEntry::stored("etc/hidden", b"seen by other readers"),
    ])
    .zip();
    let url = env.files.serve("/disagree/valid.zip", valid).await;
    let r = env
        .post("/plugins/sinks", json!({"name": "ok", "file": url}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = env
        .http
        .delete(format!("{}/plugins/sinks/ok", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let mut wrong = Vec::new();
    for (case, zip, fragment) in cases() {
        let url = env
            .files
            .serve(&format!("/disagree/{}.zip", case.replace(' ', "-")), zip)
            .await;
        let r = env
            .post("/plugins/sinks", json!({"name": "ok", "file": url}))
            .await;
        if r.status != 400 || !r.error_message().contains(fragment) {
            wrong.push(format!("{case}: {} {}", r.status, r.body));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(env.list("sinks").await.is_empty());
}
