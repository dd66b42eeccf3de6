//! The deployment files against the code they deploy, so neither drifts:
//!
//! - `infra/compose.yaml`: services, the published port, every `KUIPER_*` and
//!   `AWS_*` variable, and the command lines, checked against what the real
//!   binaries say in `--help` (clap prints `[env: NAME=]` for each variable);
//! - `infra/Dockerfile`: builds and ships both binaries, runs as non-root;
//! - `template.yaml` (AWS SAM): the function, its variables and timeouts, the
//!   HTTP API routes against `api::ROUTES`, the bucket and the IAM policy;
//! - `openapi.yaml`: exactly the routes of `api::ROUTES`, and the bodies of the
//!   Rust types the handlers serialise and parse.
//!
//! Nothing here uses the network, Docker or AWS.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use axum::response::IntoResponse;
use kuiper_registry::api::error::ApiError;
use kuiper_registry::api::{handlers, ROUTES};
use kuiper_registry::package::{
    BuildFingerprint, GoBuild, GoModule, Libc, PackageFile, PluginType,
};
use kuiper_registry::registry::{EkuiperTarget, PluginMeta, PluginRequest, UdfOwner};
use kuiper_registry::store::keys;
use serde_json::{json, Value};

const PLUGIN_API: &str = env!("CARGO_BIN_EXE_plugin-api");
const KUIPER_NODE: &str = env!("CARGO_BIN_EXE_kuiper-node");

/// The binaries the image ships, by name.
const BINARIES: [(&str, &str); 2] = [("plugin-api", PLUGIN_API), ("kuiper-node", KUIPER_NODE)];

/// Variables read by the AWS SDK (S3 access) besides the binaries' own.
const AWS_VARIABLES: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_EC2_METADATA_DISABLED",
];

/// Variables of the Rust runtime and logging.
const RUNTIME_VARIABLES: &[&str] = &["RUST_LOG", "RUST_BACKTRACE"];

/// API Gateway's HTTP API integration timeout, the most a request can take.
const HTTP_API_MAX_SECS: u64 = 30;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---------------------------------------------------------------------------
// YAML, read into JSON values.

/// Parses YAML (merge keys applied; CloudFormation short-form tags such as
/// `!Ref X` or `!GetAtt A.B` turned into their long form) into JSON.
fn yaml(rel: &str) -> Value {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
    to_json(doc)
}

fn to_json(v: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64())
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let value = to_json(tagged.value);
            match name {
                "Ref" | "Condition" => json!({ name: value }),
                "GetAtt" => match value {
                    Value::String(s) => {
                        let (res, attr) = s.split_once('.').unwrap_or((&s, ""));
                        json!({ "Fn::GetAtt": [res, attr] })
                    }
                    other => json!({ "Fn::GetAtt": other }),
                },
                _ => json!({ format!("Fn::{name}"): value }),
            }
        }
    }
}

/// `v` as a string, or a panic naming `what`.
fn string<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, is {v}"))
}

fn object<'a>(v: &'a Value, what: &str) -> &'a serde_json::Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} should be a mapping, is {v}"))
}

// ---------------------------------------------------------------------------
// The binaries' command lines, from their `--help`.

/// One option of a command, as `--help` shows it.
#[derive(Debug, Clone, Default)]
struct Opt {
    takes_value: bool,
    env: Option<String>,
    default: Option<String>,
    possible: Option<Vec<String>>,
}

/// A command (or subcommand) as `--help` shows it.
#[derive(Debug, Default)]
struct Cli {
    /// `--long` name -> option.
    options: BTreeMap<String, Opt>,
    /// Options the usage line requires (`--store <STORE>` outside `[OPTIONS]`).
    required: BTreeSet<String>,
    subcommands: BTreeMap<String, Cli>,
}

impl Cli {
    /// Reads the help of `bin` and, recursively, of its subcommands.
    fn of(bin: &str) -> Cli {
        Cli::read(bin, &mut Vec::new())
    }

    fn read(bin: &str, path: &mut Vec<String>) -> Cli {
        let out = Command::new(bin)
            .args(path.iter())
            .arg("--help")
            .env_clear()
            .output()
            .unwrap_or_else(|e| panic!("run {bin} --help: {e}"));
        assert!(
            out.status.success(),
            "{bin} {path:?} --help failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("help is UTF-8");
        let mut cli = Cli::parse(&text);
        let names: Vec<String> = commands_section(&text);
        for name in names {
            path.push(name.clone());
            let sub = Cli::read(bin, path);
            path.pop();
            cli.subcommands.insert(name, sub);
        }
        cli
    }

    fn parse(text: &str) -> Cli {
        let mut cli = Cli::default();
        if let Some(usage) = text.lines().find(|l| l.starts_with("Usage:")) {
            let tokens: Vec<&str> = usage.split_whitespace().collect();
            for pair in tokens.windows(2) {
                // (`-- <COMMAND>...` is a trailing command, not an option.)
                if pair[0].starts_with("--") && pair[0] != "--" && pair[1].starts_with('<') {
                    cli.required.insert(pair[0].to_string());
                }
            }
        }
        // An option block: an option line, then its description lines.
        let mut current: Option<(String, Opt, String)> = None;
        fn finish(cur: Option<(String, Opt, String)>, cli: &mut Cli) {
            if let Some((name, mut opt, block)) = cur {
                // `[env: NAME=]`, or `[env: NAME=value]` when set.
                opt.env = bracket(&block, "env:").map(|e| e.split('=').next().unwrap().to_string());
                opt.default = bracket(&block, "default:");
                opt.possible = bracket(&block, "possible values:")
                    .map(|p| p.split(',').map(|s| s.trim().to_string()).collect());
                cli.options.insert(name, opt);
            }
        }
        for line in text.lines() {
            let trimmed = line.trim_start();
            let is_option_line = trimmed.starts_with('-') && line.starts_with(' ');
            if is_option_line {
                finish(current.take(), &mut cli);
                let mut long = None;
                let mut takes_value = false;
                for tok in trimmed.split_whitespace() {
                    let tok = tok.trim_end_matches(',');
                    if tok.starts_with("--") {
                        long = Some(tok.to_string());
                    } else if tok.starts_with('<') {
                        takes_value = true;
                    } else if !tok.starts_with('-') {
                        break;
                    }
                }
                if let Some(name) = long {
                    current = Some((
                        name,
                        Opt {
                            takes_value,
                            ..Opt::default()
                        },
                        trimmed.to_string(),
                    ));
                }
            } else if let Some((_, _, block)) = current.as_mut() {
                if line.trim().is_empty() || !line.starts_with(' ') {
                    finish(current.take(), &mut cli);
                } else {
                    block.push(' ');
                    block.push_str(trimmed);
                }
            }
        }
        finish(current.take(), &mut cli);
        cli
    }

    /// The command reached by `path` (subcommand names).
    fn sub(&self, path: &[&str]) -> &Cli {
        path.iter().fold(self, |cli, name| {
            cli.subcommands
                .get(*name)
                .unwrap_or_else(|| panic!("no subcommand {name}"))
        })
    }

    /// Variables read by this command's own options.
    fn env_vars(&self) -> BTreeMap<String, Opt> {
        self.options
            .values()
            .filter_map(|o| o.env.clone().map(|e| (e, o.clone())))
            .collect()
    }
}

/// The text in `[KEY ...]`, e.g. `bracket("[default: 25]", "default:")`.
fn bracket(block: &str, key: &str) -> Option<String> {
    let start = block.find(&format!("[{key}"))? + key.len() + 1;
    let end = block[start..].find(']')? + start;
    Some(block[start..end].trim().to_string())
}

/// The subcommands in the `Commands:` section, without `help`.
fn commands_section(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if line.trim().is_empty() || !line.starts_with(' ') {
                break;
            }
            let name = line.split_whitespace().next().unwrap().to_string();
            if name != "help" {
                names.push(name);
            }
        }
    }
    names
}

