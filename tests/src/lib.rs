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
