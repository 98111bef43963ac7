//! `freshet bench ingest`: N MQTT clients publish 100-byte JSON at QoS 1 into the gateway, whose rule appends every
//! publish durably (embedded store, fsync `always`) before the PUBACK; then the same load against Mosquitto
//! (in memory, a child process on 127.0.0.1) and against a bare rumqttd (no store behind it), each broker with one
//! subscriber draining it. Reports sustained publishes/s, publish → PUBACK latency (for freshet that is publish →
//! durable), peak RSS, and the ratios. The load generator is `freshet_ingest::bench`.
//!
//! With `--rounds N` (default 3) the brokers are started once and measured in turn N times (freshet, Mosquitto,
//! bare rumqttd, freshet, ...): a VM's speed drifts by tens of percent over a minute, so each round's ratio compares
//! runs a few seconds apart, and the report gives each broker's median round and the median of the rounds' ratios.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use freshet_ingest::bench::{LoadConfig, LoadReport, drain, run_load, start_bare_rumqttd};
use freshet_ingest::{GatewayConfig, ListenerConfig, RuleConfig};
use freshet_storage::{FsyncPolicy, StreamName, StreamStore};
use serde::Serialize;

use super::{machine, median, peak_rss_mib};

const TOPIC_PREFIX: &str = "bench";
const FILTER: &str = "bench/+/telemetry";

#[derive(Debug, Args)]
pub struct IngestBenchArgs {
    /// Target seconds of the measured run per broker and round (its size comes from a short calibration run).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds: every broker is measured once per round, in turn (freshet, bare rumqttd, Mosquitto); the report
    /// takes medians over the rounds. Many short rounds follow the machine's drifting speed better than a few long
    /// ones.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Concurrent MQTT clients (client i publishes to `bench/<i>/telemetry`).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// QoS 1 publishes outstanding per client.
    #[arg(long, default_value_t = 64)]
    pub inflight: u16,
    /// Payload size in bytes (JSON).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Shards of the `bench` stream.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// QoS of the one subscriber on each broker (0 or 1). freshet delivers both (clean sessions) itself; the bare
    /// rumqttd through its router.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub subscriber_qos: u8,
    /// fsync policy of freshet's store: always (the default and the durable one), interval:<ms>, never.
    #[arg(long, default_value = "always", value_parser = crate::cli::parse_fsync)]
    pub fsync: FsyncPolicy,
    /// Fixed publishes per client for every broker instead of sizing the run from `--seconds`.
    #[arg(long)]
    pub messages_per_client: Option<usize>,
    /// Directory for freshet's store (default: the system temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Skip the Mosquitto peer.
    #[arg(long)]
    pub no_mosquitto: bool,
    /// Skip the bare rumqttd peer.
    #[arg(long)]
    pub no_rumqttd: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct BrokerResult {
    system: String,
    published: u64,
    acked: u64,
    seconds: f64,
    publishes_per_s: f64,
    /// Publish → PUBACK; for freshet the PUBACK follows the durable append, so this is publish → durable.
    puback_ms_p50: f64,
    puback_ms_p99: f64,
    puback_ms_max: f64,
    /// Publishes the one subscriber received during the measured run.
    subscriber_received: u64,
    peak_rss_mib: Option<f64>,
    /// freshet only: records the gateway reported durable in the store during the measured run.
    records_durable: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    subscriber_qos: u8,
    machine: String,
    clients: usize,
    inflight: u16,
    payload_bytes: usize,
    shards: u32,
    fsync: String,
    rounds: usize,
    /// Per broker, its median round (by publishes/s).
    results: Vec<BrokerResult>,
    /// The median over rounds of freshet's publishes/s over the peer's in the same round.
    freshet_over_mosquitto: Option<f64>,
    freshet_over_rumqttd: Option<f64>,
    /// Each round's ratio, in round order.
    rounds_over_mosquitto: Vec<f64>,
    rounds_over_rumqttd: Vec<f64>,
}

/// A Mosquitto child process with an in-memory configuration, killed on drop.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    version: String,
}

