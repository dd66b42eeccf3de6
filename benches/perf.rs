//! Performance figures for issue 6, each printed with its baseline and ratio:
//!
//! 1. create of a 64 MiB plugin into the S3 store vs downloading the file plus
//!    uploading it with the same S3 client, one after the other: a stored zip
//!    of incompressible bytes, and a deflated zip of about the same size whose
//!    content deflates about 2.3:1, as this project's release binary does
//!    (plugin zips are usually deflated: `zip -r` does);
//! 2. peak RSS of `plugin-api` during a 250 MiB create (target: under 64 MiB),
//!    stored and deflated;
//! 3. `GET /plugins/{type}` with 10,000 plugins vs with 10, and the store
//!    list requests per call (S3 and local store);
//! 4. `kuiper-node sync`: first sync of 200 plugins of ~1 MiB vs fetching the
//!    same objects in parallel with a plain client; a second sync with nothing
//!    changed (zip downloads, list and get requests);
//! 5. cold start of `plugin-api` (S3 store) vs a minimal lambda_http/hyper
//!    service built with the same profile, and the binary's size.
//!
//! Rows 1 and 4 also print the CPU seconds a run took (the service's or the
//! node's, plus this process's, which hosts the S3 server and the file host)
//! and its CPU floor: the lowest ratio that much CPU work allows on this
//! machine, with every core busy from start to end. A floor above the target
//! means the target needs less work or more cores, not more overlap.
//!
//! Run: `cargo bench --profile deploy --bench perf` (the profile of what is
//! shipped; everything on 127.0.0.1: an in-process S3-protocol server and a
//! wiremock file host). `PERF_QUICK=1` uses smaller sizes;
//! `PERF_ONLY=create,rss,list,node,cold` picks sections (`create-stored`,
//! `create-deflated`, `node-stored` or `node-deflated` for half of a section).

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use futures_util::StreamExt;
use kuiper_harness::files::FileHost;
use kuiper_harness::plugins::{example_so, CPlugin};
use kuiper_harness::s3::{S3Server, ACCESS_KEY, REGION, SECRET_KEY};
use kuiper_harness::zips::{compressible, noise, ZipBuilder};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const MIB: usize = 1 << 20;

fn quick() -> bool {
    std::env::var_os("PERF_QUICK").is_some()
}