struct Binaries {
    clis: BTreeMap<&'static str, Cli>,
}

impl Binaries {
    fn read() -> Binaries {
        Binaries {
            clis: BINARIES
                .iter()
                .map(|&(name, path)| (name, Cli::of(path)))
                .collect(),
        }
    }

    fn cli(&self, name: &str) -> &Cli {
        self.clis
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not one of our binaries {BINARIES:?}"))
    }
}

/// Checks an argument vector (`plugin-api serve`, `kuiper-node run --store ...`)
/// against the binary's CLI: subcommands, flags, values, required options.
fn check_argv(bins: &Binaries, argv: &[String], env: &BTreeMap<String, String>, what: &str) {
    let bin = Path::new(&argv[0])
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let top = bins.cli(&bin);
    let mut path: Vec<&str> = Vec::new();
    let mut i = 1;
    // Subcommands come first.
    while i < argv.len() && !argv[i].starts_with('-') {
        let cli = top.sub(&path);
        assert!(
            cli.subcommands.contains_key(argv[i].as_str()),
            "{what}: `{}` is not a subcommand of `{bin} {}` (it has {:?})",
            argv[i],
            path.join(" "),
            cli.subcommands.keys().collect::<Vec<_>>()
        );
        path.push(argv[i].as_str());
        i += 1;
    }
    let cli = top.sub(&path);
    let mut given = BTreeSet::new();
    while i < argv.len() {
        let arg = &argv[i];
        if arg == "--" {
            // The rest is a command the binary runs (`kuiper-node ekuiper -- kuiperd`).
            break;
        }
        let (flag, inline_value) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let opt = cli.options.get(&flag).unwrap_or_else(|| {
            panic!(
                "{what}: `{flag}` is not an option of `{bin} {}` (it has {:?})",
                path.join(" "),
                cli.options.keys().collect::<Vec<_>>()
            )
        });
        let value = if opt.takes_value {
            match inline_value {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    Some(
                        argv.get(i)
                            .unwrap_or_else(|| panic!("{what}: `{flag}` needs a value"))
                            .clone(),
                    )
                }
            }
        } else {
            assert!(inline_value.is_none(), "{what}: `{flag}` takes no value");
            None
        };
        if let (Some(v), Some(possible)) = (&value, &opt.possible) {
            assert!(
                possible.contains(v),
                "{what}: `{flag} {v}`: not one of {possible:?}"
            );
        }
        given.insert(flag);
        i += 1;
    }
    for req in &cli.required {
        let by_env = cli.options[req]
            .env
            .as_ref()
            .is_some_and(|e| env.contains_key(e));
        assert!(
            given.contains(req) || by_env,
            "{what}: `{bin} {}` needs {req} (or its variable)",
            path.join(" ")
        );
    }
}

/// Checks that every variable in `env` is read by `cli` (the command that
/// runs), the AWS SDK or the Rust runtime, with an acceptable value.
fn check_env(cli_vars: &BTreeMap<String, Opt>, env: &BTreeMap<String, String>, what: &str) {
    for (name, value) in env {
        if AWS_VARIABLES.contains(&name.as_str()) || RUNTIME_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        // eKuiper's own settings (`KUIPER__SECTION__KEY`), for the eKuiper that
        // `kuiper-node ekuiper` runs; it reads the REST port from them too.
        if name.starts_with("KUIPER__") {
            continue;
        }
        let opt = cli_vars.get(name).unwrap_or_else(|| {
            panic!(
                "{what}: {name} is not read by the binary (it reads {:?}, plus AWS_* and RUST_LOG)",
                cli_vars.keys().collect::<Vec<_>>()
            )
        });
        if let Some(possible) = &opt.possible {
            assert!(
                possible.contains(value),
                "{what}: {name}={value}: not one of {possible:?}"
            );
        }
    }
}

#[test]
fn help_shows_the_variables_and_subcommands_the_checks_rely_on() {
    // Guards the checks below against a help format they no longer read.
    let bins = Binaries::read();
    let api = bins.cli("plugin-api");
    for var in [
        "KUIPER_STORE",
        "KUIPER_LISTEN",
        "KUIPER_INSECURE",
        "KUIPER_DOWNLOAD_TIMEOUT_SECS",
    ] {
        assert!(
            api.env_vars().contains_key(var),
            "plugin-api --help lacks {var}"
        );
    }
    assert_eq!(
        api.env_vars()["KUIPER_DOWNLOAD_TIMEOUT_SECS"]
            .default
            .as_deref(),
        Some("25")
    );
    assert!(api.subcommands.contains_key("serve") && api.subcommands.contains_key("gc"));
    assert!(api.sub(&["gc"]).options.contains_key("--min-age-secs"));
    let node = bins.cli("kuiper-node");
    for sub in ["sync", "run"] {
        let cli = node.sub(&[sub]);
        assert!(
            cli.env_vars().contains_key("KUIPER_STORE"),
            "kuiper-node {sub}"
        );
        assert!(cli.required.contains("--store") && cli.required.contains("--root"));
        assert!(cli.options["--store"].takes_value);
    }
    assert!(!node.sub(&["run"]).options["--once"].takes_value);
    // A variable no binary reads is refused.
    let err = std::panic::catch_unwind(|| {
        check_env(
            &api.env_vars(),
            &BTreeMap::from([("KUIPER_NO_SUCH".to_string(), "1".to_string())]),
            "probe",
        )
    });
    assert!(err.is_err(), "an unknown KUIPER_ variable must be refused");
}

