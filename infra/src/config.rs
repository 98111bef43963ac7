//! `freshet.toml`: one schema for every stage, its defaults (the default pipeline of DESIGN.md), environment
//! overrides, and validation that lists every problem at once.
//!
//! Layers, later ones win: the built-in defaults, then the file, then `FRESHET_*` environment variables, then
//! command-line flags. Tables merge key by key; lists (`streams`, `gateway.rules`, `deliveries`, `reports`,
//! `gateway.listeners`, …) replace the default list as a whole.
//!
//! Environment: `FRESHET_<SECTION>__<KEY>[__<KEY>…]=<value>`, path segments separated by two underscores,
//! matched case-insensitively against the keys (`FRESHET_HTTP__ADDR=0.0.0.0:8080`,
//! `FRESHET_GATEWAY__LISTENERS__0__ADDR=0.0.0.0:1883`: a number indexes a list). `FRESHET_DATA_DIR` sets
//! `data_dir`. The value is read as a TOML value when it parses as one (`true`, `4`, `["a", "b"]`,
//! `{ sql = "…" }`) and as a string otherwise, or when the key it replaces holds a string.
//! The S3 options of `[warehouse]` also fall back to the standard AWS variables (`AWS_ENDPOINT_URL`,
//! `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
//!
//! Every key is documented in `docs/config-reference.md`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use freshet_ingest::{GatewayConfig, ListenerConfig, RuleConfig};
use freshet_process::DeliveryConfig;
use freshet_reports::ReportConfig;
use freshet_reports::dashboard::DashboardConfig;
use freshet_storage::{FsyncPolicy, LogConfig, StoreConfig, StreamName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Value;

/// The file `freshet up` and `freshet run` read when `--config` is not given and it exists.
pub const DEFAULT_PATH: &str = "freshet.toml";
/// Prefix of the environment overrides.
pub const ENV_PREFIX: &str = "FRESHET_";
/// What a masked secret prints as.
pub const MASK: &str = "********";

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory: the store's segments (`store` role and `freshet up`), and the warehouse by default.
    pub data_dir: PathBuf,
    pub store: StoreSection,
    pub http: HttpSection,
    pub kinesis: KinesisSection,
    pub remote: RemoteSection,
    pub warehouse: WarehouseSection,
    pub gateway: GatewayConfig,
    pub streams: Vec<StreamSection>,
    pub deliveries: Vec<DeliveryConfig>,
    pub reports: Vec<ReportConfig>,
    /// `[[dashboards]]`: panels over report outputs, served at `/dashboards`.
    pub dashboards: Vec<DashboardConfig>,
}

/// `[store]`: the embedded stream store.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `always` (every group commit), `never`, or `interval:<ms>`.
    pub fsync: String,
    /// Largest record (data + partition key) in bytes, at most 10 MiB.
    pub record_bytes_max: usize,
    /// How often expired segments are deleted, in seconds.
    pub retention_check_seconds: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            fsync: "always".into(),
            record_bytes_max: freshet_storage::RECORD_BYTES_MAX_DEFAULT,
            retention_check_seconds: 60,
        }
    }
}

/// `[http]`: the HTTP listener (Kinesis API, `/v1/sql`, `/dashboards`, `/metrics`, `/health`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub addr: SocketAddr,
    /// When set, `/v1/sql` and `/dashboards` require `Authorization: Bearer <token>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            bearer_token: None,
        }
    }
}

/// `[kinesis]`: the Kinesis API the store serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KinesisSection {
    /// Region of ARNs and of the SigV4 scope.
    pub region: String,
    /// 12-digit account id in ARNs.
    pub account_id: String,
    /// Accepted access keys; empty = requests are not authenticated.
    pub access_keys: Vec<AccessKey>,
}

impl Default for KinesisSection {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            access_keys: Vec::new(),
        }
    }
}

/// One access key of the Kinesis API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// `[remote]`: how the `gateway`, `delivery` and `reports` roles reach the store role's Kinesis API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteSection {
    pub endpoint: String,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// How long a role waits for the store to answer at start, in seconds.
    pub connect_wait_seconds: u64,
}

impl Default for RemoteSection {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:8080".into(),
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            connect_wait_seconds: 60,
        }
    }
}

