//! `freshet simulate`: realistic device telemetry over real MQTT connections, for trying the pipeline and for
//! end-to-end tests. N devices, each its own MQTT 3.1.1 connection (client id `sim-<device>`), publish JSON
//! readings (`ts`, `seq`, `temp`, `humidity`, `battery`, `status`; values drift per device from a seeded
//! generator) to `devices/<device>/telemetry` at R messages/s in total, spread evenly over the devices and paced
//! with tokio intervals, for a given duration. A progress bar goes to stderr (only on a terminal); the summary ends
//! with one machine-readable line on stdout: `sent=.. acknowledged=.. failed=.. seconds=.. rate=..`.
//!
//! The client is `rumqttc` (without TLS features): `freshet_ingest::bench` only exposes a fixed-count, unpaced
//! load run. Each device has two tasks: one drives the connection's event loop and counts what was written
//! (`sent`) and what the broker acknowledged (PUBACK at QoS 1), the other publishes on its interval and, when
//! done, waits (bounded) for the outstanding acknowledgements before disconnecting. `failed` is what was asked
//! for but never acknowledged (QoS 1) or never written (QoS 0). A broker that cannot be reached at the start is a
//! one-line error and a non-zero exit; so is any failed publish, after the summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::Notify;

/// How long to wait for the outstanding acknowledgements once a device has published everything.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Simulated devices, each with its own MQTT connection.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Messages per second in total, spread evenly over the devices.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to publish (humantime: `30s`, `2m`, `1h`).
    #[arg(long, default_value = "30s")]
    pub duration: humantime::Duration,
    /// The MQTT broker, host:port (`freshet up` listens on 127.0.0.1:1883 by default).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_addr: String,
    /// QoS of the publishes: 0 or 1 (at 1 every publish waits for its PUBACK).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Device ids are `<prefix>-0001`, `<prefix>-0002`, ...
    #[arg(long, default_value = "dev")]
    pub device_prefix: String,
    /// Seed of the readings' random drift (the same seed gives the same values).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Counters of one device, shared between its two tasks and the progress bar.
#[derive(Default)]
struct Counters {
    requested: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    connection_lost: AtomicBool,
    changed: Notify,
}

/// A device's drifting readings: a seeded random walk pulled back towards the device's own baseline.
struct Sensor {
    rng: u64,
    temp_base: f64,
    temp: f64,
    humidity_base: f64,
    humidity: f64,
    battery: f64,
}

impl Sensor {
    fn new(seed: u64, device: usize) -> Self {
        let mut s = Self {
            rng: seed ^ (device as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            temp_base: 0.0,
            temp: 0.0,
            humidity_base: 0.0,
            humidity: 0.0,
            battery: 0.0,
        };
        s.temp_base = 17.0 + 9.0 * s.uniform();
        s.temp = s.temp_base;
        s.humidity_base = 30.0 + 35.0 * s.uniform();
        s.humidity = s.humidity_base;
        s.battery = 55.0 + 45.0 * s.uniform();
        s
    }

    /// splitmix64, mapped to [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
    }

    fn reading(&mut self, seq: u64) -> Vec<u8> {
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        self.temp += (self.uniform() - 0.5) * 0.4 + (self.temp_base - self.temp) * 0.05;
        self.humidity =
            (self.humidity + (self.uniform() - 0.5) * 1.0 + (self.humidity_base - self.humidity) * 0.05)
                .clamp(0.0, 100.0);
        self.battery = (self.battery - 0.002 - 0.01 * self.uniform()).max(0.0);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        serde_json::json!({
            "ts": ts,
            "seq": seq,
            "temp": round2(self.temp),
            "humidity": round2(self.humidity),
            "battery": round2(self.battery),
            "status": if self.battery < 10.0 { "low_battery" } else { "ok" },
        })
        .to_string()
        .into_bytes()
    }
}

fn split_host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("--mqtt-addr {addr:?} is not host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("--mqtt-addr {addr:?} has no valid port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Open one device's connection: returns once the broker has answered CONNACK.
async fn connect(host: String, port: u16, client_id: String) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    // The error's Display already names its cause; keep the reason on one line.
    match eventloop.poll().await.map_err(|e| anyhow::anyhow!("{e}"))? {
        Event::Incoming(Packet::ConnAck(_)) => Ok((client, eventloop)),
        other => bail!("expected CONNACK, got {other:?}"),
    }
}

/// Drive the event loop until the disconnect is written or the connection fails, counting writes and PUBACKs.
async fn drive(mut eventloop: EventLoop, counters: Arc<Counters>, device: String) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                counters.changed.notify_one();
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
                counters.changed.notify_one();
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(device, error = %e, "MQTT connection lost");
                counters.connection_lost.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    counters.changed.notify_one();
    // Dropping the event loop closes the request channel, so a publisher still waiting gets an error.
}

/// Publish `count` readings, one per `period` starting at `first`, then wait for their acknowledgements.
#[allow(clippy::too_many_arguments)]
async fn publish(
    client: AsyncClient,
    counters: Arc<Counters>,
    device: String,
    topic: String,
    qos: QoS,
    mut sensor: Sensor,
    count: u64,
    first: tokio::time::Instant,
    period: Duration,
) {
    let mut interval = tokio::time::interval_at(first, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..count {
        interval.tick().await;
        if counters.connection_lost.load(Ordering::Relaxed) {
            break;
        }
        counters.requested.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = client.publish(&topic, qos, false, sensor.reading(seq)).await {
            tracing::warn!(device, error = %e, "publish not queued");
            break;
        }
    }
    // Wait (bounded) until everything asked for is written (QoS 0) or acknowledged (QoS 1).
    let done = |c: &Counters| {
        let requested = c.requested.load(Ordering::Relaxed);
        c.connection_lost.load(Ordering::Relaxed)
            || match qos {
                QoS::AtMostOnce => c.sent.load(Ordering::Relaxed) >= requested,
                _ => c.acked.load(Ordering::Relaxed) >= requested,
            }
    };
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while !done(&counters) {
        if tokio::time::timeout_at(deadline, counters.changed.notified())
            .await
            .is_err()
        {
            tracing::warn!(device, "gave up waiting for the outstanding publishes");
            break;
        }
    }
    let _ = client.disconnect().await;
}

/// Totals over all devices.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    requested: u64,
    sent: u64,
    acked: u64,
}