// ---------------------------------------------------------------------------
// infra/compose.yaml and infra/Dockerfile

const COMPOSE: &str = "infra/compose.yaml";
const DOCKERFILE: &str = "infra/Dockerfile";

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    object(&compose["services"], "services")
}

/// A service's environment as a map (mapping or `NAME=value` list form).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let s = string(i, "environment entry");
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("environment should be a mapping or a list, is {other}"),
    }
}

/// A command or entrypoint as an argument vector.
fn argv_of(v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| string(i, "command item").to_string())
            .collect(),
        other => panic!("command should be a string or a list, is {other}"),
    }
}

/// The final stage of the Dockerfile: its instructions, continuation lines joined.
fn dockerfile_stages() -> Vec<Vec<String>> {
    let text = read(DOCKERFILE);
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') && cur.is_empty() || t.is_empty() && cur.is_empty() {
            continue;
        }
        if let Some(stripped) = t.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
        } else {
            cur.push_str(t);
            joined.push(std::mem::take(&mut cur));
        }
    }
    let mut stages: Vec<Vec<String>> = Vec::new();
    for ins in joined {
        if ins.to_ascii_uppercase().starts_with("FROM ") {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("instructions before FROM")
            .push(ins);
    }
    stages
}

/// The image's default command (the final stage's `CMD`, exec form).
fn image_cmd() -> Vec<String> {
    let stages = dockerfile_stages();
    let cmd = stages
        .last()
        .unwrap()
        .iter()
        .rev()
        .find(|i| i.starts_with("CMD "))
        .expect("the final stage has a CMD");
    serde_json::from_str(&cmd[4..]).expect("CMD in exec form")
}

/// Which services run our image (they have `build` with our Dockerfile, or its tag).
fn our_image_services(compose: &Value) -> Vec<(String, &Value)> {
    let tag = services(compose)["plugin-api"]["image"]
        .as_str()
        .map(str::to_string);
    services(compose)
        .iter()
        .filter(|(_, s)| {
            s["build"]["dockerfile"].as_str().is_some()
                || (tag.is_some() && s["image"].as_str() == tag.as_deref())
        })
        .map(|(n, s)| (n.clone(), s))
        .collect()
}

/// Which services run one of our binaries: from our image, or (the stock
/// eKuiper service) from the volume that carries kuiper-node into its container.
fn our_services(compose: &Value) -> Vec<(String, &Value)> {
    let ours = |s: &Value| {
        let argv = service_argv(s);
        let bin = argv
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|f| f.to_string_lossy().to_string());
        BINARIES.iter().any(|(b, _)| Some(*b) == bin.as_deref())
    };
    services(compose)
        .iter()
        .filter(|(_, s)| ours(s))
        .map(|(n, s)| (n.clone(), s))
        .collect()
}

/// The argument vector a service of our image runs.
fn service_argv(service: &Value) -> Vec<String> {
    let mut argv = argv_of(&service["entrypoint"]);
    let cmd = argv_of(&service["command"]);
    if argv.is_empty() {
        argv = if cmd.is_empty() { image_cmd() } else { cmd };
    } else {
        argv.extend(cmd);
    }
    argv
}

/// The value of `--flag` in `argv`, if given.
fn flag_value(argv: &[String], flag: &str) -> Option<String> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            argv.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

/// The bucket of an `s3://BUCKET[/PREFIX]` store.
fn bucket_of(store: &str) -> &str {
    let rest = store
        .strip_prefix("s3://")
        .unwrap_or_else(|| panic!("{store} is not an s3:// store"));
    rest.split('/').next().unwrap()
}

#[test]
fn compose_has_the_services_and_wires_them_in_order() {
    let compose = yaml(COMPOSE);
    let svc = services(&compose);
    for name in ["minio", "create-bucket", "plugin-api", "kuiper-node"] {
        assert!(svc.contains_key(name), "{COMPOSE} lacks the {name} service");
    }
    assert!(string(&svc["minio"]["image"], "minio image").starts_with("minio/minio"));
    assert!(
        !svc["minio"]["healthcheck"]["test"].is_null(),
        "minio needs a healthcheck (create-bucket waits for it)"
    );
    assert!(string(&svc["create-bucket"]["image"], "create-bucket image").starts_with("minio/mc"));
    assert_eq!(
        svc["create-bucket"]["depends_on"]["minio"]["condition"], "service_healthy",
        "create-bucket must wait for a healthy minio"
    );
    for (name, s) in our_services(&compose) {
        assert_eq!(
            s["depends_on"]["create-bucket"]["condition"], "service_completed_successfully",
            "{name} must start once the bucket exists"
        );
    }

    // Every store of our services is the bucket create-bucket makes.
    let setup = argv_of(&svc["create-bucket"]["command"]).join(" ");
    let tokens: Vec<&str> = setup
        .split(|c: char| c.is_whitespace() || c == ';' || c == '&')
        .filter(|t| !t.is_empty())
        .collect();
    // `mc mb [--flags] ALIAS/BUCKET`
    let made: Vec<String> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == "mb")
        .filter_map(|(i, _)| tokens[i + 1..].iter().find(|t| !t.starts_with("--")))
        .map(|t| t.rsplit('/').next().unwrap().to_string())
        .collect();
    assert!(!made.is_empty(), "create-bucket runs no `mc mb`: {setup}");
    let mut stores = 0;
    for (name, s) in our_services(&compose) {
        let env = environment(s);
        let argv = service_argv(s);
        let store = flag_value(&argv, "--store").or_else(|| env.get("KUIPER_STORE").cloned());
        let store = store.unwrap_or_else(|| panic!("{name} has no store"));
        assert!(
            made.iter().any(|b| b == bucket_of(&store)),
            "{name} uses {store} but create-bucket makes {made:?}"
        );
        stores += 1;
    }
    assert!(stores >= 2, "plugin-api and kuiper-node share the bucket");
}

