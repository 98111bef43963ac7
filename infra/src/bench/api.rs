//! `freshet bench api`: PutRecords and GetRecords throughput and latency over HTTP against freshet's Kinesis API
//! (served in-process over an embedded store), and in the same run, with the same client and load, against
//! kinesalite (the npm Kinesis emulator, started as a child process), and the ratios.
//!
//! The client is deliberately small and the same for both: reqwest, one HTTP/1.1 connection per client task, a
//! hand-built Kinesis JSON 1.1 request (`POST /`, `X-Amz-Target: Kinesis_20131202.<Op>`). Requests carry a
//! placeholder `Authorization` header and are not signed: kinesalite insists on the header's presence but never
//! checks the signature, and freshet without configured credentials ignores it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::Args;
use freshet_storage::{FsyncPolicy, StreamStore};
use hdrhistogram::Histogram;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{histogram, load, machine, ms, peak_rss_mib, record_latency};

/// The kinesalite release the bench installs when none is found.
const KINESALITE_VERSION: &str = "3.3.3";
const STREAM: &str = "bench";

#[derive(Debug, Args)]
pub struct ApiBenchArgs {
    /// Seconds of PutRecords load per system.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent clients, each with its own connection, each sending its next call when the last one returned.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Records per PutRecords call (at most 500).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Shards of the bench stream.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Records per GetRecords call when reading back (at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub read_limit: usize,
    /// fsync policy for freshet: always (the default and the durable one), interval:<ms>, never.
    #[arg(long, default_value = "always", value_parser = crate::cli::parse_fsync)]
    pub fsync: FsyncPolicy,
    /// Directory for freshet's data (and kinesalite's with --kinesalite-disk); default: the system temp directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where kinesalite is (or gets) installed: `<prefix>/node_modules/kinesalite`.
    /// Default: $XDG_CACHE_HOME/freshet/kinesalite, else ~/.cache/freshet/kinesalite.
    #[arg(long)]
    pub kinesalite_prefix: Option<PathBuf>,
    /// Do not run `npm install` when kinesalite is missing: print the command and stop.
    #[arg(long)]
    pub no_install: bool,
    /// Back kinesalite with LevelDB in a temp dir (`--path`) instead of its default in-memory store.
    #[arg(long)]
    pub kinesalite_disk: bool,
    /// Skip the kinesalite peer.
    #[arg(long)]
    pub no_peer: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
struct Phase {
    calls: u64,
    records: u64,
    failed_records: u64,
    records_per_s: f64,
    mb_per_s: f64,
    call_ms_p50: f64,
    call_ms_p99: f64,
}

#[derive(Debug, Serialize)]
struct SystemResult {
    system: String,
    put: Phase,
    get: Phase,
}

#[derive(Debug, Serialize)]
struct Ratios {
    put_records_per_s: f64,
    get_records_per_s: f64,
    /// kinesalite's p99 PutRecords latency over freshet's (above 1: freshet is faster).
    put_p99_speedup: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    clients: usize,
    batch: usize,
    record_bytes: usize,
    shards: u32,
    seconds: u64,
    fsync: String,
    results: Vec<SystemResult>,
    ratios: Option<Ratios>,
    freshet_peak_rss_mib: Option<f64>,
    kinesalite_peak_rss_mib: Option<f64>,
}

/// A Kinesis JSON 1.1 endpoint and one connection to it.
#[derive(Clone)]
struct Endpoint {
    http: reqwest::Client,
    url: String,
}

impl Endpoint {
    fn new(url: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self {
            http,
            url: url.to_string(),
        })
    }