impl Mosquitto {
    async fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("mosquitto.conf");
        // No persistence: messages live in memory only. Nagle off like the load generator's sockets.
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n\
                 log_dest none\nmax_queued_messages 100000\n"
            ),
        )?;
        let version = Command::new(binary)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_string())
            })
            .unwrap_or_else(|| "mosquitto (unknown version)".into());
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = Self { child, addr, version };
        super::wait_listening(addr, "mosquitto").await?;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto` on PATH, or in /usr/sbin (where Debian puts it, often not on a user's PATH).
fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn load_config(args: &IngestBenchArgs, addr: SocketAddr, messages_per_client: usize) -> LoadConfig {
    LoadConfig {
        addr,
        clients: args.clients,
        messages_per_client,
        payload_bytes: args.payload_bytes,
        qos: 1,
        inflight: args.inflight,
        topic_prefix: TOPIC_PREFIX.into(),
        timeout: Duration::from_secs(args.seconds * 10 + 60),
    }
}

/// Publishes per client for a measured run of `--seconds`, from a short calibration run (which also warms the
/// broker up), unless `--messages-per-client` fixes it.
async fn calibrate(args: &IngestBenchArgs, addr: SocketAddr, name: &str) -> anyhow::Result<usize> {
    if let Some(n) = args.messages_per_client {
        return Ok(n);
    }
    let warm = run_load(load_config(args, addr, 2_000))
        .await
        .with_context(|| format!("{name}: calibration run"))?;
    let n = warm.publishes_per_s * args.seconds as f64 / args.clients.max(1) as f64;
    eprintln!(
        "  {name} calibration: {:.0} publishes/s → {:.0} per client",
        warm.publishes_per_s, n
    );
    Ok((n as usize).max(1_000))
}

/// One measured run of `per_client` publishes per client, with one subscriber draining the broker during it.
/// Returns the run, what the subscriber received, and (freshet) the records made durable meanwhile.
async fn measure(
    args: &IngestBenchArgs,
    addr: SocketAddr,
    name: &str,
    per_client: usize,
    gateway: Option<&freshet_ingest::GatewayHandle>,
) -> anyhow::Result<(LoadReport, u64, u64)> {
    let expected = (per_client * args.clients) as u64;
    let drain_timeout = Duration::from_secs(args.seconds * 10 + 70);
    let count = Arc::new(AtomicU64::new(0));
    let subscriber = tokio::spawn(drain(
        addr,
        FILTER,
        args.subscriber_qos,
        expected,
        drain_timeout,
        count.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await; // let the subscription land before the load starts
    let appended_before = gateway.map_or(0, |g| g.stats().appended);
    let report = run_load(load_config(args, addr, per_client))
        .await
        .with_context(|| format!("{name}: measured run"))?;
    // The subscriber gets a short grace period to catch up after the last PUBACK, then counts what it has.
    match tokio::time::timeout(Duration::from_secs(5), subscriber).await {
        Ok(joined) => joined??,
        Err(_) => eprintln!("  {name}: subscriber still short of all publishes 5 s after the load"),
    }
    let received = count.load(Ordering::Relaxed);
    eprintln!(
        "  {name}: {:.0} publishes/s, PUBACK p50 {:.2} ms p99 {:.2} ms; subscriber received {received} of {expected}",
        report.publishes_per_s,
        report.latency_us_p50 as f64 / 1000.0,
        report.latency_us_p99 as f64 / 1000.0
    );
    let appended = gateway.map_or(0, |g| g.stats().appended) - appended_before;
    Ok((report, received, appended))
}

fn result(
    system: &str,
    r: &LoadReport,
    received: u64,
    rss: Option<f64>,
    durable: Option<u64>,
) -> BrokerResult {
    BrokerResult {
        system: system.into(),
        published: r.published,
        acked: r.acked,
        seconds: r.elapsed.as_secs_f64(),
        publishes_per_s: r.publishes_per_s,
        puback_ms_p50: r.latency_us_p50 as f64 / 1000.0,
        puback_ms_p99: r.latency_us_p99 as f64 / 1000.0,
        puback_ms_max: r.latency_us_max as f64 / 1000.0,
        subscriber_received: received,
        peak_rss_mib: rss,
        records_durable: durable,
    }
}

/// One broker under test, started once for all rounds.
struct Broker {
    name: String,
    addr: SocketAddr,
    per_client: usize,
    /// freshet's gateway (for its durable count).
    gateway: Option<freshet_ingest::GatewayHandle>,
    /// Each round's run, what its subscriber received and (freshet) what became durable.
    runs: Vec<(LoadReport, u64, u64)>,
    rss: Option<f64>,
}

impl Broker {
    fn new(name: String, addr: SocketAddr, gateway: Option<freshet_ingest::GatewayHandle>) -> Self {
        Self {
            name,
            addr,
            per_client: 0,
            gateway,
            runs: Vec::new(),
            rss: None,
        }
    }

    async fn round(&mut self, args: &IngestBenchArgs) -> anyhow::Result<()> {
        if self.runs.is_empty() {
            self.per_client = calibrate(args, self.addr, &self.name).await?;
        }
        let run = measure(
            args,
            self.addr,
            &self.name,
            self.per_client,
            self.gateway.as_ref(),
        )
        .await?;
        self.runs.push(run);
        Ok(())
    }

    /// The median round by publishes/s.
    fn median(&self) -> &(LoadReport, u64, u64) {
        let mut order: Vec<usize> = (0..self.runs.len()).collect();
        order.sort_by(|a, b| {
            self.runs[*a]
                .0
                .publishes_per_s
                .total_cmp(&self.runs[*b].0.publishes_per_s)
        });
        &self.runs[order[order.len() / 2]]
    }

    fn result(&self, system: &str) -> BrokerResult {
        let (report, received, durable) = self.median();
        result(
            system,
            report,
            *received,
            self.rss,
            self.gateway.as_ref().map(|_| *durable),
        )
    }
}

pub async fn run(args: IngestBenchArgs) -> anyhow::Result<()> {
    if args.clients == 0
        || args.seconds == 0
        || args.inflight == 0
        || args.payload_bytes < 16
        || args.rounds == 0
    {
        bail!("--clients, --seconds, --inflight and --rounds must be > 0, --payload-bytes >= 16");
    }
    let mosquitto_binary = if args.no_mosquitto {
        None
    } else {
        Some(find_mosquitto().context(
            "mosquitto is not installed: run `apt-get install mosquitto` (Debian), or pass --no-mosquitto",
        )?)
    };
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);

    // freshet: the embedded store and the gateway with one rule into `bench`.
    let (_dir, store) = super::temp_store(&base, args.fsync)?;
    store
        .create_stream(&StreamName::new("bench")?, args.shards)
        .await?;
    let config = GatewayConfig {
        listeners: vec![ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))],
        rules: vec![RuleConfig {
            name: "bench".into(),
            sql: format!("SELECT * FROM '{FILTER}'"),
            stream: "bench".into(),
            partition_key: "${topic(2)}".into(),
            error_stream: None,
        }],
        ..GatewayConfig::default()
    };
    let store_dyn: Arc<dyn StreamStore> = Arc::new(store.clone());
    let gateway = freshet_ingest::start(config, store_dyn)
        .await
        .context("starting the gateway")?;
    let addr = gateway.local_addrs()[0];
    let mut freshet = Broker::new("freshet".into(), addr, Some(gateway));

    let mosquitto_dir = tempfile::tempdir_in(&base)?;
    let mosquitto = match &mosquitto_binary {
        Some(binary) => Some(Mosquitto::start(binary, mosquitto_dir.path()).await?),
        None => None,
    };
    let mut mosquitto_broker = mosquitto
        .as_ref()
        .map(|m| Broker::new("mosquitto".into(), m.addr, None));
    let mut rumqttd = None;

    for round in 1..=args.rounds {
        eprintln!("round {round} of {}:", args.rounds);
        freshet.round(&args).await?;
        if round == 1 {
            // VmHWM of this process after freshet's first round, before the bare rumqttd ever runs in it: store +
            // gateway + load generator + subscriber.
            freshet.rss = peak_rss_mib(None);
        }
        // The bare rumqttd right after freshet: the ratio that is closest to its target compares runs seconds apart.
        if !args.no_rumqttd {
            if rumqttd.is_none() {
                // Started at its first turn: rumqttd cannot be stopped and runs inside this process until it exits.
                let addr = free_addr()?;
                start_bare_rumqttd(addr)?;
                super::wait_listening(addr, "bare rumqttd").await?;
                rumqttd = Some(Broker::new("rumqttd".into(), addr, None));
            }
            if let Some(b) = &mut rumqttd {
                b.round(&args).await?;
            }
        }
        if let (Some(b), Some(m)) = (&mut mosquitto_broker, &mosquitto) {
            b.round(&args).await?;
            b.rss = peak_rss_mib(Some(m.pid()));
        }
    }

    let stats = freshet.gateway.as_ref().map(|g| g.stats()).unwrap_or_default();
    let ratios = |peer: &Option<Broker>| -> Vec<f64> {
        peer.as_ref().map_or_else(Vec::new, |p| {
            freshet
                .runs
                .iter()
                .zip(&p.runs)
                .map(|(f, q)| f.0.publishes_per_s / q.0.publishes_per_s)
                .collect()
        })
    };
    let rounds_over_mosquitto = ratios(&mosquitto_broker);
    let rounds_over_rumqttd = ratios(&rumqttd);
    let mut results = vec![freshet.result(&format!("freshet (fsync {:?})", args.fsync))];
    if let (Some(b), Some(m)) = (&mosquitto_broker, &mosquitto) {
        results.push(b.result(&format!("Mosquitto ({}, in memory)", m.version)));
    }
    if let Some(b) = &rumqttd {
        results.push(b.result("bare rumqttd 0.20 (no store)"));
    }
    if let Some(g) = freshet.gateway.take() {
        g.shutdown().await;
    }
    store.shutdown().await;
    if stats.append_failed > 0 || stats.failed > 0 {
        bail!(
            "freshet: {} publishes failed rules, {} appends failed",
            stats.failed,
            stats.append_failed
        );
    }
    let report = Report {
        machine: machine(),
        clients: args.clients,
        inflight: args.inflight,
        payload_bytes: args.payload_bytes,
        shards: args.shards,
        subscriber_qos: args.subscriber_qos,
        fsync: format!("{:?}", args.fsync),
        rounds: args.rounds,
        freshet_over_mosquitto: median(rounds_over_mosquitto.clone()),
        freshet_over_rumqttd: median(rounds_over_rumqttd.clone()),
        rounds_over_mosquitto,
        rounds_over_rumqttd,
        results,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!("\nfreshet bench ingest — {}", r.machine);
    println!(
        "{} clients, QoS 1, {} publishes in flight per client, {} B JSON payloads; freshet: rule → stream `bench` \
         ({} shards, key ${{topic(2)}}), fsync {}; one QoS {} subscriber on `{FILTER}` per broker; {} round(s), \
         each broker's median round below\n",
        r.clients, r.inflight, r.payload_bytes, r.shards, r.fsync, r.subscriber_qos, r.rounds
    );
    println!(
        "| system | publishes/s | PUBACK p50 ms | PUBACK p99 ms | PUBACK max ms | subscriber got | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for b in &r.results {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} / {} | {} |",
            b.system,
            b.publishes_per_s,
            b.puback_ms_p50,
            b.puback_ms_p99,
            b.puback_ms_max,
            b.subscriber_received,
            b.published,
            b.peak_rss_mib.map_or("n/a".into(), |m| format!("{m:.0}")),
        );
    }
    println!();
    if let Some(f) = r.results.first() {
        println!(
            "freshet: the gateway sends PUBACK only after the durable append, so its PUBACK latency is publish → durable; \
             {} records durable during the measured run of {} published",
            f.records_durable.unwrap_or(0),
            f.published
        );
    }
    let rounds = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
    if let Some(x) = r.freshet_over_mosquitto {
        println!(
            "freshet/Mosquitto publishes/s: {x:.2}x, median of the rounds' ratios ({}) (target >= 2x)",
            rounds(&r.rounds_over_mosquitto)
        );
    }
    if let Some(x) = r.freshet_over_rumqttd {
        println!(
            "freshet/bare rumqttd publishes/s: {x:.2}x, median of the rounds' ratios ({}) (target >= 0.8x)",
            rounds(&r.rounds_over_rumqttd)
        );
    }
    println!(
        "peak RSS: freshet = VmHWM of this process after freshet's first round (store + gateway + load generator), \
         before the bare rumqttd runs in it (n/a); Mosquitto = its child process"
    );
}