#[test]
fn compose_publishes_the_port_plugin_api_listens_on() {
    let compose = yaml(COMPOSE);
    let api = &services(&compose)["plugin-api"];
    let env = environment(api);
    let listen: SocketAddr = env
        .get("KUIPER_LISTEN")
        .expect("plugin-api sets KUIPER_LISTEN")
        .parse()
        .expect("KUIPER_LISTEN is ADDRESS:PORT");
    assert!(
        listen.ip().is_unspecified(),
        "in a container plugin-api must listen on 0.0.0.0 to be reachable, not {listen}"
    );
    let ports = api["ports"].as_array().expect("plugin-api publishes ports");
    let mut published = Vec::new();
    for p in ports {
        let (host_ip, target) = match p {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let target = parts.last().unwrap().split('/').next().unwrap();
                let host_ip = if parts.len() == 3 {
                    Some(parts[0].to_string())
                } else {
                    None
                };
                (host_ip, target.parse::<u16>().expect("container port"))
            }
            Value::Object(m) => (
                m.get("host_ip").and_then(Value::as_str).map(str::to_string),
                m["target"].as_u64().expect("target port") as u16,
            ),
            other => panic!("port entry {other}"),
        };
        published.push((host_ip, target));
    }
    let matching: Vec<_> = published
        .iter()
        .filter(|(_, t)| *t == listen.port())
        .collect();
    assert!(
        !matching.is_empty(),
        "plugin-api listens on port {} but publishes {published:?}",
        listen.port()
    );
    // The service refuses a non-loopback listen without authentication unless
    // KUIPER_INSECURE=true; an unauthenticated API is published on loopback only.
    let insecure = env.get("KUIPER_INSECURE").map(String::as_str) == Some("true");
    let auth = env.contains_key("KUIPER_AUTH_KEYS_DIR");
    assert!(
        insecure || auth,
        "plugin-api would refuse to start: listening on {listen} needs KUIPER_AUTH_KEYS_DIR or KUIPER_INSECURE=true"
    );
    if !auth {
        for (host_ip, _) in matching {
            assert_eq!(
                host_ip.as_deref(),
                Some("127.0.0.1"),
                "an unauthenticated API must be published on the host's loopback only"
            );
        }
    }
}

#[test]
fn compose_variables_are_ones_the_binaries_read() {
    let bins = Binaries::read();
    let compose = yaml(COMPOSE);
    let mut checked = 0;
    for (name, s) in our_services(&compose) {
        let argv = service_argv(s);
        let bin = Path::new(&argv[0])
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let top = bins.cli(&bin);
        // The variables of the command that runs: the binary's and its subcommand's.
        let sub: Vec<&str> = argv[1..]
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .map(String::as_str)
            .collect();
        let mut vars = top.env_vars();
        let mut cli = top;
        for s in &sub {
            cli = cli.sub(&[s]);
            vars.extend(cli.env_vars());
        }
        let env = environment(s);
        check_env(&vars, &env, &format!("{COMPOSE} service {name}"));
        checked += env.len();
    }
    assert!(
        checked >= 10,
        "expected the services to set their variables"
    );
}

#[test]
fn compose_commands_use_the_binaries_subcommands_and_flags() {
    let bins = Binaries::read();
    let compose = yaml(COMPOSE);
    let mut seen = BTreeSet::new();
    for (name, s) in our_services(&compose) {
        let argv = service_argv(s);
        let env = environment(s);
        check_argv(&bins, &argv, &env, &format!("{COMPOSE} service {name}"));
        seen.insert(argv[0].clone());
    }
    assert!(
        seen.contains("kuiper-node") && seen.contains("plugin-api"),
        "{seen:?}"
    );
    let node = argv_of(&services(&compose)["kuiper-node"]["command"]);
    assert_eq!(
        node.get(1).map(String::as_str),
        Some("run"),
        "the node runs `kuiper-node run`"
    );
    // The stock eKuiper runs kuiper-node, copied into its container by kuiper-node-bin.
    let ekuiper = &services(&compose)["ekuiper"];
    assert!(
        string(&ekuiper["image"], "ekuiper image").starts_with("lfedge/ekuiper:2.4.0"),
        "the tested eKuiper version"
    );
    let argv = service_argv(ekuiper);
    assert_eq!(argv.get(1).map(String::as_str), Some("ekuiper"), "{argv:?}");
    let copy = service_argv(&services(&compose)["kuiper-node-bin"]);
    assert_eq!(
        copy.last(),
        argv.first(),
        "runs the binary kuiper-node-bin copies"
    );
    assert_eq!(
        ekuiper["depends_on"]["kuiper-node-bin"]["condition"], "service_completed_successfully",
        "eKuiper starts once the binary is there"
    );
    let child = &argv[argv.iter().position(|a| a == "--").expect("-- kuiperd") + 1..];
    assert_eq!(child, ["/kuiper/bin/kuiperd"], "the image's own kuiperd");
}

#[test]
fn dockerfile_ships_both_binaries_as_non_root() {
    let compose = yaml(COMPOSE);
    // The build of compose's image is this Dockerfile, relative to its context.
    for (name, s) in our_image_services(&compose) {
        let build = &s["build"];
        let context = repo()
            .join("infra")
            .join(string(&build["context"], "build context"));
        let file = context.join(string(&build["dockerfile"], "dockerfile"));
        assert_eq!(
            file.canonicalize().unwrap(),
            repo().join(DOCKERFILE).canonicalize().unwrap(),
            "service {name} builds another Dockerfile"
        );
    }
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a multi-stage build");
    let all: Vec<&String> = stages.iter().flatten().collect();
    let last = stages.last().unwrap();
    for (bin, _) in BINARIES {
        assert!(
            all.iter()
                .any(|i| i.starts_with("RUN ") && i.contains(&format!("--bin {bin}"))),
            "{DOCKERFILE} does not build {bin}"
        );
        assert!(
            last.iter()
                .any(|i| i.starts_with("COPY ") && i.contains("--from=") && i.contains(bin)),
            "{DOCKERFILE}'s final stage does not copy {bin}"
        );
    }
    let user = last
        .iter()
        .rev()
        .find(|i| i.starts_with("USER "))
        .expect("the final stage sets USER");
    let who = user[5..].trim().split(':').next().unwrap();
    assert!(who != "root" && who != "0", "the image runs as {who}");
    assert_eq!(image_cmd()[0], "plugin-api");
    // The paths the image puts them in are on the runtime PATH.
    assert!(last
        .iter()
        .any(|i| i.starts_with("COPY ") && i.ends_with("/usr/local/bin/")));
}