    async fn call<T: DeserializeOwned>(&self, op: &str, body: Bytes) -> anyhow::Result<T> {
        let response = self
            .http
            .post(&self.url)
            .header("X-Amz-Target", format!("Kinesis_20131202.{op}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("X-Amz-Date", "20260101T000000Z")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/kinesis/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=unsigned",
            )
            .body(body)
            .send()
            .await
            .with_context(|| format!("{op} to {}", self.url))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            bail!("{op}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        // kinesalite answers CreateStream with an empty body, AWS and freshet with `{}`.
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).with_context(|| format!("{op}: unexpected response"))
    }

    async fn call_json<T: DeserializeOwned>(&self, op: &str, body: serde_json::Value) -> anyhow::Result<T> {
        self.call(op, Bytes::from(serde_json::to_vec(&body)?)).await
    }
}

#[derive(Deserialize)]
struct Ignored {}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeOut {
    stream_description: Description,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Description {
    stream_status: String,
    shards: Vec<ShardOut>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ShardOut {
    shard_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutOut {
    failed_record_count: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IteratorOut {
    shard_iterator: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetOut {
    records: Vec<RecordOut>,
    next_shard_iterator: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordOut {
    data: String,
}

/// The body of one PutRecords call of client `client`: `batch` records of `size` bytes, partition keys spread
/// over 1,024 devices (so over every shard). Built once per client; every call of that client sends it again.
fn put_body(client: usize, batch: usize, size: usize) -> anyhow::Result<Bytes> {
    let mut text = String::from("{\"device\":\"dev-0001\",\"temp\":21.5,\"hum\":40.1,\"v\":\"");
    while text.len() + 2 < size {
        text.push('x');
    }
    text.push_str("\"}");
    text.truncate(size);
    let data = STANDARD.encode(text.as_bytes());
    let records: Vec<_> = (0..batch)
        .map(|i| json!({"Data": data, "PartitionKey": format!("device-{:04}", (client * 131 + i) % 1024)}))
        .collect();
    Ok(Bytes::from(serde_json::to_vec(
        &json!({"StreamName": STREAM, "Records": records}),
    )?))
}

fn phase(calls: u64, records: u64, failed: u64, bytes: u64, elapsed: Duration, h: &Histogram<u64>) -> Phase {
    let secs = elapsed.as_secs_f64();
    Phase {
        calls,
        records,
        failed_records: failed,
        records_per_s: records as f64 / secs,
        mb_per_s: bytes as f64 / secs / 1e6,
        call_ms_p50: ms(h, 0.5),
        call_ms_p99: ms(h, 0.99),
    }
}

async fn create_stream(endpoint: &Endpoint, shards: u32) -> anyhow::Result<Vec<String>> {
    let _: Ignored = endpoint
        .call_json(
            "CreateStream",
            json!({"StreamName": STREAM, "ShardCount": shards}),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out: DescribeOut = endpoint
            .call_json("DescribeStream", json!({"StreamName": STREAM}))
            .await?;
        let d = out.stream_description;
        if d.stream_status == "ACTIVE" {
            return Ok(d.shards.into_iter().map(|s| s.shard_id).collect());
        }
        if Instant::now() > deadline {
            bail!("stream still {} after 30 s", d.stream_status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PutRecords from `clients` concurrent clients, closed loop, for `seconds`.
async fn put_phase(url: &str, args: &ApiBenchArgs) -> anyhow::Result<Phase> {
    let clients: Arc<Vec<(Endpoint, Bytes)>> = Arc::new(
        (0..args.clients)
            .map(|client| Ok((Endpoint::new(url)?, put_body(client, args.batch, args.size)?)))
            .collect::<anyhow::Result<_>>()?,
    );
    let (calls, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let batch = args.batch as u64;
    let send = {
        let (clients, calls, failed) = (clients.clone(), calls.clone(), failed.clone());
        move |client: usize| {
            let (clients, calls, failed) = (clients.clone(), calls.clone(), failed.clone());
            async move {
                let (endpoint, body) = &clients[client];
                let out: PutOut = endpoint.call("PutRecords", body.clone()).await?;
                calls.fetch_add(1, Ordering::Relaxed);
                failed.fetch_add(out.failed_record_count, Ordering::Relaxed);
                anyhow::Ok(batch - out.failed_record_count)
            }
        }
    };
    let (records, h, elapsed) = load(args.clients, Duration::from_secs(args.seconds), None, send).await?;
    Ok(phase(
        calls.load(Ordering::Relaxed),
        records,
        failed.load(Ordering::Relaxed),
        records * args.size as u64,
        elapsed,
        &h,
    ))
}

/// Read every shard from TRIM_HORIZON to its end, one task per shard.
async fn get_phase(url: &str, shards: &[String], limit: usize) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for shard in shards {
        let endpoint = Endpoint::new(url)?;
        let shard = shard.clone();
        tasks.push(tokio::spawn(async move {
            let out: IteratorOut = endpoint
                .call_json(
                    "GetShardIterator",
                    json!({"StreamName": STREAM, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}),
                )
                .await?;
            let mut iterator = out.shard_iterator;
            let (mut h, mut calls, mut records, mut bytes) = (histogram(), 0u64, 0u64, 0u64);
            loop {
                let sent = Instant::now();
                let out: GetOut = endpoint
                    .call_json("GetRecords", json!({"ShardIterator": iterator, "Limit": limit}))
                    .await?;
                record_latency(&mut h, sent.elapsed());
                calls += 1;
                if out.records.is_empty() {
                    break;
                }
                records += out.records.len() as u64;
                for r in &out.records {
                    bytes += STANDARD.decode(&r.data)?.len() as u64;
                }
                match out.next_shard_iterator {
                    Some(next) => iterator = next,
                    None => break,
                }
            }
            anyhow::Ok((calls, records, bytes, h))
        }));
    }
    let (mut calls, mut records, mut bytes, mut h) = (0, 0, 0, histogram());
    for task in tasks {
        let (c, r, b, th) = task.await??;
        calls += c;
        records += r;
        bytes += b;
        h.add(th)?;
    }
    Ok(phase(calls, records, 0, bytes, start.elapsed(), &h))
}

async fn measure(name: &str, url: &str, args: &ApiBenchArgs) -> anyhow::Result<SystemResult> {
    let shards = create_stream(&Endpoint::new(url)?, args.shards).await?;
    let put = put_phase(url, args).await?;
    eprintln!(
        "  {name} PutRecords: {:.0} records/s, {:.1} MB/s, call p50 {:.2} ms p99 {:.2} ms{}",
        put.records_per_s,
        put.mb_per_s,
        put.call_ms_p50,
        put.call_ms_p99,
        if put.failed_records > 0 {
            format!(", {} records failed", put.failed_records)
        } else {
            String::new()
        }
    );
    let get = get_phase(url, &shards, args.read_limit).await?;
    eprintln!(
        "  {name} GetRecords: {:.0} records/s, {:.1} MB/s, {} of {} records read back",
        get.records_per_s, get.mb_per_s, get.records, put.records
    );
    if get.records != put.records {
        eprintln!(
            "  warning: {name} read back {} records, {} were acknowledged",
            get.records, put.records
        );
    }
    Ok(SystemResult {
        system: name.to_string(),
        put,
        get,
    })
}

async fn freshet(args: &ApiBenchArgs, base: &Path) -> anyhow::Result<SystemResult> {
    let (_dir, store) = super::temp_store(base, args.fsync)?;
    let router = freshet_storage::api::router(
        Arc::new(store.clone()) as Arc<dyn StreamStore>,
        freshet_storage::api::ApiConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(freshet_storage::api::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    let result = measure("freshet", &url, args).await;
    let _ = stop.send(());
    server.await??;
    store.shutdown().await;
    result
}

fn default_prefix() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("freshet").join("kinesalite")
}

/// The installed kinesalite package directory and its version; installs it with npm when missing
/// (unless `--no-install`).
async fn find_kinesalite(args: &ApiBenchArgs) -> anyhow::Result<(PathBuf, String)> {
    let prefix = args.kinesalite_prefix.clone().unwrap_or_else(default_prefix);
    let package = prefix.join("node_modules").join("kinesalite");
    if !package.join("index.js").exists() {
        let command = format!(
            "npm install --prefix {} kinesalite@{KINESALITE_VERSION}",
            prefix.display()
        );
        if args.no_install {
            bail!("kinesalite is not installed: run `{command}`, or pass --no-peer");
        }
        eprintln!("kinesalite is not installed; running `{command}`");
        std::fs::create_dir_all(&prefix)?;
        let status = tokio::process::Command::new("npm")
            .args(["install", "--prefix"])
            .arg(&prefix)
            .arg(format!("kinesalite@{KINESALITE_VERSION}"))
            .stdout(Stdio::null())
            .status()
            .await
            .context("running npm (install Node.js and npm, or pass --no-peer)")?;
        if !status.success() || !package.join("index.js").exists() {
            bail!("`{command}` failed ({status})");
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(package.join("package.json"))?)?;
    let version = manifest["version"].as_str().unwrap_or("unknown").to_string();
    Ok((package, version))
}

/// kinesalite, as a child process listening on 127.0.0.1 only; killed when dropped.
struct Kinesalite {
    child: tokio::process::Child,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Kinesalite {
    async fn start(package: &Path, disk: Option<tempfile::TempDir>) -> anyhow::Result<Self> {
        // kinesalite's CLI listens on every interface; its module lets us bind the loopback address only.
        let script = "const options = process.env.KINESALITE_PATH ? {path: process.env.KINESALITE_PATH} : {};\n\
             const server = require(process.env.KINESALITE_PACKAGE)(options);\n\
             server.listen(0, '127.0.0.1', () => console.log('listening ' + server.address().port));";
        let mut command = tokio::process::Command::new("node");
        command
            .arg("-e")
            .arg(script)
            .env("KINESALITE_PACKAGE", package)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(dir) = &disk {
            command.env("KINESALITE_PATH", dir.path());
        }
        let mut child = command
            .spawn()
            .context("starting node (install Node.js, or pass --no-peer)")?;
        let stdout = child.stdout.take().context("kinesalite stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(port) = line.strip_prefix("listening ") {
                    return anyhow::Ok(port.trim().parse::<u16>()?);
                }
            }
            bail!("kinesalite exited before listening")
        })
        .await
        .context("kinesalite did not start listening within 30 s")??;
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}/"),
            _dir: disk,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

pub async fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > freshet_storage::PUT_RECORDS_MAX {
        bail!("--batch must be 1 to {}", freshet_storage::PUT_RECORDS_MAX);
    }
    if args.read_limit == 0 || args.read_limit > 10_000 {
        bail!("--read-limit must be 1 to 10000");
    }
    if args.clients == 0 || args.size == 0 || args.shards == 0 {
        bail!("--clients, --size and --shards must be at least 1");
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let peer = if args.no_peer {
        None
    } else {
        let (package, version) = find_kinesalite(&args).await?;
        let disk = if args.kinesalite_disk {
            Some(tempfile::tempdir_in(&base)?)
        } else {
            None
        };
        Some((Kinesalite::start(&package, disk).await?, version))
    };

    let mut results = vec![freshet(&args, &base).await?];
    let mut kinesalite_rss = None;
    let mut peer_name = None;
    if let Some((server, version)) = &peer {
        let name = format!(
            "kinesalite {version} ({})",
            if args.kinesalite_disk {
                "LevelDB on disk"
            } else {
                "in memory"
            }
        );
        results.push(measure("kinesalite", &server.url, &args).await?);
        kinesalite_rss = peak_rss_mib(server.pid());
        peer_name = Some(name);
    }
    let ratios = results.get(1).map(|k| {
        let f = &results[0];
        Ratios {
            put_records_per_s: f.put.records_per_s / k.put.records_per_s,
            get_records_per_s: f.get.records_per_s / k.get.records_per_s,
            put_p99_speedup: k.put.call_ms_p99 / f.put.call_ms_p99,
        }
    });
    let report = Report {
        machine: machine(),
        clients: args.clients,
        batch: args.batch,
        record_bytes: args.size,
        shards: args.shards,
        seconds: args.seconds,
        fsync: format!("{:?}", args.fsync),
        results,
        ratios,
        freshet_peak_rss_mib: peak_rss_mib(None),
        kinesalite_peak_rss_mib: kinesalite_rss,
    };
    print_report(&report, peer_name.as_deref().unwrap_or("none"));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    drop(peer);
    Ok(())
}

fn print_report(r: &Report, peer: &str) {
    println!("\nfreshet bench api — {}", r.machine);
    println!(
        "{} clients, {} records of {} B per PutRecords, {} shards, {} s of PutRecords, GetRecords of up to 10,000 \
         per call from TRIM_HORIZON; freshet fsync {}, peer: {peer}\n",
        r.clients, r.batch, r.record_bytes, r.shards, r.seconds, r.fsync
    );
    println!(
        "| system | PutRecords records/s | MB/s | call p50 ms | call p99 ms | GetRecords records/s | MB/s | call p50 ms | call p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in &r.results {
        println!(
            "| {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.0} | {:.1} | {:.2} | {:.2} |",
            s.system,
            s.put.records_per_s,
            s.put.mb_per_s,
            s.put.call_ms_p50,
            s.put.call_ms_p99,
            s.get.records_per_s,
            s.get.mb_per_s,
            s.get.call_ms_p50,
            s.get.call_ms_p99
        );
    }
    println!();
    if let Some(x) = &r.ratios {
        println!(
            "freshet/kinesalite: PutRecords {:.1}x, GetRecords {:.1}x; PutRecords p99 {:.1}x lower",
            x.put_records_per_s, x.get_records_per_s, x.put_p99_speedup
        );
    }
    let rss = |v: Option<f64>| v.map_or("n/a".into(), |m| format!("{m:.0} MiB"));
    println!(
        "peak RSS: freshet (server + client in one process) {}, kinesalite {}",
        rss(r.freshet_peak_rss_mib),
        rss(r.kinesalite_peak_rss_mib)
    );
}