/// `[warehouse]`: where the Delta tables and report outputs live.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarehouseSection {
    /// A directory, `file:///dir`, or `s3://bucket/prefix`; default `<data_dir>/warehouse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// S3 endpoint (for S3-compatible servers); `AWS_ENDPOINT_URL` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Allow `http://` endpoints (local S3-compatible servers).
    pub allow_http: bool,
    /// Further object_store options, passed as they are (e.g. `aws_virtual_hosted_style_request`).
    pub options: BTreeMap<String, String>,
}

/// `[[streams]]`: a stream the store creates at start (existing ones are kept as they are).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    pub name: String,
    #[serde(default = "one")]
    pub shards: u32,
    /// Retention in hours (24–8760); the store's default (24) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_hours: Option<u32>,
}

fn one() -> u32 {
    1
}

/// The default pipeline's stream and its shard count (DESIGN.md).
pub const DEFAULT_STREAM: &str = "telemetry";
pub const DEFAULT_STREAM_SHARDS: u32 = 4;

impl Default for Config {
    /// The default pipeline of DESIGN.md.
    fn default() -> Self {
        let gateway = GatewayConfig {
            listeners: vec![ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 1883)))],
            rules: vec![RuleConfig {
                name: "telemetry".into(),
                sql: "SELECT *, topic(2) AS device_id FROM 'devices/+/telemetry'".into(),
                stream: DEFAULT_STREAM.into(),
                partition_key: "${topic(2)}".into(),
                error_stream: None,
            }],
            ..GatewayConfig::default()
        };
        Self {
            data_dir: PathBuf::from("./freshet-data"),
            store: StoreSection::default(),
            http: HttpSection::default(),
            kinesis: KinesisSection::default(),
            remote: RemoteSection::default(),
            warehouse: WarehouseSection::default(),
            gateway,
            streams: vec![StreamSection {
                name: DEFAULT_STREAM.into(),
                shards: DEFAULT_STREAM_SHARDS,
                retention_hours: None,
            }],
            // The warehouse is filled in from `[warehouse]` when the configuration is loaded.
            deliveries: vec![DeliveryConfig::new(
                DEFAULT_STREAM,
                DEFAULT_STREAM,
                DEFAULT_STREAM,
                "",
            )],
            reports: vec![ReportConfig::telemetry_minutely()],
            dashboards: vec![DashboardConfig::telemetry()],
        }
    }
}

/// Every problem found in a configuration; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    pub source: String,
    pub problems: Vec<String>,
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} configuration problem{}",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Command-line values that override the configuration (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<SocketAddr>,
    pub mqtt_addr: Option<SocketAddr>,
    pub fsync: Option<String>,
    pub record_bytes_max: Option<usize>,
    pub buffer_interval: Option<Duration>,
    pub retention_check_seconds: Option<u64>,
    pub remote_endpoint: Option<String>,
}

/// The file to read: `--config PATH` (must exist), else `./freshet.toml` when present, else none.
pub fn resolve_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let p = PathBuf::from(DEFAULT_PATH);
            p.is_file().then_some(p)
        }
    }
}

/// Load and validate: defaults ← file ← environment ← flags. Every problem is listed in the error.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, Problems> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_with_env(path, &env, overrides)
}

/// [`load`] with an explicit environment (tests).
pub fn load_with_env(
    path: Option<&Path>,
    env: &[(String, String)],
    overrides: &Overrides,
) -> Result<Config, Problems> {
    let source = path.map_or_else(|| "built-in defaults".to_string(), |p| p.display().to_string());
    let fail = |problems: Vec<String>| Problems {
        source: source.clone(),
        problems,
    };
    let mut merged = defaults_value();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(vec![format!("cannot read {}: {e}", path.display())]))?;
        let file: toml::Table = toml::from_str(&text).map_err(|e| fail(vec![one_line(&e.to_string())]))?;
        merge(&mut merged, Value::Table(file));
    }
    let mut problems = Vec::new();
    apply_env(&mut merged, env, &mut problems);
    apply_overrides(&mut merged, overrides);
    let config = typed(merged, &mut problems);
    let Some(mut config) = config else {
        return Err(fail(problems));
    };
    config.fill_warehouse(env);
    // The default dashboard follows the default report: a configuration without `telemetry_minutely` that names no
    // dashboards of its own gets none, rather than a problem it did not write.
    if !config.reports.iter().any(|r| r.name == "telemetry_minutely") {
        config.dashboards.retain(|d| *d != DashboardConfig::telemetry());
    }
    if let Some(interval) = overrides.buffer_interval {
        for d in &mut config.deliveries {
            d.buffer_interval_ms = interval.as_millis().min(u128::from(u64::MAX)) as u64;
        }
    }
    problems.extend(config.problems());
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(fail(problems))
    }
}