// ---------------------------------------------------------------------------
// template.yaml

const TEMPLATE: &str = "template.yaml";

fn resources_of_type<'a>(t: &'a Value, ty: &str) -> Vec<(&'a String, &'a Value)> {
    object(&t["Resources"], "Resources")
        .iter()
        .filter(|(_, r)| r["Type"] == ty)
        .collect()
}

/// Logical ids an intrinsic value refers to (`Ref`, `Fn::GetAtt`, `${X}`/`${X.Arn}` in `Fn::Sub`).
fn references(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("Ref", Value::String(s)) => {
                            out.insert(s.clone());
                        }
                        ("Fn::GetAtt", Value::Array(a)) => {
                            if let Some(s) = a.first().and_then(Value::as_str) {
                                out.insert(s.to_string());
                            }
                        }
                        ("Fn::Sub", s) => {
                            let text = match s {
                                Value::String(s) => s.as_str(),
                                Value::Array(a) => a.first().and_then(Value::as_str).unwrap_or(""),
                                _ => "",
                            };
                            let mut rest = text;
                            while let Some(i) = rest.find("${") {
                                let after = &rest[i + 2..];
                                let end = after.find('}').unwrap_or(after.len());
                                let name = after[..end].split('.').next().unwrap();
                                if !name.starts_with("AWS::") && !name.starts_with('!') {
                                    out.insert(name.to_string());
                                }
                                rest = &after[end..];
                            }
                            walk(s, out);
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

fn the_function(t: &Value) -> (&String, &Value) {
    let functions = resources_of_type(t, "AWS::Serverless::Function");
    assert_eq!(functions.len(), 1, "one function, plugin-api");
    functions[0]
}

fn the_bucket(t: &Value) -> (&String, &Value) {
    let buckets = resources_of_type(t, "AWS::S3::Bucket");
    assert_eq!(buckets.len(), 1, "one bucket");
    buckets[0]
}

#[test]
fn template_function_is_plugin_api_on_arm64_with_known_variables() {
    let bins = Binaries::read();
    let t = yaml(TEMPLATE);
    assert_eq!(t["Transform"], "AWS::Serverless-2016-10-31");
    let (_, f) = the_function(&t);
    let p = &f["Properties"];
    assert_eq!(p["Runtime"], "provided.al2023");
    assert_eq!(p["Architectures"], json!(["arm64"]));
    assert_eq!(p["Handler"], "bootstrap");
    let built =
        p["CodeUri"].as_str().map(|c| c.trim_end_matches('/')) == Some("target/lambda/plugin-api");
    let cargo_lambda = f["Metadata"]["BuildMethod"] == "rust-cargolambda"
        && f["Metadata"]["BuildProperties"]["Binary"] == "plugin-api";
    assert!(
        built || cargo_lambda,
        "CodeUri must be cargo lambda's output for plugin-api, or the rust-cargolambda build method"
    );

    let vars = object(&p["Environment"]["Variables"], "Environment.Variables");
    let api = bins.cli("plugin-api");
    let known = api.env_vars();
    let as_text: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                // An intrinsic function: checked below where it matters.
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    check_env(&known, &as_text, TEMPLATE);
    for name in vars.keys() {
        assert!(
            name != "AWS_REGION" && name != "AWS_LAMBDA_RUNTIME_API",
            "{name} is reserved by Lambda"
        );
    }
    // The store is the template's bucket.
    let (bucket, _) = the_bucket(&t);
    let store = &vars["KUIPER_STORE"];
    assert_eq!(
        store,
        &json!({ "Fn::Sub": format!("s3://${{{bucket}}}") }),
        "KUIPER_STORE must be s3://<the bucket>"
    );

    // A request ends before API Gateway gives up (30 s): the function's timeout
    // is below it, and a download plus a callback fit in the function's timeout.
    let timeout = p["Timeout"].as_u64().expect("Timeout in seconds");
    assert!(
        timeout < HTTP_API_MAX_SECS,
        "Timeout {timeout} s must be below {HTTP_API_MAX_SECS} s"
    );
    let secs = |var: &str| -> u64 {
        as_text
            .get(var)
            .cloned()
            .or_else(|| known[var].default.clone())
            .unwrap_or_else(|| panic!("{var} has no value and no default"))
            .parse()
            .unwrap_or_else(|_| panic!("{var} is not a number of seconds"))
    };
    let download = secs("KUIPER_DOWNLOAD_TIMEOUT_SECS");
    let callback = secs("KUIPER_CALLBACK_TIMEOUT_SECS");
    assert!(
        download + callback < timeout,
        "download ({download} s) + callback ({callback} s) must fit in the function's Timeout ({timeout} s)"
    );
    assert!(p["MemorySize"]
        .as_u64()
        .is_some_and(|m| (128..=10240).contains(&m)));
}

/// `(method, path)` routes of the HTTP API: its DefinitionBody and the
/// function's `HttpApi` events. `ANY` for any method.
fn api_routes(t: &Value) -> Vec<(String, String, Value)> {
    let mut routes = Vec::new();
    for (_, api) in resources_of_type(t, "AWS::Serverless::HttpApi") {
        if let Some(paths) = api["Properties"]["DefinitionBody"]["paths"].as_object() {
            for (path, item) in paths {
                for (method, op) in object(item, path) {
                    let m = match method.as_str() {
                        "x-amazon-apigateway-any-method" => "ANY".to_string(),
                        "parameters" | "summary" | "description" => continue,
                        m => m.to_ascii_uppercase(),
                    };
                    routes.push((m, path.clone(), op.clone()));
                }
            }
        }
    }
    let (_, f) = the_function(t);
    if let Some(events) = f["Properties"]["Events"].as_object() {
        for ev in events.values().filter(|e| e["Type"] == "HttpApi") {
            let p = &ev["Properties"];
            routes.push((
                p["Method"].as_str().unwrap_or("ANY").to_ascii_uppercase(),
                p["Path"].as_str().unwrap_or("/$default").to_string(),
                ev.clone(),
            ));
        }
    }
    routes
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

fn is_greedy(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with("+}")
}

/// Whether the API Gateway path `api` takes every request path of the route `route`.
fn covers(api: &str, route: &str) -> bool {
    let (a, r) = (segments(api), segments(route));
    for (i, seg) in a.iter().enumerate() {
        if is_greedy(seg) {
            return r.len() > i;
        }
        match r.get(i) {
            None => return false,
            Some(rs) if !is_param(seg) && (is_param(rs) || rs != seg) => return false,
            Some(_) => {}
        }
    }
    a.len() == r.len()
}

/// Whether some request path is taken by both.
fn overlaps(api: &str, route: &str) -> bool {
    let (a, r) = (segments(api), segments(route));
    for (i, seg) in a.iter().enumerate() {
        if is_greedy(seg) {
            return r.len() > i;
        }
        match r.get(i) {
            None => return false,
            Some(rs) if !is_param(seg) && !is_param(rs) && rs != seg => return false,
            Some(_) => {}
        }
    }
    a.len() == r.len()
}

#[test]
fn route_matching_helpers() {
    assert!(covers("/plugins/{proxy+}", "/plugins/{type}/{name}"));
    assert!(covers("/plugins/{proxy+}", "/plugins/udfs"));
    assert!(!covers("/plugins/{proxy+}", "/ping"));
    assert!(!covers("/plugins/{proxy+}", "/plugins"));
    assert!(covers("/rules/{a}/{b}", "/rules/{type}/{name}"));
    assert!(!covers("/rules/sources/{b}", "/rules/{type}/{name}"));
    assert!(covers("/", "/") && !covers("/", "/ping"));
    assert!(overlaps("/rules/sources/{b}", "/rules/{type}/{name}"));
    assert!(!overlaps("/rules/{a}", "/rules/{type}/{name}"));
}

#[test]
fn template_routes_cover_the_route_table_and_nothing_else() {
    let t = yaml(TEMPLATE);
    let routes = api_routes(&t);
    assert!(!routes.is_empty(), "the HTTP API has no routes");
    for &(method, path) in ROUTES {
        assert!(
            routes
                .iter()
                .any(|(m, p, _)| (m == "ANY" || m == method) && covers(p, path)),
            "{TEMPLATE}: no HTTP API route takes {method} {path}"
        );
    }
    for (m, p, _) in &routes {
        assert!(
            ROUTES
                .iter()
                .any(|&(method, path)| (m == "ANY" || m == method) && overlaps(p, path)),
            "{TEMPLATE}: route {m} {p} reaches no route of the service"
        );
    }
    // Each route invokes the function; each but GET / and GET /ping is authorised.
    let (function, _) = the_function(&t);
    for (m, p, op) in &routes {
        if let Some(integration) = op.get("x-amazon-apigateway-integration") {
            assert!(
                references(&integration["uri"]).contains(function),
                "{m} {p} does not invoke {function}"
            );
            assert_eq!(integration["payloadFormatVersion"], "2.0", "{m} {p}");
            let ms = integration["timeoutInMillis"].as_u64().unwrap_or(30_000);
            assert!(ms <= HTTP_API_MAX_SECS * 1000);
        }
        let open = m == "GET" && (p == "/" || p == "/ping");
        let security = &op["security"];
        let secured = match security {
            Value::Array(a) => {
                !a.is_empty()
                    && a.iter()
                        .all(|s| s.as_object().is_some_and(|o| !o.is_empty()))
            }
            // Fn::If [cond, a, b]: both branches must require something.
            Value::Object(o) => o.get("Fn::If").and_then(Value::as_array).is_some_and(|a| {
                a.len() == 3
                    && a[1..]
                        .iter()
                        .all(|b| b.as_array().is_some_and(|l| !l.is_empty()))
            }),
            _ => {
                !op["Properties"]["Auth"]["Authorizer"].is_null()
                    && op["Properties"]["Auth"]["Authorizer"] != "NONE"
            }
        };
        if !open {
            assert!(secured, "{TEMPLATE}: {m} {p} is not authorised");
        }
    }
    // The authorisation mode parameter.
    let mode = &t["Parameters"]["AuthMode"];
    assert_eq!(mode["Default"], "AWS_IAM");
    assert_eq!(mode["AllowedValues"], json!(["AWS_IAM", "JWT"]));
    assert_eq!(t["Parameters"]["JwtAudience"]["Default"], "eKuiper");
    assert!(t["Parameters"]["JwtIssuer"].is_object());
    // API Gateway may invoke the function.
    let permissions = resources_of_type(&t, "AWS::Lambda::Permission");
    let has_events = routes.iter().any(|(_, _, op)| op["Type"] == "HttpApi");
    assert!(
        has_events
            || permissions
                .iter()
                .any(
                    |(_, p)| references(&p["Properties"]["FunctionName"]).contains(function)
                        && p["Properties"]["Principal"] == "apigateway.amazonaws.com"
                ),
        "nothing lets API Gateway invoke {function}"
    );
}

/// The IAM actions the S3 store needs: every S3 operation `src/store/s3.rs`
/// calls on its client (`client().await.get_object()`, ...), mapped to its actions.
fn s3_store_actions() -> BTreeSet<&'static str> {
    let source = read("src/store/s3.rs");
    let mut ops = BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(i) = rest.find("client") {
        rest = &rest[i + "client".len()..];
        // `client.op()` or, with the lazily built client, `client().await.op()`.
        let mut after = rest.trim_start();
        if let Some(a) = after.strip_prefix("()") {
            after = a.trim_start();
            after = after.strip_prefix(".await").unwrap_or(after).trim_start();
        }
        if let Some(call) = after.strip_prefix('.') {
            let name: String = call
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if call[name.len()..].starts_with("()") {
                ops.insert(name);
            }
        }
    }
    assert!(
        ops.contains("get_object") && ops.contains("put_object"),
        "found no S3 calls in src/store/s3.rs: {ops:?}"
    );
    let mut actions = BTreeSet::new();
    for op in &ops {
        let needs: &[&'static str] = match op.as_str() {
            "get_object" | "head_object" => &["s3:GetObject"],
            "put_object" | "create_multipart_upload" | "upload_part" | "complete_multipart_upload" => {
                &["s3:PutObject"]
            }
            "abort_multipart_upload" => &["s3:AbortMultipartUpload"],
            "copy_object" => &["s3:GetObject", "s3:PutObject"],
            "delete_object" | "delete_objects" => &["s3:DeleteObject"],
            "list_objects_v2" | "head_bucket" => &["s3:ListBucket"],
            "list_parts" => &["s3:ListMultipartUploadParts"],
            "list_multipart_uploads" => &["s3:ListBucketMultipartUploads"],
            other => panic!(
                "src/store/s3.rs calls S3 `{other}`: map it to its IAM actions here and grant them in {TEMPLATE}"
            ),
        };
        actions.extend(needs);
    }
    actions
}

#[test]
fn template_bucket_is_private_versioned_and_the_policy_least_privilege() {
    let t = yaml(TEMPLATE);
    let (bucket, b) = the_bucket(&t);
    let p = &b["Properties"];
    assert_eq!(p["VersioningConfiguration"]["Status"], "Enabled");
    assert!(
        p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            ["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
            .is_string(),
        "server-side encryption"
    );
    for k in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(p["PublicAccessBlockConfiguration"][k], true, "{k}");
    }
    // Referenced zips are current objects under blobs/: no rule may
    // expire or move current objects (unreferenced zips are `plugin-api gc`'s
    // job), except under uploads/, where zips are only in transit.
    let rules = p["LifecycleConfiguration"]["Rules"]
        .as_array()
        .expect("lifecycle rules");
    let mut staging_expires = false;
    for r in rules {
        let prefix = r["Prefix"]
            .as_str()
            .or_else(|| r["Filter"]["Prefix"].as_str());
        for k in ["Transitions", "Transition"] {
            assert!(r.get(k).is_none(), "lifecycle rule {} has {k}", r["Id"]);
        }
        for k in ["ExpirationInDays", "ExpirationDate"] {
            if r.get(k).is_some() {
                assert_eq!(
                    prefix,
                    Some(keys::UPLOADS_PREFIX),
                    "lifecycle rule {} has {k} beyond {}: it would delete referenced zips",
                    r["Id"],
                    keys::UPLOADS_PREFIX
                );
                staging_expires |= r["Status"] == "Enabled";
            }
        }
    }
    assert!(
        staging_expires,
        "zips left in {} by killed requests should expire",
        keys::UPLOADS_PREFIX
    );
    assert!(rules
        .iter()
        .any(|r| r["Status"] == "Enabled" && r["NoncurrentVersionExpiration"].is_object()));
    assert!(rules
        .iter()
        .any(|r| r["Status"] == "Enabled" && r["AbortIncompleteMultipartUpload"].is_object()));

    // The function's policy: what the S3 store calls, only on its bucket.
    let needed = s3_store_actions();
    let (_, f) = the_function(&t);
    let policies = f["Properties"]["Policies"]
        .as_array()
        .expect("inline Policies");
    let mut granted = BTreeSet::new();
    for doc in policies {
        let statements = doc["Statement"]
            .as_array()
            .expect("policy documents with Statement");
        for s in statements {
            assert_eq!(s["Effect"], "Allow");
            let actions: Vec<String> = match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|a| string(a, "action").to_string()).collect(),
                other => panic!("Action {other}"),
            };
            let resources = references(&s["Resource"]);
            assert_eq!(
                resources,
                BTreeSet::from([bucket.clone()]),
                "statement {} reaches beyond the bucket",
                s
            );
            let on_objects = s["Resource"].to_string().contains("/*");
            for a in actions {
                assert!(
                    needed.contains(a.as_str()),
                    "{a} is more than the S3 store needs ({needed:?})"
                );
                if a == "s3:ListBucket" || a == "s3:ListBucketMultipartUploads" {
                    assert!(!on_objects, "{a} on the bucket's ARN");
                } else {
                    assert!(on_objects, "{a} on the bucket's objects (ARN/*)");
                }
                granted.insert(a);
            }
        }
    }
    let granted: BTreeSet<&str> = granted.iter().map(String::as_str).collect();
    assert_eq!(granted, needed, "the function's S3 actions");

    // Outputs: the API URL and the bucket name.
    let outputs = object(&t["Outputs"], "Outputs");
    let apis: Vec<&String> = resources_of_type(&t, "AWS::Serverless::HttpApi")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(outputs.values().any(|o| {
        references(&o["Value"]).iter().any(|r| apis.contains(&r))
            && o["Value"].to_string().contains("https://")
    }));
    assert!(outputs
        .values()
        .any(|o| o["Value"] == json!({ "Ref": bucket })));
}

