//! Interop tests of the Kinesis-compatible API (issue 3): the router runs in-process on 127.0.0.1 over an embedded
//! store in a temporary directory, and real clients that no one here wrote drive it: boto3 (`tests/py/kinesis_boto3.py`)
//! and the AWS CLI, as subprocesses. The remote `StreamStore` client passes the same contract
//! (`freshet_tests::store_contract`) as the embedded store. Python packages: boto3, awscli (scripts/test-deps.sh).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use freshet_storage::api::{self, ApiConfig, ThrottleConfig};
use freshet_storage::remote::{RemoteConfig, RemoteCredentials, RemoteStore};
use freshet_storage::{Clock, ManualClock, Store, StoreConfig, StoreError, StreamStore, SystemClock};
use freshet_tests::store_contract::check_store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY: &str = "AKIDFRESHETTEST";
const SECRET: &str = "freshet-test-secret/K7MDENG+bPxRfiCY";
/// Bound of one client subprocess.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(240);

/// The API over an embedded store, served on an ephemeral loopback port until dropped.
struct Server {
    endpoint: String,
    addr: SocketAddr,
    store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(config: ApiConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).expect("store opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let router = api::router(Arc::new(store.clone()), config);
        tokio::spawn(api::serve(listener, router, async move {
            let _ = rx.await;
        }));
        Self {
            endpoint: format!("http://{addr}"),
            addr,
            store,
            shutdown: Some(tx),
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn py_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/kinesis_boto3.py")
}

/// A client subprocess with AWS settings from nothing but its environment: no config files, no metadata service,
/// no proxy.
fn aws_command(program: &str, key: &str, secret: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_PAGER", "")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: tokio::process::Command, what: &str) -> Output {
    match tokio::time::timeout(CLIENT_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{what} could not start ({e}); scripts/test-deps.sh installs boto3 and awscli"),
        Err(_) => panic!("{what} did not finish within {CLIENT_TIMEOUT:?}"),
    }
}

/// Run a boto3 scenario with the given credentials; panics with its output unless it passes. Returns its JSON.
async fn boto3_as(
    scenario: &str,
    endpoint: &str,
    key: &str,
    secret: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut cmd = aws_command("python3", key, secret);
    cmd.arg(py_script()).arg(scenario).arg(endpoint).args(args);
    let out = run(cmd, &format!("boto3 scenario {scenario}")).await;
    assert!(
        out.status.success(),
        "boto3 scenario {scenario} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "scenario {scenario} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn boto3(scenario: &str, endpoint: &str, args: &[&str]) -> serde_json::Value {
    boto3_as(scenario, endpoint, KEY, "unchecked", args).await
}

/// Run `aws kinesis <args> --endpoint-url <endpoint>`.
async fn aws_cli(endpoint: &str, key: &str, secret: &str, args: &[&str]) -> Output {
    let mut cmd = aws_command("aws", key, secret);
    cmd.arg("kinesis").args(args).args([
        "--endpoint-url",
        endpoint,
        "--region",
        "us-east-1",
        "--output",
        "json",
    ]);
    run(cmd, &format!("aws kinesis {}", args.join(" "))).await
}

/// `aws kinesis ...` that must succeed; returns its JSON output (`null` when it printed nothing).
async fn aws_ok(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = aws_cli(endpoint, KEY, "unchecked", args).await;
    assert!(
        out.status.success(),
        "aws kinesis {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&out.stdout).expect("the AWS CLI prints JSON")
    }
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemClock.now_ms()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_create_describe_list() {
    let server = Server::start(ApiConfig::default()).await;
    let out = boto3("basics", &server.endpoint, &[]).await;
    assert_eq!(out["shards"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_put_records_land_on_md5_hash_ranges() {
    let server = Server::start(ApiConfig::default()).await;
    let out = boto3("routing", &server.endpoint, &[]).await;
    assert_eq!(out["records"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_every_iterator_type() {
    let server = Server::start(ApiConfig::default()).await;
    boto3("iterators", &server.endpoint, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_reads_across_split_and_merge_by_lineage() {
    let server = Server::start(ApiConfig::default()).await;
    let out = boto3("resharding", &server.endpoint, &[]).await;
    assert_eq!(out["records"], 340);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_retention_change() {
    let server = Server::start(ApiConfig::default()).await;
    boto3("retention", &server.endpoint, &[]).await;
    let name = freshet_storage::StreamName::new("retention").unwrap();
    assert_eq!(
        server.store.describe_stream(&name).await.unwrap().retention_hours,
        48
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_consumer_registration() {
    let server = Server::start(ApiConfig::default()).await;
    boto3("consumers", &server.endpoint, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_bad_input_gets_aws_errors() {
    let server = Server::start(ApiConfig::default()).await;
    let out = boto3("errors", &server.endpoint, &[]).await;
    for code in [
        "SerializationException",
        "ValidationException",
        "UnknownOperationException",
        "ResourceNotFoundException",
        "ResourceInUseException",
        "InvalidArgumentException",
        "LimitExceededException",
    ] {
        assert!(
            out["errors"][code].as_u64().unwrap_or(0) > 0,
            "{code} not exercised: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_iterators_expire_after_five_minutes() {
    let clock = manual_clock();
    let server = Server::start(ApiConfig {
        clock: clock.clone(),
        ..ApiConfig::default()
    })
    .await;
    let out = boto3("get_iterator", &server.endpoint, &["expiring"]).await;
    let iterator = out["iterator"].as_str().expect("an iterator").to_string();
    clock.advance(300_000 + 1_000);
    let out = boto3("expired", &server.endpoint, &[&iterator]).await;
    assert!(out["message"].as_str().unwrap().contains("expired"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_boto3_provisioned_throttling() {
    let server = Server::start(ApiConfig {
        throttling: Some(ThrottleConfig::default()),
        clock: manual_clock(),
        ..ApiConfig::default()
    })
    .await;
    let out = boto3("throttled", &server.endpoint, &[]).await;
    assert_eq!(out["failed"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_sigv4_accepts_the_right_secret_and_refuses_others() {
    let server = Server::start(ApiConfig {
        credentials: vec![(KEY.into(), SECRET.into())],
        ..ApiConfig::default()
    })
    .await;
    let ep = server.endpoint.as_str();
    boto3_as("signed", ep, KEY, SECRET, &[KEY, SECRET]).await;
    boto3_as(
        "refused",
        ep,
        KEY,
        "wrong",
        &[KEY, "wrong-secret", "InvalidSignatureException"],
    )
    .await;
    boto3_as(
        "refused",
        ep,
        "AKIDUNKNOWN",
        SECRET,
        &["AKIDUNKNOWN", SECRET, "UnrecognizedClientException"],
    )
    .await;

    let ok = aws_cli(ep, KEY, SECRET, &["list-streams"]).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(listed["StreamNames"], serde_json::json!(["signed"]));
    for (key, secret, code) in [
        (KEY, "wrong-secret", "InvalidSignatureException"),
        ("AKIDUNKNOWN", SECRET, "UnrecognizedClientException"),
    ] {
        let refused = aws_cli(ep, key, secret, &["list-streams"]).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains(code),
            "{code}: {stderr}"
        );
    }

    // The remote store signs too, and is refused with a wrong secret.
    let signed = |secret: &str| {
        let mut config = RemoteConfig::new(ep);
        config.credentials = Some(RemoteCredentials {
            access_key: KEY.into(),
            secret: secret.into(),
            session_token: None,
        });
        RemoteStore::new(config).unwrap()
    };
    let names = signed(SECRET).list_streams().await.unwrap();
    assert_eq!(names.len(), 1);
    match signed("wrong").list_streams().await {
        Err(StoreError::InvalidArgument(m)) => assert!(m.contains("InvalidSignatureException"), "{m}"),
        other => panic!("a wrong secret gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_aws_cli_round_trip() {
    let server = Server::start(ApiConfig::default()).await;
    let ep = server.endpoint.as_str();
    aws_ok(
        ep,
        &["create-stream", "--stream-name", "cli", "--shard-count", "2"],
    )
    .await;
    aws_ok(ep, &["wait", "stream-exists", "--stream-name", "cli"]).await;
    let summary = aws_ok(ep, &["describe-stream-summary", "--stream-name", "cli"]).await;
    assert_eq!(summary["StreamDescriptionSummary"]["OpenShardCount"], 2);
    assert_eq!(summary["StreamDescriptionSummary"]["StreamStatus"], "ACTIVE");
    let put = aws_ok(
        ep,
        &[
            "put-record",
            "--stream-name",
            "cli",
            "--partition-key",
            "device-1",
            "--data",
            "hello from the cli",
        ],
    )
    .await;
    let shard = put["ShardId"].as_str().expect("ShardId").to_string();
    let sequence = put["SequenceNumber"]
        .as_str()
        .expect("SequenceNumber")
        .to_string();
    let it = aws_ok(
        ep,
        &[
            "get-shard-iterator",
            "--stream-name",
            "cli",
            "--shard-id",
            &shard,
            "--shard-iterator-type",
            "AT_SEQUENCE_NUMBER",
            "--starting-sequence-number",
            &sequence,
        ],
    )
    .await;
    let iterator = it["ShardIterator"].as_str().expect("ShardIterator").to_string();
    let got = aws_ok(ep, &["get-records", "--shard-iterator", &iterator]).await;
    let record = &got["Records"][0];
    assert_eq!(record["PartitionKey"], "device-1");
    assert_eq!(record["SequenceNumber"], sequence.as_str());
    assert_eq!(
        record["Data"].as_str(),
        Some(freshet_tests::base64_encode(b"hello from the cli").as_str())
    );
    let shards = aws_ok(ep, &["list-shards", "--stream-name", "cli"]).await;
    assert_eq!(shards["Shards"].as_array().map(Vec::len), Some(2));
    let streams = aws_ok(ep, &["list-streams"]).await;
    assert_eq!(streams["StreamNames"], serde_json::json!(["cli"]));

    let missing = aws_cli(
        ep,
        KEY,
        "unchecked",
        &["describe-stream", "--stream-name", "nope"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("ResourceNotFoundException"),
        "{stderr}"
    );

    aws_ok(ep, &["delete-stream", "--stream-name", "cli"]).await;
    let streams = aws_ok(ep, &["list-streams"]).await;
    assert_eq!(streams["StreamNames"], serde_json::json!([]));
}

/// Read one HTTP answer (the server closes the connection after it).
async fn read_answer(conn: &mut tokio::net::tcp::OwnedReadHalf) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => panic!(
                "no answer within 30 s; got so far: {}",
                String::from_utf8_lossy(&answer)
            ),
        };
        if n == 0 {
            return String::from_utf8_lossy(&answer).into_owned();
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| answer.len() >= end + 4 + len) {
                return String::from_utf8_lossy(&answer).into_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_oversized_bodies_are_refused_before_being_read() {
    let server = Server::start(ApiConfig::default()).await;
    let addr = server.addr.to_string();
    let head = |framing: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: Kinesis_20131202.PutRecords\r\n\
             Content-Type: application/x-amz-json-1.1\r\n{framing}\r\n\r\n"
        )
    };

    // A declared length over the bound is refused from the header alone: no byte of the body is ever sent.
    let conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rx, mut tx) = conn.into_split();
    tx.write_all(head("Content-Length: 104857600").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut rx).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("\"__type\":\"InvalidArgumentException\""),
        "{answer}"
    );

    // A chunked body is cut off once it passes the bound, while the client is still sending.
    let conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rx, mut tx) = conn.into_split();
    let chunked_head = head("Transfer-Encoding: chunked");
    let writer = tokio::spawn(async move {
        tx.write_all(chunked_head.as_bytes()).await?;
        let chunk = format!("100000\r\n{}\r\n", "A".repeat(0x100000));
        for _ in 0..64 {
            tx.write_all(chunk.as_bytes()).await?;
        }
        tx.write_all(b"0\r\n\r\n").await?;
        std::io::Result::Ok(())
    });
    let answer = read_answer(&mut rx).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("InvalidArgumentException"), "{answer}");
    drop(rx);
    let _ = writer.await;

    // The server still serves.
    let listed = freshet_tests::kinesis_call(&addr, "ListStreams", &serde_json::json!({}))
        .await
        .expect("the server still answers");
    assert_eq!(listed["StreamNames"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_store_contract_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).unwrap();
    check_store(Arc::new(store.clone()), "embedded").await.unwrap();
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_store_contract_remote() {
    let server = Server::start(ApiConfig::default()).await;
    let remote = RemoteStore::new(RemoteConfig::new(server.endpoint.clone())).unwrap();
    check_store(Arc::new(remote), "remote").await.unwrap();
}