/// A multi-line parser message on one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c.is_whitespace()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn defaults_value() -> Value {
    let mut v = Value::try_from(Config::default()).expect("the default configuration serializes");
    // The default delivery takes its warehouse from `[warehouse]` like any other.
    if let Some(Value::Array(ds)) = v.get_mut("deliveries") {
        for d in ds {
            if let Some(t) = d.as_table_mut() {
                t.remove("warehouse");
            }
        }
    }
    v
}

/// Deep merge: tables key by key, everything else (lists included) replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// `FRESHET_A__B__0__C=value` → `a.b[0].c = value`.
fn apply_env(root: &mut Value, env: &[(String, String)], problems: &mut Vec<String>) {
    let mut vars: Vec<&(String, String)> = env.iter().collect();
    vars.sort();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = if rest == "DATA_DIR" {
            vec!["data_dir".into()]
        } else if rest.contains("__") {
            rest.split("__").map(str::to_ascii_lowercase).collect()
        } else {
            // FRESHET_HTTP_ADDR, FRESHET_MQTT_ADDR, … are flags' environment names, read by clap.
            continue;
        };
        if let Err(e) = set_path(root, &path, raw) {
            problems.push(format!("{name}: {e}"));
        }
    }
}

fn set_path(root: &mut Value, path: &[String], raw: &str) -> Result<(), String> {
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        if seg.is_empty() {
            return Err("empty key in the variable name".into());
        }
        if let Value::Array(items) = cur {
            let idx: usize = seg.parse().map_err(|_| format!("{seg:?} is not a list index"))?;
            if idx > items.len() {
                return Err(format!(
                    "index {idx} is past the end of a list of {}",
                    items.len()
                ));
            }
            if idx == items.len() {
                items.push(Value::Table(toml::Table::new()));
            }
            if last {
                items[idx] = parse_env_value(raw, Some(&items[idx]));
                return Ok(());
            }
            cur = &mut items[idx];
            continue;
        }
        let Value::Table(t) = cur else {
            return Err(format!("{seg:?} is inside a value that is not a table"));
        };
        if last {
            let new = parse_env_value(raw, t.get(seg.as_str()));
            t.insert(seg.clone(), new);
            return Ok(());
        }
        cur = t
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(toml::Table::new()));
    }
    Ok(())
}

fn parse_env_value(raw: &str, existing: Option<&Value>) -> Value {
    if matches!(existing, Some(Value::String(_))) {
        return Value::String(raw.to_string());
    }
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

fn apply_overrides(root: &mut Value, o: &Overrides) {
    let Value::Table(t) = root else { return };
    let set = |t: &mut toml::Table, section: &str, key: &str, v: Value| {
        let s = t
            .entry(section.to_string())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        if let Value::Table(s) = s {
            s.insert(key.to_string(), v);
        }
    };
    if let Some(d) = &o.data_dir {
        t.insert("data_dir".into(), Value::String(d.display().to_string()));
    }
    if let Some(a) = o.http_addr {
        set(t, "http", "addr", Value::String(a.to_string()));
    }
    if let Some(f) = &o.fsync {
        set(t, "store", "fsync", Value::String(f.clone()));
    }
    if let Some(n) = o.record_bytes_max {
        set(t, "store", "record_bytes_max", Value::Integer(n as i64));
    }
    if let Some(n) = o.retention_check_seconds {
        set(t, "store", "retention_check_seconds", Value::Integer(n as i64));
    }
    if let Some(e) = &o.remote_endpoint {
        set(t, "remote", "endpoint", Value::String(e.clone()));
    }
    if let Some(a) = o.mqtt_addr {
        // The first listener's address; the others are kept.
        let gw = t
            .entry("gateway".to_string())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        if let Value::Table(gw) = gw {
            let listeners = gw
                .entry("listeners".to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(ls) = listeners {
                match ls.first_mut().and_then(Value::as_table_mut) {
                    Some(first) => {
                        first.insert("addr".into(), Value::String(a.to_string()));
                    }
                    None => {
                        let mut l = toml::Table::new();
                        l.insert("addr".into(), Value::String(a.to_string()));
                        ls.insert(0, Value::Table(l));
                    }
                }
            }
        }
    }
}

fn de<T: DeserializeOwned>(path: &str, v: Value, problems: &mut Vec<String>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let at = match (path.is_empty(), inner == ".") {
                (true, _) => inner,
                (false, true) => path.to_string(),
                (false, false) => format!("{path}.{inner}"),
            };
            problems.push(format!("{at}: {}", one_line(&e.into_inner().to_string())));
            None
        }
    }
}