// ---------------------------------------------------------------------------
// openapi.yaml

const OPENAPI: &str = "openapi.yaml";
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn openapi_operations(spec: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in object(&spec["paths"], "paths") {
        for (method, op) in object(item, path) {
            if METHODS.contains(&method.as_str()) {
                ops.push((method.to_ascii_uppercase(), path.clone(), op));
            }
        }
    }
    ops
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            let target = spec
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{OPENAPI}: $ref {r} resolves to nothing"));
            resolve(spec, target)
        }
        None => v,
    }
}

fn schema_properties(spec: &Value, name: &str) -> BTreeSet<String> {
    let schema = &spec["components"]["schemas"][name];
    object(&schema["properties"], name)
        .keys()
        .cloned()
        .collect()
}

fn schema_required(spec: &Value, name: &str) -> BTreeSet<String> {
    spec["components"]["schemas"][name]["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|s| string(s, "required").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn keys(v: &Value) -> BTreeSet<String> {
    object(v, "value").keys().cloned().collect()
}

#[test]
fn openapi_paths_and_methods_are_the_route_table() {
    let spec = yaml(OPENAPI);
    let documented: BTreeSet<(String, String)> = openapi_operations(&spec)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|&(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(missing.is_empty(), "{OPENAPI} lacks {missing:?}");
    assert!(
        extra.is_empty(),
        "{OPENAPI} documents routes the service does not have: {extra:?}"
    );
}

#[test]
fn openapi_operations_declare_their_parameters_and_errors() {
    let spec = yaml(OPENAPI);
    let error_schema = json!({ "$ref": "#/components/schemas/Error" });
    for (method, path, op) in openapi_operations(&spec) {
        let what = format!("{OPENAPI} {method} {path}");
        // Path template parameters are exactly the declared path parameters.
        let in_template: BTreeSet<String> = segments(&path)
            .into_iter()
            .filter(|s| is_param(s))
            .map(|s| s.trim_matches(|c| c == '{' || c == '}').to_string())
            .collect();
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| resolve(&spec, p))
                    .filter(|p| p["in"] == "path")
                    .map(|p| {
                        assert_eq!(p["required"], true, "{what}: path parameters are required");
                        string(&p["name"], "parameter name").to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(in_template, declared, "{what}: path parameters");

        let responses = object(&op["responses"], &what);
        let success: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
        assert_eq!(success.len(), 1, "{what}: one success status");
        if !in_template.is_empty() {
            assert!(
                responses.contains_key("404"),
                "{what}: a path parameter can name nothing: 404"
            );
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413"] {
                assert!(
                    responses.contains_key(status),
                    "{what}: a body can be bad or too large: {status}"
                );
            }
        }
        let open = op["security"] == json!([]);
        if !open {
            assert!(
                responses.contains_key("401"),
                "{what}: 401 with authentication"
            );
        }
        for (status, r) in responses {
            let r = resolve(&spec, r);
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    r["content"]["application/json"]["schema"], error_schema,
                    "{what} {status}: errors are the Error schema"
                );
            }
        }
    }
}

