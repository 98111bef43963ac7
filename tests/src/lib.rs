//! Helpers for freshet's end-to-end tests: finding the built `freshet` binary, polling with a deadline, and
//! reading a whole stream back for checks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use freshet_storage::{ReadLimits, Record, ShardId, StartingPosition, StreamName, StreamStore};

/// The `freshet` binary of this build (`target/<profile>/freshet`). The test command builds it before the tests.
pub fn freshet_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/freshet
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("freshet"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p freshet`",
        bin.display()
    );
    bin
}

/// Poll `check` until it returns `Some`, or panic with `what` after `timeout`. Polling, never sleeping blindly.
pub fn poll_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Every record of one shard, from its trim horizon to its newest, paging through reads.
pub async fn read_shard(store: &dyn StreamStore, stream: &StreamName, shard: ShardId) -> Vec<Record> {
    let mut iterator = store
        .get_shard_iterator(stream, shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let mut records = Vec::new();
    loop {
        let out = store.get_records(&iterator, ReadLimits::default()).await.unwrap();
        let empty = out.records.is_empty();
        records.extend(out.records);
        match out.next_iterator {
            Some(next) if !empty => iterator = next,
            _ => return records,
        }
    }
}

/// Every record of a stream, per shard.
pub async fn read_stream(store: &dyn StreamStore, stream: &StreamName) -> Vec<(ShardId, Vec<Record>)> {
    let desc = store.describe_stream(stream).await.unwrap();
    let mut out = Vec::new();
    for shard in desc.shards {
        out.push((shard.shard_id, read_shard(store, stream, shard.shard_id).await));
    }
    out
}

// ---- delivery helpers (issue 5) ----

/// FNV-1a 64 over `lines`, each followed by `\n`: the checksum `tests/py/delivery_read.py` computes too.
pub fn fnv1a64_lines<S: AsRef<str>>(lines: &[S]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for b in line.as_ref().bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Run `tests/py/<script>` with `args` and parse its stdout as JSON; panics with its stderr on failure.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("python3 runs (the test command installs deltalake, duckdb, pyarrow)");
    assert!(
        out.status.success(),
        "{} {:?} failed: {}",
        path.display(),
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// Standard base64 (with padding) of `data`, for the Kinesis API's `Data` member.
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One Kinesis JSON 1.1 call (`X-Amz-Target: Kinesis_20131202.<op>`) over a plain HTTP/1.1 connection to `addr`,
/// unsigned. Returns the JSON body of a 200 answer; any other outcome is an error (for callers that retry).
pub async fn kinesis_call(
    addr: &str,
    op: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::to_vec(body)?;
    let mut conn =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: Kinesis_20131202.{op}\r\n\
         Content-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(&body).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut response)).await??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header end in the answer"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(
        status == "200",
        "HTTP {status}: {}",
        String::from_utf8_lossy(&response[split + 4..])
    );
    Ok(serde_json::from_slice(&response[split + 4..])?)
}
pub mod kinesalite;
pub mod lambda_runtime;
pub mod s3;
pub mod store_contract;
pub mod up;
