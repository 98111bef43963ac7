//! A small MQTT 3.1.1 load generator for `freshet bench ingest`: N clients publish JSON payloads of a given size
//! at QoS 0 or 1 to any broker (the gateway, Mosquitto, a bare rumqttd) and measure throughput and, at QoS 1,
//! the publish → PUBACK latency. Against the gateway a PUBACK is sent only once the record is durable, so there
//! that latency *is* publish → durable.
//!
//! It speaks raw MQTT over TCP (CONNECT, PUBLISH, PUBACK, DISCONNECT, a few dozen bytes of framing) so it adds no
//! client library to the build and has no client-side queue that could hide broker latency: each client keeps at
//! most `inflight` QoS 1 publishes outstanding and records the time each one was written. Everything is bounded:
//! message counts, the inflight window, and `timeout` for the whole run. [`drain`] is the one subscriber each
//! broker gets during the run, and [`start_bare_rumqttd`] the store-less baseline (infra may not use rumqttd itself).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    pub clients: usize,
    pub messages_per_client: usize,
    /// Size of each JSON payload, in bytes (at least 16).
    pub payload_bytes: usize,
    /// QoS 0 or 1.
    pub qos: u8,
    /// QoS 1 publishes outstanding per client.
    pub inflight: u16,
    /// Client `i` publishes to `<topic_prefix>/<i>/telemetry`.
    pub topic_prefix: String,
    pub timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            clients: 8,
            messages_per_client: 10_000,
            payload_bytes: 100,
            qos: 1,
            inflight: 64,
            topic_prefix: "devices".into(),
            timeout: Duration::from_secs(120),
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub published: u64,
    pub acked: u64,
    pub elapsed: Duration,
    pub publishes_per_s: f64,
    /// Publish → PUBACK (QoS 1), microseconds.
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
}

/// Run the load; fails if a client cannot connect or the run exceeds its timeout.
pub async fn run_load(config: LoadConfig) -> std::io::Result<LoadReport> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.clients {
        let c = config.clone();
        tasks.spawn(async move { client(c, i).await });
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut report = LoadReport::default();
    let deadline = tokio::time::Instant::now() + config.timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, tasks.join_next()).await;
        match next {
            Err(_) => {
                tasks.abort_all();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "load run timed out",
                ));
            }
            Ok(None) => break,
            Ok(Some(joined)) => {
                let (published, latencies) = joined.map_err(|e| std::io::Error::other(e.to_string()))??;
                report.published += published;
                report.acked += latencies.len() as u64;
                for l in latencies {
                    let _ = hist.record(l.max(1));
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    report.publishes_per_s = report.published as f64 / report.elapsed.as_secs_f64().max(1e-9);
    if !hist.is_empty() {
        report.latency_us_p50 = hist.value_at_quantile(0.5);
        report.latency_us_p99 = hist.value_at_quantile(0.99);
        report.latency_us_max = hist.max();
    }
    Ok(report)
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend(body);
    p
}

fn publish_packet(topic: &str, qos: u8, pkid: u16, payload: &[u8], out: &mut Vec<u8>) {
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    out.push(0x30 | (qos << 1));
    remaining_length(len, out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

fn payload(client: usize, seq: usize, bytes: usize) -> Vec<u8> {
    let head = format!(r#"{{"client":{client},"seq":{seq},"pad":""#);
    let mut p = head.into_bytes();
    let pad = bytes.saturating_sub(p.len() + 2);
    p.extend(std::iter::repeat_n(b'x', pad));
    p.extend_from_slice(b"\"}");
    p
}

/// One client: returns (publishes written, QoS 1 latencies in µs).
async fn client(c: LoadConfig, index: usize) -> std::io::Result<(u64, Vec<u64>)> {
    let mut socket = TcpStream::connect(c.addr).await?;
    socket.set_nodelay(true)?;
    socket
        .write_all(&connect_packet(&format!("bench-{index}-{}", std::process::id())))
        .await?;
    let mut ack = [0u8; 4];
    socket.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("CONNACK {ack:?}"),
        ));
    }
    let topic = format!("{}/{index}/telemetry", c.topic_prefix);
    let (mut rd, mut wr) = socket.into_split();
    let mut latencies = Vec::with_capacity(if c.qos > 0 { c.messages_per_client } else { 0 });
    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut inbuf = vec![0u8; 64 * 1024];
    let mut pending_bytes: Vec<u8> = Vec::new();
    let mut next = 0usize;
    let mut pkid: u16 = 0;
    while next < c.messages_per_client || !sent_at.is_empty() {
        // Fill the window.
        out.clear();
        while next < c.messages_per_client && (c.qos == 0 || sent_at.len() < usize::from(c.inflight.max(1))) {
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            publish_packet(
                &topic,
                c.qos,
                pkid,
                &payload(index, next, c.payload_bytes),
                &mut out,
            );
            if c.qos > 0 {
                sent_at.insert(pkid, Instant::now());
            }
            next += 1;
            if out.len() > 32 * 1024 {
                break;
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
        }
        if c.qos == 0 || sent_at.is_empty() {
            continue;
        }
        // Read acknowledgements (PUBACK: 0x40 0x02 pkid; MQTT 5 brokers may add a reason code).
        let n = rd.read(&mut inbuf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            ));
        }
        pending_bytes.extend_from_slice(&inbuf[..n]);
        let mut at = 0;
        while pending_bytes.len() >= at + 2 {
            let len = usize::from(pending_bytes[at + 1]);
            if pending_bytes[at + 1] & 0x80 != 0 || pending_bytes.len() < at + 2 + len {
                break;
            }
            if pending_bytes[at] == 0x40 && len >= 2 {
                let id = u16::from_be_bytes([pending_bytes[at + 2], pending_bytes[at + 3]]);
                if let Some(t) = sent_at.remove(&id) {
                    latencies.push(t.elapsed().as_micros() as u64);
                }
            }
            at += 2 + len;
        }
        pending_bytes.drain(..at);
    }
    wr.write_all(&[0xe0, 0x00]).await?;
    Ok((next as u64, latencies))
}