#[test]
fn openapi_bodies_match_the_rust_types() {
    let spec = yaml(OPENAPI);

    // PluginMeta (describe): every field, and the required ones are those always present.
    let full = PluginMeta {
        name: "random".into(),
        version: "1.0.0".into(),
        plugin_type: PluginType::Function,
        id: "id".into(),
        sha256: "0".repeat(64),
        size: 1,
        arch: "x86_64".into(),
        build: Some(BuildFingerprint {
            libc: Libc::Glibc,
            go: Some(GoBuild {
                go_version: "go1.26.8".into(),
                path: "example.com/random".into(),
                main: Some(GoModule {
                    path: "example.com/random".into(),
                    version: "(devel)".into(),
                    sum: String::new(),
                    replaced_by: None,
                }),
                deps: vec![GoModule {
                    path: "github.com/lf-edge/ekuiper/contract/v2".into(),
                    version: "v2.3.1".into(),
                    sum: "h1:x".into(),
                    replaced_by: Some(Box::new(GoModule {
                        path: "example.com/fork".into(),
                        version: "v2.3.1-fork".into(),
                        sum: "h1:y".into(),
                        replaced_by: None,
                    })),
                }],
                settings: [("-trimpath".to_string(), "true".to_string())].into(),
            }),
        }),
        so_file: "Random@v1.0.0.so".into(),
        blob: format!("blobs/sha256/{}.zip", "0".repeat(64)),
        source: "https://files.example.com/random.zip".into(),
        created: "2026-01-01T00:00:00Z".into(),
        updated: "2026-01-01T00:00:00Z".into(),
        functions: Some(vec!["random".into()]),
        shell_paras: vec!["--x".into()],
        files: vec![PackageFile {
            name: "Random@v1.0.0.so".into(),
            size: 1,
        }],
    };
    let minimal = PluginMeta {
        functions: None,
        shell_paras: Vec::new(),
        build: None,
        ..full.clone()
    };
    let full_json = serde_json::to_value(&full).unwrap();
    assert_eq!(
        keys(&full_json),
        schema_properties(&spec, "PluginMeta"),
        "PluginMeta fields"
    );
    assert_eq!(
        keys(&serde_json::to_value(&minimal).unwrap()),
        schema_required(&spec, "PluginMeta"),
        "PluginMeta: required = always serialised"
    );
    assert_eq!(
        keys(&full_json["files"][0]),
        schema_properties(&spec, "PackageFile"),
        "PackageFile fields"
    );
    let build = &full_json["build"];
    for (value, schema) in [
        (build, "BuildFingerprint"),
        (&build["go"], "GoBuild"),
        (&build["go"]["deps"][0], "GoModule"),
    ] {
        assert_eq!(
            keys(value),
            schema_properties(&spec, schema),
            "{schema} fields"
        );
    }
    let minimal_go = GoBuild {
        path: String::new(),
        main: None,
        ..full.build.clone().unwrap().go.unwrap()
    };
    assert_eq!(
        keys(&serde_json::to_value(&minimal_go).unwrap()),
        schema_required(&spec, "GoBuild"),
        "GoBuild: required = always serialised"
    );
    let types: BTreeSet<String> = PluginType::ALL
        .iter()
        .map(|t| {
            serde_json::to_value(t)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let documented: BTreeSet<String> = spec["components"]["schemas"]["PluginType"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, documented, "PluginType values");

    // PluginRequest (create/update): each documented property sets its field.
    for schema in ["PluginRequest", "PluginUpdateRequest"] {
        assert_eq!(
            schema_properties(&spec, schema),
            [
                "name",
                "file",
                "callback",
                "functions",
                "shellParas",
                "ekuiper"
            ]
            .map(String::from)
            .into(),
            "{schema} properties"
        );
    }
    let req: PluginRequest = serde_json::from_value(json!({
        "name": "n", "file": "f", "callback": "c", "functions": ["x"], "shellParas": ["p"],
        "ekuiper": "prod"
    }))
    .unwrap();
    assert_eq!(
        req,
        PluginRequest {
            name: "n".into(),
            file: "f".into(),
            callback: Some("c".into()),
            functions: Some(vec!["x".into()]),
            shell_paras: vec!["p".into()],
            ekuiper: Some(EkuiperTarget::Named("prod".into())),
        },
        "a documented property the Rust type does not read"
    );
    let nulls: PluginRequest = serde_json::from_value(
        json!({"name": "n", "file": "f", "callback": null, "functions": null}),
    )
    .expect("callback and functions are nullable");
    assert_eq!(nulls.callback, None);

    // UdfOwner (describe a function name).
    let owner = serde_json::to_value(UdfOwner {
        name: "f".into(),
        plugin: "p".into(),
    })
    .unwrap();
    assert_eq!(keys(&owner), schema_properties(&spec, "UdfOwner"));
    assert_eq!(keys(&owner), schema_required(&spec, "UdfOwner"));

    // GET / and the error body, from the handlers themselves.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let body = |resp: axum::response::Response| -> Value {
        let bytes = rt
            .block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let root = body(rt.block_on(handlers::root()));
    assert_eq!(keys(&root), schema_properties(&spec, "ServiceInfo"));
    let err = body(ApiError::not_found("x").into_response());
    assert_eq!(keys(&err), schema_properties(&spec, "Error"));
    assert_eq!(keys(&err), schema_required(&spec, "Error"));
    assert!(err["error"].is_u64() && err["message"].is_string());
}

#[test]
fn every_ref_in_the_openapi_document_resolves() {
    let spec = yaml(OPENAPI);
    let mut count = 0;
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    out.push(v);
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(&spec, &mut refs);
    for r in refs {
        resolve(&spec, r);
        count += 1;
    }
    assert!(count > 20, "only {count} $refs?");
}
