//! Concurrent creates of one name: exactly one wins, and what is stored is the winner's.

use serde_json::json;

use crate::common::TestEnv;

both_stores!(
    concurrent_creates_one_winner,
    mixed_operations_never_leave_dangling_metadata
);

async fn concurrent_creates_one_winner(env: TestEnv) {
    const N: usize = 50;
    let mut urls = Vec::new();
    for i in 0..N {
        // Different zips (the yaml differs), so each racer's content is recognisable.
        let zip = kuiper_harness::zips::ZipBuilder::new()
            .file("Racer.so", crate::common::real_so("sources"))
            .file("racer.yaml", format!("racer: {i}\n"))
            .build();
        urls.push(env.files.serve(&format!("/race/{i}.zip"), zip).await);
    }
    let mut tasks = Vec::new();
    for url in &urls {
        let (http, base, url) = (env.http.clone(), env.base.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/plugins/sources"))
                .header("content-type", "application/json")
                .body(json!({"name": "racer", "file": url}).to_string())
                .send()
                .await
                .unwrap();
            (url, r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (url, status, body) = t.await.unwrap();
        match status {
            201 => winners.push(url),
            400 => assert!(body.contains("invalid name racer: duplicate"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    let d = env.get("/plugins/sources/racer").await.json();
    assert_eq!(
        d["source"], winners[0],
        "the stored metadata is the winner's"
    );
    let blob = env.objects_dir().join(
        env.stored_blobs()
            .into_iter()
            .find(|b| b.ends_with(d["blob"].as_str().unwrap()))
            .expect("winner's zip stored"),
    );
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(std::fs::read(blob).unwrap())),
        d["sha256"].as_str().unwrap()
    );
}

/// Creates, updates and deletes of one name, all at once: every answer is a
/// clear 2xx/4xx, and whatever metadata is left points at a stored zip with the
/// content it names.
async fn mixed_operations_never_leave_dangling_metadata(env: TestEnv) {
    let mut urls = Vec::new();
    for i in 0..6 {
        let zip = kuiper_harness::zips::ZipBuilder::new()
            .file("Mixed.so", crate::common::real_so("sinks"))
            .file("mixed.json", format!("{{\"v\":{i}}}"))
            .build();
        urls.push(env.files.serve(&format!("/mixed/{i}.zip"), zip).await);
    }
    env.create_ok("sinks", "mixed").await;
    let mut tasks = Vec::new();
    for round in 0..30 {
        let (http, base, url) = (
            env.http.clone(),
            env.base.clone(),
            urls[round % urls.len()].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = json!({"name": "mixed", "file": url}).to_string();
            let req = match round % 3 {
                0 => http.post(format!("{base}/plugins/sinks")).body(body),
                1 => http.put(format!("{base}/plugins/sinks/mixed")).body(body),
                _ => http.delete(format!("{base}/plugins/sinks/mixed")),
            };
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert!(
            matches!(status, 200 | 201 | 404 | 409)
                || (status == 400 && body.contains("duplicate")),
            "{status}: {body}"
        );
    }
    let d = env.get("/plugins/sinks/mixed").await;
    if d.status == 200 {
        let meta = d.json();
        let blob = env.objects_dir().join(
            env.stored_files()
                .into_iter()
                .find(|f| f.ends_with(meta["blob"].as_str().unwrap()))
                .expect("the zip the metadata names is stored"),
        );
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(std::fs::read(blob).unwrap())),
            meta["sha256"].as_str().unwrap()
        );
    } else {
        assert_eq!(d.status, 404);
        assert!(env.list("sinks").await.is_empty());
    }
}