fn totals(all: &[Arc<Counters>]) -> Totals {
    all.iter().fold(Totals::default(), |t, c| Totals {
        requested: t.requested + c.requested.load(Ordering::Relaxed),
        sent: t.sent + c.sent.load(Ordering::Relaxed),
        acked: t.acked + c.acked.load(Ordering::Relaxed),
    })
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let duration: Duration = args.duration.into();
    if args.devices == 0 || !(args.rate > 0.0 && args.rate.is_finite()) || duration.is_zero() {
        bail!("--devices, --rate and --duration must be > 0");
    }
    let (host, port) = split_host_port(&args.mqtt_addr)?;
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let total = (args.rate * duration.as_secs_f64()).round() as u64;
    let n = args.devices as u64;
    let width = args.devices.to_string().len().max(4);
    let ids: Vec<String> = (1..=args.devices)
        .map(|i| format!("{}-{i:0width$}", args.device_prefix))
        .collect();

    // Connect every device first; an unreachable broker ends the run before anything is published.
    let mut connecting = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (host, client_id) = (host.clone(), format!("sim-{id}"));
        connecting.spawn(async move { (i, connect(host, port, client_id).await) });
    }
    let mut connections: Vec<Option<(AsyncClient, EventLoop)>> = (0..args.devices).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        let (i, connected) = joined?;
        let connection =
            connected.with_context(|| format!("cannot connect to the MQTT broker at {}", args.mqtt_addr))?;
        connections[i] = Some(connection);
    }

    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")?.progress_chars("=> "),
    );
    let counters: Vec<Arc<Counters>> = ids.iter().map(|_| Arc::new(Counters::default())).collect();
    let started = Instant::now();
    let start = tokio::time::Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    let mut drivers = tokio::task::JoinSet::new();
    for (i, (id, connection)) in ids.iter().zip(connections).enumerate() {
        let (client, eventloop) = connection.context("a device did not connect")?;
        let count = total / n + u64::from((i as u64) < total % n);
        drivers.spawn(drive(eventloop, counters[i].clone(), id.clone()));
        if count == 0 {
            let _ = client.disconnect().await;
            continue;
        }
        let period = duration.div_f64(count as f64);
        // Stagger the devices across one period so the total rate is smooth.
        let first = start + period.mul_f64(i as f64 / args.devices as f64);
        publishers.spawn(publish(
            client,
            counters[i].clone(),
            id.clone(),
            format!("devices/{id}/telemetry"),
            qos,
            Sensor::new(args.seed, i),
            count,
            first,
            period,
        ));
    }

    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = publishers.join_next() => match joined {
                Some(r) => r?,
                None => break,
            },
            _ = ticker.tick() => {
                let t = totals(&counters);
                bar.set_position(if qos == QoS::AtMostOnce { t.sent } else { t.acked });
                bar.set_message(format!("sent {} acknowledged {}", t.sent, t.acked));
            }
        }
    }
    while let Some(r) = drivers.join_next().await {
        r?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let t = totals(&counters);
    let lost = counters
        .iter()
        .filter(|c| c.connection_lost.load(Ordering::Relaxed))
        .count();
    // Never asked for (a device stopped early) or asked for but not written / acknowledged.
    let failed = match qos {
        QoS::AtMostOnce => total - t.sent.min(total),
        _ => total - t.acked.min(total),
    };
    let rate = t.sent as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "simulated {} devices for {} at QoS {}: {} messages planned, {} sent, {} acknowledged, {} failed, {:.1} msg/s",
        args.devices, args.duration, args.qos, total, t.sent, t.acked, failed, rate
    );
    println!(
        "sent={} acknowledged={} failed={} seconds={:.3} rate={:.1}",
        t.sent,
        t.acked,
        failed,
        elapsed.as_secs_f64(),
        rate
    );
    if lost > 0 {
        bail!("{lost} device connection(s) lost; {failed} message(s) failed");
    }
    if failed > 0 {
        bail!("{failed} message(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_seeded_json_and_drift() {
        let (mut a, mut b) = (Sensor::new(7, 3), Sensor::new(7, 3));
        let first: serde_json::Value = serde_json::from_slice(&a.reading(0)).unwrap();
        let again: serde_json::Value = serde_json::from_slice(&b.reading(0)).unwrap();
        assert_eq!(first["temp"], again["temp"]);
        assert_eq!(first["status"], "ok");
        for key in ["ts", "seq", "temp", "humidity", "battery"] {
            assert!(first[key].is_number(), "{key}");
        }
        let other: serde_json::Value = serde_json::from_slice(&Sensor::new(7, 4).reading(0)).unwrap();
        assert_ne!(first["temp"], other["temp"]);
        let later: serde_json::Value = serde_json::from_slice(&a.reading(100)).unwrap();
        assert!((later["temp"].as_f64().unwrap() - first["temp"].as_f64().unwrap()).abs() < 10.0);
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(split_host_port("[::1]:1").unwrap(), ("::1".into(), 1));
        assert!(split_host_port("nohost").is_err());
    }
}