/// Whether a section runs: all by default, or those named in `PERF_ONLY`
/// (comma-separated: create, rss, list, node, cold, nodes).
fn wanted(section: &str) -> bool {
    std::env::var("PERF_ONLY").map_or(true, |v| v.split(',').any(|s| s.trim() == section))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A zip of `so` as plugin `name`'s library plus `payload` as
/// `etc/payload.bin`, deflated or stored.
fn zip_with_payload(name: &str, so: Vec<u8>, payload: Vec<u8>, deflated: bool) -> Vec<u8> {
    let upper = kuiper_registry::package::uc_first(name);
    let zip = if deflated {
        ZipBuilder::new()
    } else {
        ZipBuilder::new().stored()
    };
    zip.file(&format!("{upper}.so"), so)
        .file("etc/payload.bin", payload)
        .build()
}

/// A deflated zip of `so` as the plugin's library plus about `zipped` bytes
/// (once compressed) of [`compressible`] content.
fn deflated_plugin_zip(name: &str, so: Vec<u8>, zipped: usize, seed: u64) -> Vec<u8> {
    zip_with_payload(name, so, compressible(zipped * 7 / 3, seed), true)
}

/// A stored (uncompressed) zip of `so` as the plugin's library plus
/// `payload` bytes of noise.
fn plugin_zip(name: &str, so: Vec<u8>, payload: usize, seed: u64) -> Vec<u8> {
    zip_with_payload(name, so, noise(payload, seed), false)
}

struct Proc {
    child: tokio::process::Child,
    base: String,
    /// From spawn to the line saying where it listens.
    listening: Duration,
}

fn s3_env(s3: &S3Server) -> Vec<(&'static str, String)> {
    vec![
        ("KUIPER_STORE", format!("s3://{}", s3.bucket())),
        ("AWS_ENDPOINT_URL_S3", s3.endpoint().to_string()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("AWS_REGION", REGION.into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

async fn spawn(bin: &str, envs: &[(&str, String)]) -> (Proc, Duration) {
    spawn_answering(bin, envs, "/ping").await
}

/// Starts `bin` and waits until `GET {path}` is answered with success;
/// returns the process and the time from start to that answer.
async fn spawn_answering(bin: &str, envs: &[(&str, String)], path: &str) -> (Proc, Duration) {
    // Built before the clock starts: building it is the bench's cost, not the service's.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUIPER_LISTEN", "127.0.0.1:0")
        .env("KUIPER_ALLOW_PRIVATE_NETWORK", "true")
        .env("KUIPER_DOWNLOAD_TIMEOUT_SECS", "600")
        .env("KUIPER_READ_TIMEOUT_SECS", "60")
        .env(
            "RUST_LOG",
            std::env::var("PERF_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("first line");
    let listening = started.elapsed();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("address")
        .to_string();
    loop {
        if let Ok(r) = client.get(format!("{base}{path}")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (
        Proc {
            child,
            base,
            listening,
        },
        started.elapsed(),
    )
}

/// CPU time (s) process `pid` has used so far, user + system, exited threads
/// included (`/proc/{pid}/stat`, in ticks of 10 ms).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line; the rest starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// CPU time (s) this process has used so far, user + system, exited threads
/// included (`getrusage(RUSAGE_SELF)`).
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime)
}

/// The lowest ratio to `baseline` (s) that a run needing `cpu` CPU seconds
/// can reach on this machine: every core busy from start to end.
fn cpu_floor(cpu: f64, baseline: f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpu / (cores as f64 * baseline)
}

fn timeval_secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Runs `cmd` to its end (blocking) and asserts that it succeeded: the time
/// it took (s), the CPU seconds it used (user + system, its own and its
/// waited-for children's, from `wait4`; its own rusage, not
/// `RUSAGE_CHILDREN`, which also takes in whatever earlier child this
/// process happens to reap meanwhile) and, with `watch_memory`, its peak RSS
/// (MiB): its `VmHWM`, read every 5 ms while it runs. Not `wait4`'s
/// `ru_maxrss`, which also counts the memory of this large process, the
/// command's before it was exec'd. The last reading before it exits is its
/// peak up to then.
fn run_measured(mut cmd: std::process::Command, watch_memory: bool) -> (f64, f64, f64) {
    use std::os::unix::process::ExitStatusExt as _;
    let log = tempfile::tempfile().expect("temporary file");
    let t = Instant::now();
    // Waited for with wait4 below, which also gives its rusage.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone().expect("clone the log"))
        .spawn()
        .expect("spawn");
    let watcher = watch_memory.then(|| {
        let pid = child.id();
        std::thread::spawn(move || {
            let mut peak = 0;
            // Until it has exited (a zombie's status has no VmHWM).
            loop {
                let now = vm_hwm_kib(pid);
                if now == 0 {
                    return peak;
                }
                peak = peak.max(now);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    });
    // Waits for it to end without reaping it: its pid cannot be reused
    // while the watcher may still read its status.
    // SAFETY: waitid fills the struct it is given; the child is our own.
    let waited = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            child.id() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    let took = t.elapsed().as_secs_f64();
    assert_eq!(waited, 0, "waitid failed");
    let peak_kib = watcher.map_or(0, |w| w.join().expect("memory watcher"));
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: reaps our own child, filling the two values it is given.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    let status = std::process::ExitStatus::from_raw(status);
    if !status.success() {
        let mut text = String::new();
        let mut log = log;
        std::io::Seek::rewind(&mut log).ok();
        std::io::Read::read_to_string(&mut log, &mut text).ok();
        panic!("{status}: {text}");
    }
    (
        took,
        timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime),
        peak_kib as f64 / 1024.0,
    )
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn create(base: &str, ty: &str, name: &str, url: &str) -> Duration {
    let t = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{base}/plugins/{ty}"))
        .body(json!({"name": name, "file": url}).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success(), "create {name}: {status} {body}");
    t.elapsed()
}

async fn s3_client(s3: &S3Server) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version_latest()
        .region(aws_sdk_s3::config::Region::new(REGION))
        .endpoint_url(s3.endpoint())
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            ACCESS_KEY, SECRET_KEY, None, None, "bench",
        ))
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn row(what: &str, value: String, baseline: String, ratio: f64, target: &str) {
    println!("{what:<58} {value:>14} {baseline:>14} {ratio:>7.2}  {target}");
}

async fn bench_create(s3: &S3Server, files: &FileHost, dir: &Path) {
    let size = if quick() { 16 * MIB } else { 64 * MIB };
    if wanted("create") || wanted("create-stored") {
        let stored = plugin_zip("big", example_so("print"), size, 7);
        create_vs_baseline(s3, files, dir, "stored", stored).await;
    }
    if wanted("create") || wanted("create-deflated") {
        let deflated = deflated_plugin_zip("big", example_so("print"), size, 8);
        create_vs_baseline(s3, files, dir, "deflated", deflated).await;
    }
}

/// Row 1 for one zip: create vs download + upload, medians of 3.
async fn create_vs_baseline(s3: &S3Server, files: &FileHost, dir: &Path, kind: &str, zip: Vec<u8>) {
    let size = zip.len();
    let url = files.serve(&format!("/bench/create-{kind}.zip"), zip).await;
    let (api, _) = spawn(env!("CARGO_BIN_EXE_plugin-api"), &s3_env(s3)).await;
    let client = s3_client(s3).await;
    let http = reqwest::Client::new();
    let pid = api.child.id().unwrap();
    let (mut creates, mut downloads, mut uploads) = (Vec::new(), Vec::new(), Vec::new());
    // CPU seconds per run: plugin-api's, and this process's (the S3 server,
    // the file host and the clients) during the create and the baseline.
    let (mut api_cpu, mut servers_cpu, mut baseline_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..3 {
        let (a0, s0) = (cpu_secs(pid), own_cpu_secs());
        creates.push(create(&api.base, "sinks", "big", &url).await.as_secs_f64());
        api_cpu.push(cpu_secs(pid) - a0);
        servers_cpu.push(own_cpu_secs() - s0);
        let r = http
            .delete(format!("{}/plugins/sinks/big", api.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        // Baseline: download to a file, then upload that file with the same S3 client.
        let b0 = own_cpu_secs();
        let t = Instant::now();
        let path = dir.join(format!("baseline-{run}.zip"));
        let mut f = tokio::fs::File::create(&path).await.unwrap();
        let mut resp = http.get(&url).send().await.unwrap();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            f.write_all(&chunk).await.unwrap();
        }
        f.flush().await.unwrap();
        downloads.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        client
            .put_object()
            .bucket(s3.bucket())
            .key(format!("baseline/{run}.zip"))
            .body(ByteStream::from_path(&path).await.unwrap())
            .send()
            .await
            .unwrap();
        uploads.push(t.elapsed().as_secs_f64());
        baseline_cpu.push(own_cpu_secs() - b0);
    }
    let (c, d, u) = (median(creates), median(downloads), median(uploads));
    let (a, s, b) = (median(api_cpu), median(servers_cpu), median(baseline_cpu));
    row(
        &format!(
            "1. create {} MiB {kind} zip into S3 (s) vs down+upload",
            size / MIB
        ),
        format!("{c:.3}"),
        format!("{:.3}+{:.3}", d, u),
        c / (d + u),
        &format!(
            "ratio <= 1 (CPU s: plugin-api {a:.2} + servers {s:.2} = {:.2}, vs {b:.2} for the baseline; \
             CPU floor {:.2})",
            a + s,
            cpu_floor(a + s, d + u)
        ),
    );
    drop(api);
}

async fn bench_rss(s3: &S3Server, files: &FileHost) {
    let size = if quick() { 64 * MIB } else { 250 * MIB };
    let stored = plugin_zip("huge", example_so("print"), size, 11);
    peak_rss_of_create(s3, files, "huge", "stored", stored).await;
    // Deflated, the entries inflate slower than they download: the scan's
    // queue fills, so this is the case that holds the most blocks.
    let deflated = deflated_plugin_zip("hugezipped", example_so("print"), size, 12);
    peak_rss_of_create(s3, files, "hugezipped", "deflated", deflated).await;
}

/// Row 2 for one zip: plugin-api's peak RSS during the create of sink `name`.
async fn peak_rss_of_create(s3: &S3Server, files: &FileHost, name: &str, kind: &str, zip: Vec<u8>) {
    let size = zip.len();
    let url = files.serve(&format!("/bench/huge-{kind}.zip"), zip).await;
    let (api, _) = spawn(env!("CARGO_BIN_EXE_plugin-api"), &s3_env(s3)).await;
    let pid = api.child.id().unwrap();
    let before = vm_hwm_kib(pid);
    let took = create(&api.base, "sinks", name, &url).await;
    let peak = vm_hwm_kib(pid);
    row(
        &format!(
            "2. peak RSS of plugin-api, {} MiB {kind} create (MiB)",
            size / MIB
        ),
        format!("{:.1}", peak as f64 / 1024.0),
        "64.0".into(),
        peak as f64 / 1024.0 / 64.0,
        &format!(
            "< 1 (idle {:.1} MiB, create {:.1} s)",
            before as f64 / 1024.0,
            took.as_secs_f64()
        ),
    );
}

fn populate(dir: &Path, ty: &str, n: usize) {
    let d = dir.join("plugins").join(ty);
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        std::fs::write(d.join(format!("p{i:05}.json")), b"{}").unwrap();
    }
}

async fn time_list(base: &str, ty: &str, runs: usize) -> f64 {
    let http = reqwest::Client::new();
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/plugins/{ty}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let _ = r.bytes().await.unwrap();
        v.push(t.elapsed().as_secs_f64());
    }
    median(v)
}

async fn bench_listing() {
    let big = if quick() { 2_000 } else { 10_000 };
    // S3: objects written straight into the server's bucket directory.
    let s3 = S3Server::start("listing").await;
    populate(&s3.bucket_dir(), "sources", 10);
    populate(&s3.bucket_dir(), "sinks", big);
    let (api, _) = spawn(env!("CARGO_BIN_EXE_plugin-api"), &s3_env(&s3)).await;
    // The objects were written behind the service's back, so its first list
    // of each type reads the keys and builds the name index; timed apart.
    let rebuild = time_list(&api.base, "sinks", 1).await;
    time_list(&api.base, "sources", 1).await;
    row(
        &format!("3. S3 first list of {big} after a bulk load (ms)"),
        format!("{:.2}", rebuild * 1e3),
        "-".into(),
        0.0,
        "report (lists the keys, builds the name index)",
    );
    let small = time_list(&api.base, "sources", 30).await;
    let lists0 = s3.stats().lists.load(Ordering::SeqCst);
    let gets0 = s3.stats().gets.load(Ordering::SeqCst);
    let large = time_list(&api.base, "sinks", 9).await;
    let lists = (s3.stats().lists.load(Ordering::SeqCst) - lists0) as f64 / 9.0;
    let gets = (s3.stats().gets.load(Ordering::SeqCst) - gets0) as f64 / 9.0;
    row(
        &format!("3. S3 list {big} plugins vs 10 (ms)"),
        format!("{:.2}", large * 1e3),
        format!("{:.2}", small * 1e3),
        large / small,
        &format!("< 5 ({lists:.0} list + {gets:.0} get requests per call)"),
    );
    drop(api);
    // Local store.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    populate(&store, "sources", 10);
    populate(&store, "sinks", big);
    let (api, _) = spawn(
        env!("CARGO_BIN_EXE_plugin-api"),
        &[("KUIPER_STORE", store.display().to_string())],
    )
    .await;
    time_list(&api.base, "sinks", 1).await;
    time_list(&api.base, "sources", 1).await;
    let small = time_list(&api.base, "sources", 30).await;
    let large = time_list(&api.base, "sinks", 9).await;
    row(
        &format!("3. local list {big} plugins vs 10 (ms)"),
        format!("{:.2}", large * 1e3),
        format!("{:.2}", small * 1e3),
        large / small,
        "< 5",
    );
}

/// Row 12: `GET /nodes` over 10,000 node reports and 1,000 plugins in the
/// bench's S3 server (written straight into its bucket directory): requests
/// and time for a page of 100 and of 1,000.
async fn bench_nodes() {
    let (nodes, plugins) = if quick() {
        (2_000, 200)
    } else {
        (10_000, 1_000)
    };
    let s3 = S3Server::start("nodes").await;
    // The metadata through the S3 API, so that its listing carries entity
    // tags as AWS S3's does (files written into the bucket directory have none).
    let client = s3_client(&s3).await;
    futures_util::stream::iter(0..plugins)
        .map(|i| {
            client
                .put_object()
                .bucket(s3.bucket())
                .key(format!("plugins/sinks/p{i:05}.json"))
                .body(b"{}".to_vec().into())
                .send()
        })
        .buffer_unordered(32)
        .for_each(|r| async move {
            r.expect("put metadata");
        })
        .await;
    let dir = s3.bucket_dir().join("nodes");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..nodes {
        let id = format!("edge-{i:05}");
        let plugins: Vec<_> = (0..20)
            .map(|k| {
                serde_json::json!({"type": "sinks", "name": format!("p{:05}", (i + k) % plugins),
                    "version": "1.0.0", "id": "x", "sha256": "00", "metaEtag": "\"e\"", "outcome": "loaded"})
            })
            .collect();
        let report = serde_json::json!({"format": 1, "nodeId": id, "hostname": "h", "arch": "x86_64",
            "libc": "glibc", "agentVersion": "0.1.0", "mode": "ekuiper", "started": "2026-12-01T00:00:00Z",
            "synced": "2026-12-01T00:00:00Z", "reported": "2026-12-01T00:00:00Z",
            "reportIntervalSecs": 60, "plugins": plugins});
        std::fs::write(dir.join(format!("{id}.json")), report.to_string()).unwrap();
    }
    let (api, _) = spawn(env!("CARGO_BIN_EXE_plugin-api"), &s3_env(&s3)).await;
    let (t100, l100, g100) = time_get(&api.base, &s3, "/nodes?limit=100").await;
    let (t1000, l1000, g1000) = time_get(&api.base, &s3, "/nodes?limit=1000").await;
    row(
        &format!("12. GET /nodes page of 1000 vs 100, of {nodes} nodes (ms)"),
        format!("{:.1}", t1000 * 1e3),
        format!("{:.1}", t100 * 1e3),
        t1000 / t100,
        &format!(
            "< 3 (1000: {l1000} list + {g1000} get; 100: {l100} list + {g100} get; {plugins} plugins)"
        ),
    );
}

/// The median time of 3 `GET {path}`, and the list and get requests of one.
async fn time_get(base: &str, s3: &S3Server, path: &str) -> (f64, u64, u64) {
    let http = reqwest::Client::new();
    let stats = s3.stats();
    let (l0, g0) = (
        stats.lists.load(Ordering::SeqCst),
        stats.gets.load(Ordering::SeqCst),
    );
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let _ = r.bytes().await.unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    let lists = (stats.lists.load(Ordering::SeqCst) - l0) / 3;
    let gets = (stats.gets.load(Ordering::SeqCst) - g0) / 3;
    (median(times), lists, gets)
}

/// Writes back every dirty page (`sync`), so that a measurement does not pay
/// for what was written before it.
fn flush_page_cache() {
    let status = std::process::Command::new("sync")
        .status()
        .expect("run sync");
    assert!(status.success(), "sync failed");
}

/// Row 4 for `n` plugins of 1 MiB zips, `deflated` or stored; with
/// `unchanged`, also the sync that finds nothing changed.
async fn bench_node(files: &FileHost, deflated: bool, unchanged: bool) {
    let n: usize = if quick() { 40 } else { 200 };
    let kind = if deflated { "deflated" } else { "stored" };
    let s3 = S3Server::start("fleet").await;
    let (api, _) = spawn(env!("CARGO_BIN_EXE_plugin-api"), &s3_env(&s3)).await;
    // The small C example library (the Rust example is a 4 MB debug build),
    // padded so that each zip is 1 MiB.
    let so = CPlugin::new("print", 1, "1.0.0").so();
    let payload = MIB - so.len() - 512;
    let mut zip_bytes = 0;
    for i in 0..n {
        let name = format!("n{i:03}");
        let seed = i as u64 + 100;
        let zip = if deflated {
            deflated_plugin_zip(&name, so.clone(), payload, seed)
        } else {
            plugin_zip(&name, so.clone(), payload, seed)
        };
        zip_bytes += zip.len();
        let url = files.serve(&format!("/node/{kind}/{name}.zip"), zip).await;
        create(&api.base, "sinks", &name, &url).await;
    }
    drop(api);
    let dir = tempfile::tempdir().unwrap();
    let stats = s3.stats().clone();
    // A first or a later sync into `root` with `extra` flags: its time (s),
    // its CPU seconds and, when `watched`, its peak RSS (MiB).
    let sync_with = |root: std::path::PathBuf, extra: &'static [&'static str], watched: bool| {
        let envs = s3_env(&s3);
        async move {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kuiper-node"));
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default());
            for (k, v) in envs {
                cmd.env(k, v);
            }
            cmd.arg("sync").arg("--root").arg(&root).args(extra);
            tokio::task::spawn_blocking(move || run_measured(cmd, watched))
                .await
                .unwrap()
        }
    };
    let sync = |root: std::path::PathBuf| {
        let run = sync_with(root, &[], false);
        async move {
            let (took, cpu, _) = run.await;
            (took, cpu)
        }
    };
    let counts = || {
        (
            stats.blob_gets.load(Ordering::SeqCst),
            stats.lists.load(Ordering::SeqCst),
            stats.gets.load(Ordering::SeqCst),
        )
    };
    // Baseline: the same zips fetched in parallel (8 at a time, as the node) with a plain client.
    let client = s3_client(&s3).await;
    let keys: Vec<String> = std::fs::read_dir(s3.bucket_dir().join("plugins/sinks"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            meta["blob"].as_str().unwrap().to_string()
        })
        .collect();
    let fetch_all = |base_dir: std::path::PathBuf| {
        let (client, keys, bucket) = (client.clone(), keys.clone(), s3.bucket().to_string());
        async move {
            std::fs::create_dir_all(&base_dir).unwrap();
            let t = Instant::now();
            futures_util::stream::iter(keys.iter().enumerate())
                .for_each_concurrent(8, |(i, key)| {
                    let (client, bucket, path) = (
                        client.clone(),
                        bucket.clone(),
                        base_dir.join(format!("{i}.zip")),
                    );
                    async move {
                        let out = client
                            .get_object()
                            .bucket(bucket)
                            .key(key)
                            .send()
                            .await
                            .unwrap();
                        let mut f = tokio::fs::File::create(path).await.unwrap();
                        let mut body = out.body;
                        while let Some(chunk) = body.try_next().await.unwrap() {
                            f.write_all(&chunk).await.unwrap();
                        }
                    }
                })
                .await;
            t.elapsed().as_secs_f64()
        }
    };
    // First syncs into fresh directories, alternating with the baseline: a
    // run takes about a second, so one pair is at the mercy of a shared
    // machine. The node makes what it installs durable (one syncfs per
    // commit group), and syncfs also writes back whatever else is dirty on
    // the filesystem (at first, the 200 MiB the S3 server has just stored):
    // dirty pages are written back before each run, so that each pays for
    // its own files only.
    let (mut firsts, mut baselines) = (Vec::new(), Vec::new());
    let mut downloads = Vec::new();
    // CPU seconds per run: kuiper-node's, this process's (the S3 server)
    // during the sync, and this process's (client and server) during the fetch.
    let (mut node_cpu, mut server_cpu, mut baseline_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let rounds = if quick() { 1 } else { 5 };
    for round in 0..rounds {
        flush_page_cache();
        let c0 = counts();
        let s0 = own_cpu_secs();
        let (took, cpu) = sync(dir.path().join(format!("node-{round}"))).await;
        firsts.push(took);
        node_cpu.push(cpu);
        server_cpu.push(own_cpu_secs() - s0);
        downloads.push(counts().0 - c0.0);
        flush_page_cache();
        let b0 = own_cpu_secs();
        baselines.push(fetch_all(dir.path().join(format!("baseline-{round}"))).await);
        baseline_cpu.push(own_cpu_secs() - b0);
    }
    let (first, baseline) = (median(firsts), median(baselines));
    let (nc, sc, bc) = (median(node_cpu), median(server_cpu), median(baseline_cpu));
    row(
        &format!("4. node first sync, {n} {kind} zips (s) vs fetch"),
        format!("{first:.3}"),
        format!("{baseline:.3}"),
        first / baseline,
        &format!(
            "<= 1.5 (median of {rounds}; zip downloads per sync {downloads:?}, {:.2} MiB each; \
             CPU s: kuiper-node {nc:.2} + server {sc:.2} = {:.2}, vs {bc:.2} for the fetch; \
             CPU floor {:.2})",
            zip_bytes as f64 / n as f64 / MIB as f64,
            nc + sc,
            cpu_floor(nc + sc, baseline)
        ),
    );
    // The node's peak memory with its default budget, and time and memory
    // with none (`--memory-bytes 0`: every zip through disk, every entry
    // decoded as a stream), against the same fetch: runs of their own,
    // alternating, with the memory read every 5 ms while they run. Each
    // node directory is removed after its run.
    let (mut no_budget, mut no_budget_peak, mut default_peak) = (Vec::new(), 0.0f64, 0.0f64);
    for round in 0..rounds.min(3) {
        let budgets: [&'static [&'static str]; 2] = [&[], &["--memory-bytes", "0"]];
        for extra in budgets {
            flush_page_cache();
            let root = dir.path().join(format!("node-watched-{round}"));
            let (took, _, peak) = sync_with(root.clone(), extra, true).await;
            std::fs::remove_dir_all(&root).expect("remove the node directory");
            if !extra.is_empty() {
                no_budget.push(took);
                no_budget_peak = no_budget_peak.max(peak);
            } else {
                default_peak = default_peak.max(peak);
            }
        }
    }
    let no_budget = median(no_budget);
    row(
        &format!("4. node first sync, {kind}, --memory-bytes 0 (s) vs fetch"),
        format!("{no_budget:.3}"),
        format!("{baseline:.3}"),
        no_budget / baseline,
        &format!(
            "report (highest peak RSS over the runs {no_budget_peak:.1} MiB; \
             {default_peak:.1} MiB with the default 64 MiB budget)"
        ),
    );
    if !unchanged {
        return;
    }
    // Again into the last round's directory, where nothing has changed.
    let c1 = counts();
    let (again, _) = sync(dir.path().join(format!("node-{}", rounds - 1))).await;
    let c2 = counts();
    row(
        "4. node sync with nothing changed (s)",
        format!("{again:.3}"),
        "-".into(),
        0.0,
        &format!(
            "{} zip downloads (target 0), {} list requests (target <= {}), {} gets",
            c2.0 - c1.0,
            c2.1 - c1.1,
            n.div_ceil(1000) + 1,
            c2.2 - c1.2
        ),
    );
}

async fn bench_cold_start(s3: &S3Server) {
    let (mut ours, mut hello) = (Vec::new(), Vec::new());
    let (mut ours_line, mut hello_line) = (Vec::new(), Vec::new());
    let (mut ours_local, mut ours_list) = (Vec::new(), Vec::new());
    let local_dir = tempfile::tempdir().expect("tempdir");
    let local_env = [("KUIPER_STORE", local_dir.path().display().to_string())];
    // Alternating, so that all see the same machine; a start takes a few
    // milliseconds, so the median of many is needed on a shared machine.
    for _ in 0..if quick() { 5 } else { 41 } {
        let (p, t) = spawn(env!("CARGO_BIN_EXE_plugin-api"), &s3_env(s3)).await;
        ours.push(t.as_secs_f64());
        ours_line.push(p.listening.as_secs_f64());
        drop(p);
        let (p, t) = spawn(env!("CARGO_BIN_EXE_plugin-api"), &local_env).await;
        ours_local.push(t.as_secs_f64());
        drop(p);
        let (p, t) = spawn_answering(
            env!("CARGO_BIN_EXE_plugin-api"),
            &s3_env(s3),
            "/plugins/sources",
        )
        .await;
        ours_list.push(t.as_secs_f64());
        drop(p);
        let (p, t) = spawn(env!("CARGO_BIN_EXE_hello-baseline"), &[]).await;
        hello.push(t.as_secs_f64());
        hello_line.push(p.listening.as_secs_f64());
        drop(p);
    }
    let ms_row = |figure: &str, ours: Vec<f64>, hello: Vec<f64>, target: &str| {
        let (o, h) = (median(ours), median(hello));
        row(
            figure,
            format!("{:.1}", o * 1e3),
            format!("{:.1}", h * 1e3),
            o / h,
            target,
        );
    };
    ms_row(
        "5. cold start to first answer (ms) vs hello-world",
        ours,
        hello.clone(),
        "<= 1.5",
    );
    ms_row(
        "5. the same with the local store (ms) vs hello-world",
        ours_local,
        hello.clone(),
        "report (no S3 client; the store is checked before listening)",
    );
    ms_row(
        "5. S3 store: cold start to a first list (ms) vs hello ping",
        ours_list,
        hello,
        "report (the first store request builds the S3 client)",
    );
    ms_row(
        "5. of which, S3 store: start to the listening line (ms)",
        ours_line,
        hello_line,
        "report (process start: loading, runtime, arguments, router)",
    );
    let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / MIB as f64;
    row(
        "5. binary size (MiB) vs hello-world",
        format!("{:.1}", size(env!("CARGO_BIN_EXE_plugin-api"))),
        format!("{:.1}", size(env!("CARGO_BIN_EXE_hello-baseline"))),
        size(env!("CARGO_BIN_EXE_plugin-api")) / size(env!("CARGO_BIN_EXE_hello-baseline")),
        "report",
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / test discovery
    }
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start("plugins").await;
    let files = FileHost::start().await;
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
    );
    println!(
        "{:<58} {:>14} {:>14} {:>7}  target",
        "figure", "value", "baseline", "ratio"
    );
    if ["create", "create-stored", "create-deflated"]
        .into_iter()
        .any(wanted)
    {
        bench_create(&s3, &files, dir.path()).await;
    }
    if wanted("rss") {
        bench_rss(&s3, &files).await;
    }
    if wanted("list") {
        bench_listing().await;
    }
    if wanted("node") || wanted("node-stored") {
        bench_node(&files, false, true).await;
    }
    if wanted("node") || wanted("node-deflated") {
        // Plugin zips are usually deflated (`zip -r`): the node then
        // decompresses each library as it checks and extracts it.
        bench_node(&files, true, false).await;
    }
    if wanted("cold") {
        bench_cold_start(&s3).await;
    }
    if wanted("nodes") {
        bench_nodes().await;
    }
}