/// Start a bare rumqttd broker (no store behind it; MQTT 3.1.1 on `addr`) on its own threads, as the baseline of
/// `freshet bench ingest`. The broker runs until the process exits (rumqttd has no stop). Fails if `addr` cannot
/// be bound (checked here, since rumqttd only logs that).
pub fn start_bare_rumqttd(addr: SocketAddr) -> std::io::Result<()> {
    drop(std::net::TcpListener::bind(addr)?);
    let server = rumqttd::ServerSettings {
        name: "bench-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 256,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..rumqttd::RouterConfig::default()
        },
        v4: Some(std::iter::once(("bench".to_string(), server)).collect()),
        ..rumqttd::Config::default()
    };
    std::thread::Builder::new()
        .name("bare-rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "bare rumqttd stopped");
            }
        })?;
    Ok(())
}

/// A subscriber that drains `filter` at `qos` (0 or 1; at 1 it acknowledges every publish, once per read) and
/// counts the publishes it receives in `count`, until it has `expected` of them or `timeout` passes.
pub async fn drain(
    addr: SocketAddr,
    filter: &str,
    qos: u8,
    expected: u64,
    timeout: Duration,
    count: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut socket = TcpStream::connect(addr).await?;
    socket
        .write_all(&connect_packet(&format!("bench-drain-{}", std::process::id())))
        .await?;
    let mut ack = [0u8; 4];
    socket.read_exact(&mut ack).await?;
    let mut sub = vec![0x82];
    remaining_length(2 + 2 + filter.len() + 1, &mut sub);
    sub.extend_from_slice(&[0, 1]);
    sub.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    sub.extend_from_slice(filter.as_bytes());
    sub.push(qos.min(1));
    socket.write_all(&sub).await?;
    let mut acks: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    while count.load(Ordering::Relaxed) < expected {
        let n = match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
            Err(_) => break,
            Ok(r) => r?,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        // fixed header + varint remaining length
        while let Some(&first) = buf.get(at) {
            let (mut len, mut used, mut done) = (0usize, 0usize, false);
            for i in 0..4 {
                let Some(&b) = buf.get(at + 1 + i) else { break };
                len |= usize::from(b & 0x7f) << (7 * i);
                used = i + 1;
                if b & 0x80 == 0 {
                    done = true;
                    break;
                }
            }
            if !done || buf.len() < at + 1 + used + len {
                break;
            }
            if first >> 4 == 3 {
                count.fetch_add(1, Ordering::Relaxed);
                if first & 0x06 == 0x02 {
                    // QoS 1: the packet id follows the topic.
                    let body = at + 1 + used;
                    let topic_len = usize::from(u16::from_be_bytes([buf[body], buf[body + 1]]));
                    let pkid = &buf[body + 2 + topic_len..body + 4 + topic_len];
                    acks.extend_from_slice(&[0x40, 0x02, pkid[0], pkid[1]]);
                }
            }
            at += 1 + used + len;
        }
        buf.drain(..at);
        if !acks.is_empty() {
            socket.write_all(&acks).await?;
            acks.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let mut out = Vec::new();
        remaining_length(321, &mut out);
        assert_eq!(out, vec![0xc1, 0x02]);
        let p = payload(3, 7, 100);
        assert_eq!(p.len(), 100);
        assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
        let mut out = Vec::new();
        publish_packet("a/b", 1, 9, b"{}", &mut out);
        assert_eq!(out, vec![0x32, 9, 0, 3, b'a', b'/', b'b', 0, 9, b'{', b'}']);
    }
}