/// Deserialize a list item by item, so every bad item is reported.
fn de_list<T: DeserializeOwned>(path: &str, v: Option<Value>, problems: &mut Vec<String>) -> Option<Vec<T>> {
    match v {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => {
            let before = problems.len();
            let out: Vec<T> = items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| de(&format!("{path}[{i}]"), item, problems))
                .collect();
            (problems.len() == before).then_some(out)
        }
        Some(other) => {
            problems.push(format!("{path}: expected a list, found a {}", other.type_str()));
            None
        }
    }
}

/// The typed configuration, section by section, so every section's problems are reported.
fn typed(root: Value, problems: &mut Vec<String>) -> Option<Config> {
    let Value::Table(mut t) = root else {
        problems.push("the configuration is not a table".into());
        return None;
    };
    let before = problems.len();
    const KNOWN: [&str; 11] = [
        "data_dir",
        "store",
        "http",
        "kinesis",
        "remote",
        "warehouse",
        "gateway",
        "streams",
        "deliveries",
        "reports",
        "dashboards",
    ];
    let mut unknown: Vec<&String> = t.keys().filter(|k| !KNOWN.contains(&k.as_str())).collect();
    unknown.sort();
    for k in unknown {
        problems.push(format!(
            "unknown key {k:?} (expected one of: {})",
            KNOWN.join(", ")
        ));
    }
    let mut take = |k: &str| t.remove(k).unwrap_or_else(|| Value::Table(toml::Table::new()));
    let data_dir: Option<PathBuf> = de("data_dir", take("data_dir"), problems);
    let store = de("store", take("store"), problems);
    let http = de("http", take("http"), problems);
    let kinesis = de("kinesis", take("kinesis"), problems);
    let remote = de("remote", take("remote"), problems);
    let warehouse = de("warehouse", take("warehouse"), problems);
    let mut gateway_v = take("gateway");
    let rules_v = gateway_v.as_table_mut().and_then(|g| g.remove("rules"));
    let gateway: Option<GatewayConfig> = de("gateway", gateway_v, problems);
    let rules = de_list::<RuleConfig>("gateway.rules", rules_v, problems);
    let streams = de_list("streams", t.remove("streams"), problems);
    let mut deliveries_v = t.remove("deliveries");
    // A delivery without its own warehouse gets `[warehouse]`'s (filled in after typing).
    if let Some(Value::Array(items)) = &mut deliveries_v {
        for item in items.iter_mut().filter_map(Value::as_table_mut) {
            item.entry("warehouse")
                .or_insert_with(|| Value::String(String::new()));
        }
    }
    let deliveries = de_list("deliveries", deliveries_v, problems);
    // The reports crate reads its own section: every entry, unknown keys included.
    let reports = match freshet_reports::reports_from_toml_value(t.get("reports")) {
        Ok(reports) => Some(reports),
        Err(list) => {
            problems.extend(list.into_iter().map(|p| format!("reports: {p}")));
            None
        }
    };
    let dashboards = de_list("dashboards", t.remove("dashboards"), problems);
    if problems.len() != before {
        return None;
    }
    let mut gateway = gateway?;
    gateway.rules = rules?;
    Some(Config {
        data_dir: data_dir?,
        store: store?,
        http: http?,
        kinesis: kinesis?,
        remote: remote?,
        warehouse: warehouse?,
        gateway,
        streams: streams?,
        deliveries: deliveries?,
        reports: reports?,
        dashboards: dashboards?,
    })
}

impl Config {
    /// The warehouse URL: `[warehouse] url`, or `<data_dir>/warehouse`.
    pub fn warehouse_url(&self) -> String {
        self.warehouse
            .url
            .clone()
            .unwrap_or_else(|| self.data_dir.join("warehouse").display().to_string())
    }

