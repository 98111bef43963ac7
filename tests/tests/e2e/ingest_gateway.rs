//! The MQTT gateway end to end, with real clients: mosquitto_pub / mosquitto_sub (MQTT 3.1.1 and 5), paho-mqtt
//! (Python) at QoS 0 and 1, TLS with a CA made by the test (openssl CLI), auth and ACLs, error routing, and
//! garbage thrown at the listener. The gateway runs in-process on free ports over an embedded store in a tempdir.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshet_ingest::auth::{Acl, hash_password_with};
use freshet_ingest::{GatewayConfig, GatewayHandle, ListenerConfig, RuleConfig, TlsConfig, UserConfig};
use freshet_storage::hash::hash_key;
use freshet_storage::{Store, StoreConfig, StreamName, StreamStore, SystemClock};
use freshet_tests::read_stream;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const DEADLINE: Duration = Duration::from_secs(20);

struct Gw {
    _dir: tempfile::TempDir,
    store: Arc<dyn StreamStore>,
    handle: Option<GatewayHandle>,
    port: u16,
}

impl Gw {
    async fn start(config: GatewayConfig, streams: &[(&str, u32)]) -> Gw {
        Self::start_with(config, streams, |_| {}).await
    }

    /// Like [`Gw::start`], with the store's configuration changed by `store_config` first.
    async fn start_with(
        mut config: GatewayConfig,
        streams: &[(&str, u32)],
        store_config: impl FnOnce(&mut StoreConfig),
    ) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let mut sc = StoreConfig::new(dir.path());
        store_config(&mut sc);
        let store: Arc<dyn StreamStore> = Arc::new(Store::open(sc, Arc::new(SystemClock)).unwrap());
        for (name, shards) in streams {
            store
                .create_stream(&StreamName::new(*name).unwrap(), *shards)
                .await
                .unwrap();
        }
        if config.listeners.is_empty() || config.listeners[0].addr.port() == 1883 {
            config.listeners = vec![ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())];
        }
        let handle = freshet_ingest::start(config, store.clone()).await.unwrap();
        let port = handle.local_addrs()[0].port();
        Gw {
            _dir: dir,
            store,
            handle: Some(handle),
            port,
        }
    }

    fn handle(&self) -> &GatewayHandle {
        self.handle.as_ref().unwrap()
    }

    /// Every record of `stream` as (shard index, partition key, JSON data).
    async fn records(&self, stream: &str) -> Vec<(u32, String, Value)> {
        let name = StreamName::new(stream).unwrap();
        let mut out = Vec::new();
        for (shard, records) in read_stream(self.store.as_ref(), &name).await {
            for r in records {
                out.push((shard.0, r.partition_key, serde_json::from_slice(&r.data).unwrap()));
            }
        }
        out
    }

    /// Poll until `stream` holds at least `n` records.
    async fn wait_records(&self, stream: &str, n: usize) -> Vec<(u32, String, Value)> {
        let start = Instant::now();
        loop {
            let records = self.records(stream).await;
            if records.len() >= n {
                return records;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {n} records in {stream}; have {records:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

fn telemetry_rule() -> RuleConfig {
    RuleConfig {
        name: "telemetry".into(),
        sql: "SELECT *, topic(2) AS device_id FROM 'devices/+/telemetry'".into(),
        stream: "telemetry".into(),
        partition_key: "${topic(2)}".into(),
        error_stream: None,
    }
}

fn config(rules: Vec<RuleConfig>) -> GatewayConfig {
    GatewayConfig {
        rules,
        ..GatewayConfig::default()
    }
}

async fn run(cmd: &str, args: &[&str]) -> Output {
    tokio::time::timeout(DEADLINE, Command::new(cmd).args(args).kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{cmd} {args:?} did not finish in time"))
        .unwrap_or_else(|e| panic!("{cmd} runs (the test command installs it): {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn mosquitto_pub(port: u16, extra: &[&str]) -> Output {
    let port = port.to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port];
    args.extend_from_slice(extra);
    run("mosquitto_pub", &args).await
}

/// The shard of a stream whose hash-key range holds `key`'s MD5.
async fn shard_of(store: &dyn StreamStore, stream: &str, key: &str) -> u32 {
    let desc = store
        .describe_stream(&StreamName::new(stream).unwrap())
        .await
        .unwrap();
    let h = hash_key(key);
    desc.shards
        .iter()
        .find(|s| s.hash_key_range.contains(h))
        .unwrap()
        .shard_id
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_mosquitto_v311_and_v5_land_in_the_right_shard_with_lineage() {
    let gw = Gw::start(config(vec![telemetry_rule()]), &[("telemetry", 4)]).await;
    let cases = [
        ("mqttv311", "1", "dev-a", "pub-a"),
        ("mqttv5", "1", "dev-b", "pub-b"),
        ("mqttv311", "0", "dev-c", "pub-c"),
        ("mqttv5", "0", "dev-d", "pub-d"),
    ];
    for (version, qos, device, client) in cases {
        let topic = format!("devices/{device}/telemetry");
        let payload = format!(r#"{{"t": 21.5, "ts": 1700000000000, "who": "{device}"}}"#);
        let out = mosquitto_pub(
            gw.port,
            &[
                "-V", version, "-q", qos, "-i", client, "-t", &topic, "-m", &payload,
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out));
        if qos == "1" {
            // PUBACK means durable: the record is readable as soon as mosquitto_pub got its PUBACK, no polling.
            let now = gw.records("telemetry").await;
            assert!(
                now.iter().any(|(_, key, _)| key == device),
                "{device} not durable at PUBACK: {now:?}"
            );
        }
    }
    let records = gw.wait_records("telemetry", 4).await;
    assert_eq!(records.len(), 4, "{records:?}");
    for (version, _, device, client) in cases {
        let (shard, _, data) = records
            .iter()
            .find(|(_, key, _)| key == device)
            .unwrap_or_else(|| panic!("{device} ({version}) missing"));
        assert_eq!(
            *shard,
            shard_of(gw.store.as_ref(), "telemetry", device).await,
            "{device}"
        );
        assert_eq!(data["device_id"], device);
        assert_eq!(data["t"], 21.5);
        assert_eq!(data["who"], device);
        assert_eq!(data["_topic"], format!("devices/{device}/telemetry"));
        assert_eq!(data["_client_id"], client);
        let arrival = data["_arrival_time"].as_i64().unwrap();
        assert!((arrival - now_ms()).abs() < 60_000, "arrival {arrival}");
    }
    // A record is readable once durable; its writer counts it as appended a moment later (QoS 0 has no PUBACK to
    // wait for), so the counter is polled.
    let start = Instant::now();
    let stats = loop {
        let stats = gw.handle().stats();
        if stats.appended >= 4 || start.elapsed() >= DEADLINE {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        (stats.received, stats.matched, stats.appended),
        (4, 4, 4),
        "{stats:?}"
    );
    gw.stop().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_paho_qos0_and_qos1_all_arrive() {
    let gw = Gw::start(config(vec![telemetry_rule()]), &[("telemetry", 2)]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/ingest_paho.py");
    let port = gw.port.to_string();
    let runs = [
        ("311", "0", "paho-a"),
        ("311", "1", "paho-b"),
        ("5", "0", "paho-c"),
        ("5", "1", "paho-d"),
    ];
    for (proto, qos, client) in runs {
        let topic = format!("devices/{client}/telemetry");
        let out = run(
            "python3",
            &[
                script.to_str().unwrap(),
                "127.0.0.1",
                &port,
                proto,
                qos,
                "200",
                client,
                &topic,
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let records = gw.wait_records("telemetry", 800).await;
    assert_eq!(records.len(), 800);
    for (_, client) in runs.iter().map(|(_, _, c)| ((), *c)) {
        let mut seqs: Vec<i64> = records
            .iter()
            .filter(|(_, key, _)| key == client)
            .map(|(_, _, d)| {
                assert_eq!(d["_client_id"], client);
                d["seq"].as_i64().unwrap()
            })
            .collect();
        // One key → one shard → publish order is kept.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{client} out of order");
        seqs.dedup();
        assert_eq!(seqs, (0..200).collect::<Vec<_>>(), "{client}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_non_json_oversized_and_unmatched_are_kept_and_counted() {
    let mut cfg = config(vec![telemetry_rule()]);
    cfg.payload_bytes_max = 1024;
    cfg.error_stream = "errors".into();
    let gw = Gw::start(cfg, &[("telemetry", 1), ("errors", 1)]).await;
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(2000));
    for (payload, topic) in [
        ("not json", "devices/d1/telemetry"),
        (big.as_str(), "devices/d2/telemetry"),
        (r#"{"t":1}"#, "nobody/listens"),
    ] {
        let out = mosquitto_pub(
            gw.port,
            &["-q", "1", "-i", "bad-client", "-t", topic, "-m", payload],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let errors = gw.records("errors").await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    let kinds: Vec<&str> = errors
        .iter()
        .map(|(_, _, d)| d["error"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["payload_not_json", "payload_too_large"]);
    let (_, key, first) = &errors[0];
    assert_eq!(key, "bad-client");
    assert_eq!(first["payload"], "not json");
    assert_eq!(first["rule"], "telemetry");
    assert_eq!(first["_topic"], "devices/d1/telemetry");
    assert_eq!(errors[1].2["payload_bytes"], big.len());
    assert!(gw.records("telemetry").await.is_empty());
    let stats = gw.handle().stats();
    assert_eq!(
        (stats.received, stats.matched, stats.unmatched, stats.failed),
        (3, 2, 1, 2),
        "{stats:?}"
    );
    gw.stop().await;
}

/// A record the store refuses (here: over the store's own record limit, which is below the gateway's) is never
/// acknowledged as durable: MQTT 5 gets PUBACK 0x80 Unspecified Error, MQTT 3.1.1 is disconnected without a
/// PUBACK (so the client sends it again). The failure is counted, and publishes around it land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_a_record_the_store_refuses_is_not_acknowledged() {
    let gw = Gw::start_with(config(vec![telemetry_rule()]), &[("telemetry", 1)], |sc| {
        sc.record_bytes_max = 1024
    })
    .await;
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(2000));
    let pub_as = |version: &'static str, id: &'static str, payload: String| {
        let port = gw.port;
        async move {
            mosquitto_pub(
                port,
                &[
                    "-V",
                    version,
                    "-q",
                    "1",
                    "-i",
                    id,
                    "-t",
                    "devices/d1/telemetry",
                    "-m",
                    &payload,
                ],
            )
            .await
        }
    };
    let out = pub_as("mqttv5", "v5", r#"{"n":1}"#.into()).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = pub_as("mqttv5", "v5", big.clone()).await;
    assert!(
        text(&out).to_lowercase().contains("unspecified error"),
        "{}",
        text(&out)
    );
    let out = pub_as("mqttv311", "v311", big).await;
    assert!(!out.status.success(), "{}", text(&out));
    let out = pub_as("mqttv311", "v311", r#"{"n":2}"#.into()).await;
    assert!(out.status.success(), "{}", text(&out));
    let records = gw.records("telemetry").await;
    let ns: Vec<i64> = records.iter().map(|(_, _, d)| d["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![1, 2], "{records:?}");
    let stats = gw.handle().stats();
    assert_eq!((stats.appended, stats.append_failed), (2, 2), "{stats:?}");
    gw.stop().await;
}

/// Many publishes in one TCP write: the gateway hands them to the store in runs of `append.batch_records_max`
/// (1 here, so one read makes a run per publish, and the first run's group commit is under way while the others
/// are queued), acknowledges every one in order and only once it is durable, and the records land in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_a_read_of_many_publishes_is_acknowledged_in_order() {
    let mut cfg = config(vec![telemetry_rule()]);
    cfg.append.batch_records_max = 1;
    let gw = Gw::start(cfg, &[("telemetry", 2)]).await;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    // CONNECT (3.1.1, clean session, client id "bulk", keep-alive 30 s); CONNACK is 4 bytes.
    socket
        .write_all(&[
            0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 4, b'b', b'u', b'l', b'k',
        ])
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // Rounds of 100 publishes, each round one write; the packet ids start again at 1 once a round is acknowledged.
    let (n, rounds) = (100u16, 8i64);
    for round in 0..rounds {
        let mut bytes = Vec::new();
        for i in 1..=n {
            let topic = format!("devices/d{}/telemetry", i % 3);
            let payload = format!(r#"{{"n":{}}}"#, round * 1000 + i64::from(i));
            let body = 2 + topic.len() + 2 + payload.len();
            assert!(body < 128, "one-byte remaining length");
            bytes.extend_from_slice(&[0x32, body as u8]);
            bytes.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            bytes.extend_from_slice(topic.as_bytes());
            bytes.extend_from_slice(&i.to_be_bytes());
            bytes.extend_from_slice(payload.as_bytes());
        }
        assert!(bytes.len() < 8 * 1024, "fits one read of the connection's buffer");
        socket.write_all(&bytes).await.unwrap();
        let mut acks = vec![0u8; 4 * usize::from(n)];
        tokio::time::timeout(DEADLINE, socket.read_exact(&mut acks))
            .await
            .expect("every PUBACK in time")
            .unwrap();
        for (i, ack) in acks.chunks(4).enumerate() {
            let pkid = (i + 1) as u16;
            assert_eq!(
                ack,
                [0x40, 2, (pkid >> 8) as u8, pkid as u8],
                "round {round}, PUBACK {i}"
            );
        }
        // PUBACK means durable: every record acknowledged so far is readable at once.
        let records = gw.records("telemetry").await;
        assert_eq!(records.len() as i64, (round + 1) * i64::from(n), "round {round}");
    }
    // Each device's records are in publish order.
    let records = gw.records("telemetry").await;
    for device in 0..3 {
        let key = format!("d{device}");
        let ns: Vec<i64> = records
            .iter()
            .filter(|(_, k, _)| *k == key)
            .map(|(_, _, d)| d["n"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = (0..rounds)
            .flat_map(|r| {
                (1..=i64::from(n))
                    .filter(|i| i % 3 == device)
                    .map(move |i| r * 1000 + i)
            })
            .collect();
        assert_eq!(ns, expected, "{key}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_wrong_password_refused_and_acls_enforced() {
    let params = argon2_cheap();
    let mut cfg = config(vec![telemetry_rule()]);
    cfg.auth.allow_anonymous = false;
    cfg.auth.users = vec![UserConfig {
        username: "device".into(),
        password_hash: hash_password_with("right-password", params).unwrap(),
        acl: Acl {
            publish: Some(vec!["devices/${client_id}/#".into()]),
            subscribe: Some(vec!["commands/${client_id}/#".into()]),
        },
    }];
    let gw = Gw::start(cfg, &[("telemetry", 1)]).await;
    let msg = r#"{"t":1}"#;
    for version in ["mqttv311", "mqttv5"] {
        let out = mosquitto_pub(
            gw.port,
            &[
                "-V",
                version,
                "-u",
                "device",
                "-P",
                "wrong",
                "-i",
                "d1",
                "-t",
                "devices/d1/telemetry",
                "-m",
                msg,
            ],
        )
        .await;
        assert!(
            !out.status.success(),
            "wrong password accepted ({version}): {}",
            text(&out)
        );
        let out = mosquitto_pub(
            gw.port,
            &["-V", version, "-i", "d1", "-t", "devices/d1/telemetry", "-m", msg],
        )
        .await;
        assert!(
            !out.status.success(),
            "anonymous accepted ({version}): {}",
            text(&out)
        );
    }
    assert!(gw.handle().stats().refused >= 4);
    // Right password, own topic: accepted.
    let out = mosquitto_pub(
        gw.port,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            "device",
            "-P",
            "right-password",
            "-i",
            "d1",
            "-t",
            "devices/d1/telemetry",
            "-m",
            msg,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    // Someone else's topic: refused by the ACL (MQTT 5: PUBACK Not Authorized; 3.1.1: disconnected).
    let out = mosquitto_pub(
        gw.port,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            "device",
            "-P",
            "right-password",
            "-i",
            "d1",
            "-t",
            "devices/d2/telemetry",
            "-m",
            msg,
        ],
    )
    .await;
    let both = text(&out);
    assert!(both.to_lowercase().contains("not authori"), "{both}");
    let out = mosquitto_pub(
        gw.port,
        &[
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-u",
            "device",
            "-P",
            "right-password",
            "-i",
            "d1",
            "-t",
            "devices/d2/telemetry",
            "-m",
            msg,
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    // Subscribe ACL: a filter outside commands/d1/# is refused in SUBACK.
    let port = gw.port.to_string();
    let out = run(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-u",
            "device",
            "-P",
            "right-password",
            "-i",
            "d1",
            "-t",
            "devices/#",
            "-C",
            "1",
            "-W",
            "3",
        ],
    )
    .await;
    assert!(text(&out).to_lowercase().contains("denied"), "{}", text(&out));
    let records = gw.wait_records("telemetry", 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(gw.handle().stats().denied, 2);
    gw.stop().await;
}

fn argon2_cheap() -> freshet_ingest::auth::Params {
    freshet_ingest::auth::Params::new(256, 1, 1, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_subscribers_get_publishes_through_the_router() {
    let gw = Gw::start(config(vec![telemetry_rule()]), &[("telemetry", 1)]).await;
    let port = gw.port.to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "devices/+/telemetry",
            "-C",
            "1",
            "-W",
            "15",
            "-i",
            "watcher",
        ])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until the subscriber (which may still be subscribing) has one message.
    let waiter = tokio::spawn(sub.wait_with_output());
    let start = Instant::now();
    while !waiter.is_finished() {
        assert!(start.elapsed() < DEADLINE, "subscriber got nothing");
        let out = mosquitto_pub(
            gw.port,
            &["-q", "1", "-t", "devices/x/telemetry", "-m", r#"{"hello":1}"#],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = waiter.await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"hello":1}"#);
    gw.stop().await;
}

/// paho-mqtt subscribers of both kinds side by side (QoS 0 and 1 in clean sessions, delivered by the gateway; a
/// persistent session and a shared subscription, through rumqttd's router, the latter on a connection that also
/// has a gateway subscription), with retained messages, overlapping filters, UNSUBSCRIBE, MQTT 5's no-local
/// option and Receive Maximum (the scenario and its assertions are in `py/ingest_subscribe.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_subscribers_direct_and_through_the_router() {
    let gw = Gw::start(config(vec![telemetry_rule()]), &[("telemetry", 1)]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/ingest_subscribe.py");
    let port = gw.port.to_string();
    for proto in ["311", "5"] {
        let out = run("python3", &[script.to_str().unwrap(), "127.0.0.1", &port, proto]).await;
        assert!(out.status.success(), "MQTT {proto}: {}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        // 1 retained + 5 live + the marker, in order.
        let direct = report["direct"].as_array().unwrap();
        assert_eq!(direct.len(), 7, "{report}");
        assert_eq!(direct[0]["retain"], true);
        assert_eq!(direct[6]["topic"], "marker/x");
        // The QoS 1 subscriber stayed subscribed: it also got what came after (the script waited for it).
        let routed = report["routed"].as_array().unwrap();
        assert_eq!(routed[6]["payload"], r#"{"seq":99}"#, "{report}");
        assert_eq!(routed[6]["qos"], 1, "{report}");
        // Both subscriptions of the mixed connection got every publish.
        assert_eq!(report["mixed"].as_array().unwrap().len(), 302, "{report}");
    }
    let stats = gw.handle().stats();
    assert_eq!(stats.subscriber_dropped, 0);
    gw.stop().await;
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI.
fn make_test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=freshet test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_tls_with_a_test_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_test_ca(certs.path());
    let mut cfg = config(vec![telemetry_rule()]);
    cfg.listeners = vec![ListenerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsConfig {
            cert_path: cert,
            key_path: key,
        }),
        websocket: false,
    }];
    let gw = Gw::start(cfg, &[("telemetry", 1)]).await;
    let ca = ca.to_str().unwrap();
    for version in ["mqttv311", "mqttv5"] {
        let out = mosquitto_pub(
            gw.port,
            &[
                "-V",
                version,
                "--cafile",
                ca,
                "-q",
                "1",
                "-i",
                "tls-client",
                "-t",
                "devices/tls/telemetry",
                "-m",
                r#"{"secure":true}"#,
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out));
    }
    // Plain TCP against the TLS listener does not get in.
    let out = mosquitto_pub(gw.port, &["-q", "1", "-t", "devices/plain/telemetry", "-m", "{}"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let records = gw.wait_records("telemetry", 2).await;
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|(_, key, d)| key == "tls" && d["secure"] == true)
    );
    gw.stop().await;
}

/// A valid MQTT 3.1.1 CONNECT, PUBLISH (QoS 1) and SUBSCRIBE, as raw bytes to mutate.
fn seed_packets() -> Vec<Vec<u8>> {
    let connect = vec![
        0x10, 0x11, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 5, b'f', b'u', b'z', b'z', b'1',
    ];
    let mut publish = vec![0x32, 0];
    let topic = b"devices/fz/telemetry";
    publish.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    publish.extend_from_slice(topic);
    publish.extend_from_slice(&[0, 1]);
    publish.extend_from_slice(br#"{"t":1}"#);
    publish[1] = (publish.len() - 2) as u8;
    let subscribe = vec![0x82, 8, 0, 2, 0, 3, b'a', b'/', b'#', 1];
    let connect5 = vec![
        0x10, 0x12, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, 5, b'f', b'u', b'z', b'z', b'5',
    ];
    vec![connect, publish, subscribe, connect5]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_garbage_and_mutated_packets_do_not_hurt_other_clients() {
    let mut cfg = config(vec![telemetry_rule()]);
    cfg.connect_timeout_ms = 500;
    let gw = Gw::start(cfg, &[("telemetry", 1)]).await;
    let addr = gw.handle().local_addrs()[0];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f00d);
    let seeds = seed_packets();
    let start = Instant::now();
    let mut sessions = 0;
    while sessions < 300 && start.elapsed() < Duration::from_secs(8) {
        sessions += 1;
        let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        let mut bytes = Vec::new();
        match rng.random_range(0..3) {
            0 => bytes.extend((0..rng.random_range(1..512)).map(|_| rng.random::<u8>())),
            1 => {
                // A valid CONNECT, then mutated packets.
                bytes.extend_from_slice(&seeds[0]);
                for _ in 0..rng.random_range(1..6) {
                    let mut p = seeds[rng.random_range(1..seeds.len())].clone();
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..p.len());
                        p[i] = rng.random();
                    }
                    if rng.random_bool(0.3) {
                        p.truncate(rng.random_range(0..p.len()));
                    }
                    bytes.extend_from_slice(&p);
                }
            }
            _ => {
                // A mutated CONNECT.
                let mut p = seeds[if rng.random_bool(0.5) { 0 } else { 3 }].clone();
                let i = rng.random_range(0..p.len());
                p[i] = rng.random();
                bytes.extend_from_slice(&p);
                bytes.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>()));
            }
        }
        let _ = socket.write_all(&bytes).await;
        let mut sink = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_millis(5), socket.read(&mut sink)).await;
        // Every 50 sessions, a normal client must still be served.
        if sessions % 50 == 0 {
            let out = mosquitto_pub(
                gw.port,
                &[
                    "-q",
                    "1",
                    "-i",
                    "normal",
                    "-t",
                    "devices/normal/telemetry",
                    "-m",
                    r#"{"ok":true}"#,
                ],
            )
            .await;
            assert!(
                out.status.success(),
                "normal client failed after {sessions} garbage sessions: {}",
                text(&out)
            );
        }
    }
    let out = mosquitto_pub(
        gw.port,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-i",
            "normal",
            "-t",
            "devices/normal/telemetry",
            "-m",
            r#"{"ok":true}"#,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let normal = gw
        .records("telemetry")
        .await
        .into_iter()
        .filter(|(_, k, _)| k == "normal")
        .count();
    assert_eq!(normal, sessions / 50 + 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_bad_rule_and_busy_port_fail_startup_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StreamStore> =
        Arc::new(Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).unwrap());
    let mut bad = telemetry_rule();
    bad.sql = "SELECT * FROM 'devices/+/telemetry' WHERE t >".into();
    let mut cfg = config(vec![bad]);
    cfg.listeners = vec![ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())];
    let e = freshet_ingest::start(cfg, store.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("rule \"telemetry\": sql at position 46"), "{e}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(vec![telemetry_rule()]);
    cfg.listeners = vec![ListenerConfig::tcp(busy.local_addr().unwrap())];
    let e = freshet_ingest::start(cfg, store).await.unwrap_err().to_string();
    assert!(e.contains("cannot listen on"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_paho_over_websocket() {
    let mut cfg = config(vec![telemetry_rule()]);
    cfg.listeners = vec![ListenerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        websocket: true,
    }];
    let gw = Gw::start(cfg, &[("telemetry", 1)]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/ingest_paho.py");
    let port = gw.port.to_string();
    for (proto, client) in [("311", "ws-a"), ("5", "ws-b")] {
        let topic = format!("devices/{client}/telemetry");
        let out = run(
            "python3",
            &[
                script.to_str().unwrap(),
                "127.0.0.1",
                &port,
                proto,
                "1",
                "50",
                client,
                &topic,
                "websockets",
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out));
        // QoS 1 over WebSocket: acknowledged means durable.
        let have = gw.records("telemetry").await;
        assert_eq!(
            have.iter().filter(|(_, k, _)| k == client).count(),
            50,
            "{client}"
        );
    }
    gw.stop().await;
}

/// Read one MQTT packet: its first byte and its body (the remaining length decoded as a variable byte integer).
async fn read_packet(socket: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let first = socket.read_u8().await.unwrap();
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = socket.read_u8().await.unwrap();
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        socket.read_exact(&mut body).await.unwrap();
        (first, body)
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("a packet in time")
}

/// An MQTT 5 QoS 1 PUBLISH with a topic alias property (an empty `topic` uses the alias alone).
fn publish_v5_with_alias(topic: &str, pkid: u16, alias: u16, payload: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(&[3, 0x23]); // properties: 3 bytes, Topic Alias
    body.extend_from_slice(&alias.to_be_bytes());
    body.extend_from_slice(payload.as_bytes());
    assert!(body.len() < 128, "one-byte remaining length");
    let mut packet = vec![0x32, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// MQTT 5 topic aliases: a publish that names its topic and sets an alias, then publishes by the alias alone, land
/// with the full topic (lineage and partition key); an alias the client never set ends the connection with a
/// protocol error, and the records before it stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_mqtt5_topic_aliases_resolve_to_the_topic() {
    let gw = Gw::start(config(vec![telemetry_rule()]), &[("telemetry", 1)]).await;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    // CONNECT (5, clean start, keep-alive 30 s, no properties, client id "alias5").
    socket
        .write_all(&[
            0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, 6, b'a', b'l', b'i', b'a', b's',
            b'5',
        ])
        .await
        .unwrap();
    let (kind, connack) = read_packet(&mut socket).await;
    assert_eq!((kind, connack[1]), (0x20, 0), "CONNACK success");
    let topic = "devices/al/telemetry";
    socket
        .write_all(&publish_v5_with_alias(topic, 1, 1, r#"{"n":1}"#))
        .await
        .unwrap();
    socket
        .write_all(&publish_v5_with_alias("", 2, 1, r#"{"n":2}"#))
        .await
        .unwrap();
    for pkid in [1u16, 2] {
        let (kind, ack) = read_packet(&mut socket).await;
        assert_eq!(kind, 0x40, "PUBACK");
        assert_eq!(&ack[..2], &pkid.to_be_bytes());
        assert!(ack.len() == 2 || ack[2] == 0, "success: {ack:?}");
    }
    let records = gw.wait_records("telemetry", 2).await;
    let mut seen: Vec<(String, String, i64)> = records
        .iter()
        .map(|(_, key, v)| {
            (
                key.clone(),
                v["_topic"].as_str().unwrap().to_string(),
                v["n"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort_by_key(|s| s.2);
    assert_eq!(
        seen,
        vec![
            ("al".to_string(), topic.to_string(), 1),
            ("al".to_string(), topic.to_string(), 2)
        ]
    );
    // An alias never set: DISCONNECT with reason 0x82 (protocol error), then the connection closes.
    socket
        .write_all(&publish_v5_with_alias("", 3, 9, r#"{"n":3}"#))
        .await
        .unwrap();
    // A well-formed DISCONNECT: reason 0x82, then properties whose length covers exactly the rest of the packet
    // (a reason string, 0x1F), then the end of the stream.
    let (kind, disconnect) = read_packet(&mut socket).await;
    assert!(
        kind == 0xE0 && disconnect.len() > 5,
        "a DISCONNECT with a reason string: {disconnect:?}"
    );
    assert_eq!(disconnect[0], 0x82, "{disconnect:?}");
    assert_eq!(usize::from(disconnect[1]), disconnect.len() - 2, "{disconnect:?}");
    assert_eq!(disconnect[2], 0x1F, "a reason string: {disconnect:?}");
    assert_eq!(String::from_utf8_lossy(&disconnect[5..]), "ProtocolError");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, socket.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "closed after the DISCONNECT: {closed:?} {rest:?}"
    );
    assert_eq!(gw.records("telemetry").await.len(), 2);
    gw.stop().await;
}
