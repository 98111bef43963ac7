//! An unreachable destination stalls a delivery; it loses and skips nothing, and resumes when the destination is
//! back. The destination is a real S3-compatible server (`moto_server` on 127.0.0.1) reached through a TCP proxy
//! owned by this test: closing the proxy (listener gone, open connections cut) makes the destination refuse
//! connections while moto keeps its bucket in memory; reopening it on the same port brings the same data back.
//! Records keep arriving the whole time. At the end every (shard, sequence number) is in the table exactly once.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use freshet_process::maintenance::describe_table;
use freshet_process::{CancellationToken, DeliveryConfig, app_id, spawn_delivery};
use freshet_storage::{PutRecord, Store, StoreConfig, StreamName, StreamStore, SystemClock};
use freshet_tests::s3::{s3_options, start_moto};
use freshet_tests::{fnv1a64_lines, python_json, read_stream};
use serde_json::{Value, json};

/// A TCP proxy on a fixed 127.0.0.1 port that can be closed (refusing connections, cutting open ones) and
/// reopened on the same port.
struct Proxy {
    port: u16,
    target: String,
    up: Option<CancellationToken>,
}

impl Proxy {
    async fn open(port: u16, target: &str) -> Self {
        let mut p = Proxy {
            port,
            target: target.to_string(),
            up: None,
        };
        p.reopen().await;
        p
    }

    async fn reopen(&mut self) {
        assert!(self.up.is_none());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the proxy's port is free again");
        let token = CancellationToken::new();
        let (stop, target) = (token.clone(), self.target.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    () = stop.cancelled() => return, // drops the listener: connections are refused
                };
                let Ok((mut client, _)) = conn else { continue };
                let (stop, target) = (stop.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = stop.cancelled() => {} // cut open connections too
                    }
                });
            }
        });
        self.up = Some(token);
    }

    fn close(&mut self) {
        self.up.take().expect("the proxy is open").cancel();
    }
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_outage_stalls_and_resumes_without_loss() {
    let (_moto, moto_addr) = start_moto().await;
    let port = freshet_tests::up::free_port();
    let mut proxy = Proxy::open(port, &moto_addr).await;
    let mut options = s3_options(&format!("127.0.0.1:{port}"));
    // Let object_store give up quickly, so the delivery's own retry (and stall accounting) is what is tested.
    options.insert("max_retries".into(), "1".into());
    options.insert("retry_timeout".into(), "2s".into());

    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(StoreConfig::new(dir.path().join("data")), Arc::new(SystemClock)).unwrap());
    let stream = StreamName::new("outage").unwrap();
    store.create_stream(&stream, 2).await.unwrap();
    let mut config = DeliveryConfig::new("od", "outage", "outage", "s3://freshet/wh");
    config.storage_options = options.clone();
    config.buffer_interval_ms = 200;
    config.maintenance.optimize_every_commits = 0;

    // Records keep arriving until told to stop.
    let producing = CancellationToken::new();
    let producer = {
        let (store, stream, stop) = (store.clone(), stream.clone(), producing.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let records = (0..20)
                    .map(|_| {
                        n += 1;
                        PutRecord::new(format!("k{}", n % 11), json!({"id": format!("r{n}")}).to_string())
                    })
                    .collect();
                for r in store.put_records(&stream, records).await.unwrap() {
                    r.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    };

    let d = spawn_delivery(config.clone(), store.clone(), CancellationToken::new());
    let c = d.counters();
    wait_for("two commits", Duration::from_secs(60), || {
        c.commits.load(Relaxed) >= 2
    })
    .await;

    proxy.close();
    wait_for("the delivery to stall", Duration::from_secs(60), || {
        c.stalled.load(Relaxed) && c.destination_errors.load(Relaxed) >= 2
    })
    .await;
    let commits_at_stall = c.commits.load(Relaxed);
    let rows_at_stall = c.rows.load(Relaxed);
    // Still stalled while the destination stays away, and nothing was counted as delivered meanwhile.
    let errors = c.destination_errors.load(Relaxed);
    wait_for("more failed attempts", Duration::from_secs(60), || {
        c.destination_errors.load(Relaxed) > errors
    })
    .await;
    assert!(c.stalled.load(Relaxed));
    assert_eq!(c.commits.load(Relaxed), commits_at_stall);
    assert_eq!(c.rows.load(Relaxed), rows_at_stall);
    assert!(!d.is_finished(), "a stalled delivery keeps running");

    proxy.reopen().await;
    wait_for("the delivery to resume", Duration::from_secs(90), || {
        !c.stalled.load(Relaxed) && c.commits.load(Relaxed) > commits_at_stall
    })
    .await;
    producing.cancel();
    let produced = producer.await.unwrap();

    // Wait until the table's positions reach the end of every shard.
    let mut expected = Vec::new();
    let mut ends = Vec::new();
    for (shard, records) in read_stream(store.as_ref(), &stream).await {
        for r in &records {
            let v: Value = serde_json::from_slice(&r.data).unwrap();
            expected.push(format!(
                "{shard}|{}|{}",
                r.sequence_number,
                v["id"].as_str().unwrap()
            ));
        }
        ends.push((
            app_id("od", shard),
            records.last().unwrap().sequence_number.to_u64().unwrap() as i64,
        ));
    }
    assert_eq!(expected.len() as u64, produced);
    expected.sort();
    let ids: Vec<String> = ends.iter().map(|(id, _)| id.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let t = describe_table("s3://freshet/wh", "outage", &options, &ids).await;
        if let Ok(t) = &t
            && ends
                .iter()
                .all(|(id, end)| t.app_transactions.iter().any(|(i, v)| i == id && v >= end))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery did not catch up: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{produced} records, {} commits, {} destination errors",
        c.commits.load(Relaxed),
        c.destination_errors.load(Relaxed)
    );
    d.shutdown().await.unwrap();

    let opts = serde_json::to_string(&s3_options(&format!("127.0.0.1:{port}"))).unwrap();
    let seen = python_json(
        "delivery_read.py",
        &["s3://freshet/wh/outage", "id", "--options", &opts],
    );
    let r = &seen["deltalake"];
    assert_eq!(r["rows"], json!(expected.len()), "{r}");
    assert_eq!(r["distinct_positions"], json!(expected.len()), "{r}");
    assert_eq!(r["checksum"], json!(fnv1a64_lines(&expected).to_string()), "{r}");
}