    /// The warehouse as a local directory, when it is one (`file://` URLs included).
    pub fn local_warehouse(&self) -> Option<PathBuf> {
        let url = self.warehouse_url();
        if let Some(p) = url.strip_prefix("file://") {
            return Some(PathBuf::from(p));
        }
        (!url.contains("://")).then(|| PathBuf::from(url))
    }

    /// The warehouse SQL, reports and dashboards read (and report outputs go to): `[warehouse] url` with the
    /// storage options of `[warehouse]` and the standard AWS variables of this process.
    pub fn open_warehouse(&self) -> freshet_query::Result<freshet_query::Warehouse> {
        let url = self.warehouse_url();
        match self.local_warehouse() {
            Some(dir) => Ok(freshet_query::Warehouse::local(dir)),
            None => {
                let env: Vec<(String, String)> = std::env::vars().collect();
                freshet_query::Warehouse::open(&url, self.storage_options(&env))
            }
        }
    }

    /// object_store options for the warehouse, from `[warehouse]` and the standard AWS variables.
    pub fn storage_options(&self, env: &[(String, String)]) -> HashMap<String, String> {
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let w = &self.warehouse;
        let mut o: HashMap<String, String> = HashMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                o.insert(k.to_string(), v);
            }
        };
        put(
            "aws_endpoint_url",
            w.endpoint.clone().or_else(|| get("AWS_ENDPOINT_URL")),
        );
        put(
            "aws_region",
            w.region
                .clone()
                .or_else(|| get("AWS_REGION"))
                .or_else(|| get("AWS_DEFAULT_REGION")),
        );
        put(
            "aws_access_key_id",
            w.access_key_id.clone().or_else(|| get("AWS_ACCESS_KEY_ID")),
        );
        put(
            "aws_secret_access_key",
            w.secret_access_key
                .clone()
                .or_else(|| get("AWS_SECRET_ACCESS_KEY")),
        );
        put(
            "aws_session_token",
            w.session_token.clone().or_else(|| get("AWS_SESSION_TOKEN")),
        );
        if w.allow_http {
            put("aws_allow_http", Some("true".into()));
        }
        for (k, v) in &w.options {
            o.insert(k.clone(), v.clone());
        }
        o
    }

    /// Give every delivery without its own warehouse the configured one, with its options.
    fn fill_warehouse(&mut self, env: &[(String, String)]) {
        let url = self.warehouse_url();
        let remote = self.local_warehouse().is_none();
        let options = if remote {
            self.storage_options(env)
        } else {
            HashMap::new()
        };
        for d in &mut self.deliveries {
            if d.warehouse.is_empty() {
                d.warehouse = url.clone();
                for (k, v) in &options {
                    d.storage_options.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }

    /// The store's configuration.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            data_dir: self.data_dir.clone(),
            log: LogConfig {
                fsync: crate::cli::parse_fsync(&self.store.fsync).unwrap_or(FsyncPolicy::Always),
                ..LogConfig::default()
            },
            record_bytes_max: self.store.record_bytes_max,
        }
    }

    /// The Kinesis API's configuration.
    pub fn api_config(&self) -> freshet_storage::api::ApiConfig {
        freshet_storage::api::ApiConfig {
            credentials: self
                .kinesis
                .access_keys
                .iter()
                .map(|k| (k.access_key_id.clone(), k.secret_access_key.clone()))
                .collect(),
            region: self.kinesis.region.clone(),
            account_id: self.kinesis.account_id.clone(),
            ..Default::default()
        }
    }

    /// How a role reaches the store.
    pub fn remote_config(&self) -> freshet_storage::remote::RemoteConfig {
        let mut c = freshet_storage::remote::RemoteConfig::new(self.remote.endpoint.clone());
        c.region = self.remote.region.clone();
        if let (Some(access_key), Some(secret)) = (&self.remote.access_key_id, &self.remote.secret_access_key)
        {
            c.credentials = Some(freshet_storage::remote::RemoteCredentials {
                access_key: access_key.clone(),
                secret: secret.clone(),
                session_token: None,
            });
        }
        c
    }

    /// Every semantic problem (the file parsed).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir: must not be empty".into());
        }
        if let Err(e) = crate::cli::parse_fsync(&self.store.fsync) {
            p.push(format!("store.fsync: {e}"));
        }
        if self.store.record_bytes_max == 0
            || self.store.record_bytes_max > freshet_storage::RECORD_BYTES_MAX_CEILING
        {
            p.push(format!(
                "store.record_bytes_max: {} is not between 1 and {}",
                self.store.record_bytes_max,
                freshet_storage::RECORD_BYTES_MAX_CEILING
            ));
        }
        if self.store.retention_check_seconds == 0 {
            p.push("store.retention_check_seconds: must be at least 1".into());
        }
        if let Some(t) = &self.http.bearer_token
            && t.trim().is_empty()
        {
            p.push("http.bearer_token: must not be empty when set".into());
        }
        for (i, k) in self.kinesis.access_keys.iter().enumerate() {
            if k.access_key_id.is_empty() || k.secret_access_key.is_empty() {
                p.push(format!(
                    "kinesis.access_keys[{i}]: the id and the secret must not be empty"
                ));
            }
        }
        if !(self.remote.endpoint.starts_with("http://") || self.remote.endpoint.starts_with("https://")) {
            p.push(format!(
                "remote.endpoint: {:?} is not an http:// or https:// URL",
                self.remote.endpoint
            ));
        }
        if self.remote.access_key_id.is_some() != self.remote.secret_access_key.is_some() {
            p.push("remote: access_key_id and secret_access_key go together".into());
        }
        let url = self.warehouse_url();
        if url.contains("://") && !url.starts_with("file://") && !url.starts_with("s3://") {
            p.push(format!(
                "warehouse.url: {url:?} is not a directory, file:// or s3:// URL"
            ));
        }
        if url.starts_with("s3://")
            && url
                .trim_start_matches("s3://")
                .split('/')
                .next()
                .unwrap_or("")
                .is_empty()
        {
            p.push(format!("warehouse.url: {url:?} names no bucket"));
        }

        // Listeners: no address twice, HTTP included.
        let mut addrs: Vec<(SocketAddr, String)> = vec![(self.http.addr, "http.addr".into())];
        for (i, l) in self.gateway.listeners.iter().enumerate() {
            addrs.push((l.addr, format!("gateway.listeners[{i}].addr")));
        }
        for (i, (a, name)) in addrs.iter().enumerate() {
            if a.port() == 0 {
                continue;
            }
            if let Some((_, other)) = addrs[..i].iter().find(|(b, _)| b == a) {
                p.push(format!("{name}: {a} is also {other}"));
            }
        }
        if self.gateway.listeners.is_empty() {
            p.push("gateway.listeners: at least one MQTT listener is needed".into());
        }
        for (i, l) in self.gateway.listeners.iter().enumerate() {
            if let Some(tls) = &l.tls {
                for (k, f) in [("cert_path", &tls.cert_path), ("key_path", &tls.key_path)] {
                    if !f.is_file() {
                        p.push(format!(
                            "gateway.listeners[{i}].tls.{k}: {} is not a readable file",
                            f.display()
                        ));
                    }
                }
            }
        }
        if let Err(e) = freshet_ingest::auth::Authenticator::new(&self.gateway.auth) {
            p.push(format!("gateway.auth: {e}"));
        }

        // Streams.
        let mut declared: Vec<&str> = Vec::new();
        for (i, s) in self.streams.iter().enumerate() {
            if let Err(e) = StreamName::new(s.name.clone()) {
                p.push(format!("streams[{i}].name: {e}"));
            }
            if declared.contains(&s.name.as_str()) {
                p.push(format!("streams[{i}]: stream {:?} is declared twice", s.name));
            }
            declared.push(&s.name);
            if s.shards == 0 || s.shards > 1024 {
                p.push(format!(
                    "streams[{i}].shards: {} is not between 1 and 1024",
                    s.shards
                ));
            }
            if let Some(h) = s.retention_hours
                && !(24..=8760).contains(&h)
            {
                p.push(format!(
                    "streams[{i}].retention_hours: {h} is not between 24 and 8760"
                ));
            }
        }

        // Rules: parsed by the gateway's own parser, every rule on its own.
        let error_stream = match StreamName::new(self.gateway.error_stream.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                p.push(format!("gateway.error_stream: {e}"));
                None
            }
        };
        let mut rule_names: Vec<&str> = Vec::new();
        for (i, r) in self.gateway.rules.iter().enumerate() {
            if rule_names.contains(&r.name.as_str()) {
                p.push(format!("gateway.rules[{i}]: two rules are named {:?}", r.name));
            }
            rule_names.push(&r.name);
            if let Some(es) = &error_stream
                && let Err(e) = freshet_ingest::rules::Rule::new(r, es)
            {
                p.push(format!("gateway.rules[{i}]: {e}"));
            }
            if self.gateway.create_missing_streams_shards == 0 && !declared.contains(&r.stream.as_str()) {
                p.push(format!(
                    "gateway.rules[{i}]: stream {:?} is not declared in [[streams]] \
                     (and gateway.create_missing_streams_shards is 0)",
                    r.stream
                ));
            }
        }

        // Deliveries.
        let mut tables: Vec<&str> = Vec::new();
        let mut delivery_names: Vec<&str> = Vec::new();
        for (i, d) in self.deliveries.iter().enumerate() {
            if let Err(e) = d.validate() {
                p.push(format!("deliveries[{i}] ({}): {e}", d.name));
            }
            if !declared.contains(&d.stream.as_str()) {
                p.push(format!(
                    "deliveries[{i}] ({}): source stream {:?} is not declared in [[streams]]",
                    d.name, d.stream
                ));
            }
            if delivery_names.contains(&d.name.as_str()) {
                p.push(format!("deliveries[{i}]: two deliveries are named {:?}", d.name));
            }
            delivery_names.push(&d.name);
            if tables.contains(&d.table.as_str()) {
                p.push(format!(
                    "deliveries[{i}] ({}): table {:?} is written by another delivery too",
                    d.name, d.table
                ));
            }
            tables.push(&d.table);
        }

        // Reports: the crate's own validation, then tables that no delivery writes.
        if let Err(e) = freshet_reports::validate(&self.reports) {
            match e {
                freshet_reports::ReportError::Config(list) => {
                    p.extend(list.into_iter().map(|m| format!("reports: {m}")));
                }
                other => p.push(format!("reports: {other}")),
            }
        }
        if let Err(e) = freshet_reports::dashboard::validate(&self.dashboards, &self.reports) {
            p.extend(e.0.into_iter().map(|m| format!("dashboards: {m}")));
        }
        let known_table = |t: &str| {
            tables.contains(&t)
                || t.strip_suffix("_errors")
                    .is_some_and(|base| tables.contains(&base))
        };
        for (i, r) in self.reports.iter().enumerate() {
            let mut read: Vec<&str> = r.trigger.tables.iter().map(String::as_str).collect();
            if let freshet_reports::ReportQuery::MinutelyAggregates { table, .. } = &r.query {
                read.push(table);
            }
            read.dedup();
            for t in read {
                if !known_table(t) {
                    p.push(format!(
                        "reports[{i}] ({}): table {t:?} is not written by any delivery",
                        r.name
                    ));
                }
            }
        }
        p
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut v = Value::try_from(self).expect("the configuration serializes");
        mask(&mut v, false);
        toml::to_string_pretty(&v).expect("a TOML value prints")
    }
}

fn secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["secret", "token", "password"].iter().any(|s| k.contains(s))
}

fn mask(v: &mut Value, parent_secret: bool) {
    match v {
        Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                // `token_key`-like names are secrets too; `*_max`/`*_bytes` numbers are not strings.
                mask(v, parent_secret || secret_key(k));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask(i, parent_secret)),
        Value::String(s) if parent_secret && !s.is_empty() => *s = MASK.to_string(),
        _ => {}
    }
}

/// `--config PATH`, shared by `freshet up`, `freshet run` and `freshet config`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigFlag {
    /// Configuration file (default: `./freshet.toml` when it exists, else the built-in default pipeline).
    #[arg(long, env = "FRESHET_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
    #[command(flatten)]
    pub file: ConfigFlag,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file + environment) and list every problem; exit 1 if there is any.
    Check,
    /// Print the effective configuration (defaults included) as TOML, secrets masked.
    Print,
}

pub fn run_cli(args: ConfigArgs) -> anyhow::Result<()> {
    let path = resolve_path(args.file.config.as_deref());
    let config = load(path.as_deref(), &Overrides::default())?;
    match args.command {
        ConfigCommand::Check => {
            let source = path.map_or_else(|| "built-in defaults".to_string(), |p| p.display().to_string());
            println!(
                "{source}: ok ({} streams, {} rules, {} deliveries, {} reports; warehouse {})",
                config.streams.len(),
                config.gateway.rules.len(),
                config.deliveries.len(),
                config.reports.len(),
                config.warehouse_url()
            );
        }
        ConfigCommand::Print => print!("{}", config.to_masked_toml()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, Problems> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freshet.toml");
        std::fs::write(&path, text).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load_with_env(Some(&path), &env, &Overrides::default())
    }

    #[test]
    fn no_file_is_the_default_pipeline() {
        let c = load_with_env(None, &[], &Overrides::default()).unwrap();
        assert_eq!(c.streams[0].name, "telemetry");
        assert_eq!(c.streams[0].shards, 4);
        assert_eq!(c.gateway.rules.len(), 1);
        assert_eq!(c.deliveries[0].warehouse, "./freshet-data/warehouse");
        assert_eq!(c.reports[0].name, "telemetry_minutely");
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.gateway.listeners[0].addr.to_string(), "127.0.0.1:1883");
    }

    #[test]
    fn every_problem_is_listed() {
        let e = load_text(
            r#"
            colour = "blue"
            [http]
            addr = "not an address"
            [store]
            fsync = "sometimes"
            [[streams]]
            name = "a"
            shards = 0
            [[gateway.rules]]
            name = "r"
            sql = "SELEC * FROM"
            stream = "a"
            partition_key = "x"
            [[deliveries]]
            name = "d"
            stream = "missing"
            table = "t"
            "#,
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("colour"), "{text}");
        assert!(text.contains("http.addr"), "{text}");
        // Parse errors stop before semantic checks; fix them and the next layer shows up.
        let e = load_text(
            r#"
            [store]
            fsync = "sometimes"
            [[streams]]
            name = "a"
            shards = 0
            [[gateway.rules]]
            name = "r"
            sql = "SELEC * FROM"
            stream = "a"
            partition_key = "x"
            [[deliveries]]
            name = "d"
            stream = "missing"
            table = "t"
            "#,
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "store.fsync",
            "streams[0].shards",
            "gateway.rules[0]",
            "\"missing\" is not declared",
            "\"telemetry\" is not written by any delivery",
        ] {
            assert!(text.contains(needle), "{needle} missing in:\n{text}");
        }
        assert!(text.lines().count() >= 6, "{text}");
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let c = load_text(
            "[http]\naddr = \"127.0.0.1:9000\"\n",
            &[
                ("FRESHET_HTTP__ADDR", "127.0.0.1:9100"),
                ("FRESHET_GATEWAY__LISTENERS__0__ADDR", "127.0.0.1:2883"),
                ("FRESHET_STREAMS__0__SHARDS", "2"),
                ("FRESHET_DATA_DIR", "/tmp/x"),
                ("FRESHET_MQTT_ADDR", "ignored: a flag's variable"),
            ],
        )
        .unwrap();
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:9100");
        assert_eq!(c.gateway.listeners[0].addr.to_string(), "127.0.0.1:2883");
        assert_eq!(c.streams[0].shards, 2);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let e = load_text("", &[("FRESHET_HTTP__NOPE", "1")]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn secrets_are_masked() {
        let c = load_text(
            r#"
            [http]
            bearer_token = "tok-123"
            [[kinesis.access_keys]]
            access_key_id = "AKID"
            secret_access_key = "s3cr3t"
            [warehouse]
            url = "s3://bucket/prefix"
            secret_access_key = "wsecret"
            access_key_id = "WKID"
            "#,
            &[],
        )
        .unwrap();
        let text = c.to_masked_toml();
        for secret in ["tok-123", "s3cr3t", "wsecret"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        assert!(text.contains("AKID") && text.contains(MASK), "{text}");
        assert_eq!(c.deliveries[0].warehouse, "s3://bucket/prefix");
        assert_eq!(
            c.deliveries[0].storage_options["aws_secret_access_key"],
            "wsecret"
        );
    }

    #[test]
    fn the_printed_config_loads_back() {
        let c = load_with_env(None, &[], &Overrides::default()).unwrap();
        let text = c.to_masked_toml();
        let again = load_text(&text, &[]).unwrap();
        assert_eq!(again.to_masked_toml(), text);
    }
}
