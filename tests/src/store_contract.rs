//! The behavioural contract of a [`StreamStore`], as one async check that any implementation must pass: the
//! embedded engine and the remote client over the Kinesis API run the same checks, so "remote" means "the same
//! store, elsewhere". It covers streams, puts and routing, every iterator type, reads and their limits, long poll,
//! split, merge, shard-count updates, lineage-ordered consumption, retention, consumers and checkpoints, and the
//! error each misuse gets (by `StoreError` variant).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use freshet_storage::consumer::GroupReader;
use freshet_storage::hash::{hash_key, uniform_ranges};
use freshet_storage::{
    GetRecordsOutput, PutRecord, ReadLimits, Record, SequenceNumber, ShardId, ShardIterator,
    StartingPosition, StoreError, StreamName, StreamStatus, StreamStore,
};

/// Assert that `result` failed with a `StoreError` matching `pattern`.
macro_rules! expect_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err(e @ $pattern) => e,
            Err(other) => bail!(
                "{}: expected {}, got {other:?}",
                stringify!($result),
                stringify!($pattern)
            ),
            Ok(_) => bail!(
                "{}: expected {}, but it succeeded",
                stringify!($result),
                stringify!($pattern)
            ),
        }
    };
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn limits(records_max: usize) -> ReadLimits {
    ReadLimits {
        records_max,
        ..ReadLimits::default()
    }
}

/// Read from `iterator` until caught up (open shard) or ended (closed shard), `page` records at a time.
/// Returns the records and, when the shard ended, its children.
async fn drain(
    store: &dyn StreamStore,
    mut iterator: ShardIterator,
    page: usize,
) -> Result<(Vec<Record>, Option<Vec<ShardId>>)> {
    let mut records = Vec::new();
    for _ in 0..100_000 {
        let GetRecordsOutput {
            records: batch,
            next_iterator,
            child_shards,
            ..
        } = store.get_records(&iterator, limits(page)).await?;
        ensure!(
            batch.len() <= page,
            "a read returned {} records, over its limit {page}",
            batch.len()
        );
        let empty = batch.is_empty();
        records.extend(batch);
        match next_iterator {
            None => return Ok((records, Some(child_shards))),
            Some(_) if empty => return Ok((records, None)),
            Some(next) => {
                ensure!(child_shards.is_empty(), "an open iterator came with child shards");
                iterator = next;
            }
        }
    }
    bail!("reading a shard did not end")
}

/// Run every check against `store`, using streams whose names start with `prefix`.
pub async fn check_store(store: Arc<dyn StreamStore>, prefix: &str) -> Result<()> {
    let s = StreamName::new(format!("{prefix}-contract"))?;
    let missing = StreamName::new(format!("{prefix}-missing"))?;
    check_missing_stream(&*store, &missing)
        .await
        .context("missing stream")?;
    check_streams(&*store, &s).await.context("streams")?;
    let puts = check_puts(&*store, &s).await.context("puts")?;
    check_reads(&*store, &s, &puts, Endpoint::Freshet)
        .await
        .context("reads")?;
    check_long_poll(store.clone(), &s).await.context("long poll")?;
    check_resharding(&*store, &s).await.context("resharding")?;
    check_group_reader(store.clone(), &s)
        .await
        .context("group reader")?;
    check_retention(&*store, &s).await.context("retention")?;
    check_consumers(&*store, &s).await.context("consumers")?;
    store.delete_stream(&s).await?;
    expect_err!(store.describe_stream(&s).await, StoreError::StreamNotFound(_));
    ensure!(
        !store.list_streams().await?.contains(&s),
        "a deleted stream is listed"
    );
    Ok(())
}

/// The checks that a remote store passes against any Kinesis endpoint, AWS's or an emulator's (no freshet
/// extensions): streams, puts and routing, and reads from every iterator type.
pub async fn check_kinesis_subset(store: Arc<dyn StreamStore>, prefix: &str) -> Result<()> {
    let s = StreamName::new(format!("{prefix}-contract"))?;
    let missing = StreamName::new(format!("{prefix}-missing"))?;
    check_missing_stream(&*store, &missing)
        .await
        .context("missing stream")?;
    check_streams(&*store, &s).await.context("streams")?;
    let puts = check_puts(&*store, &s).await.context("puts")?;
    check_reads(&*store, &s, &puts, Endpoint::Kinesis)
        .await
        .context("reads")?;
    store.delete_stream(&s).await?;
    expect_err!(store.describe_stream(&s).await, StoreError::StreamNotFound(_));
    Ok(())
}

/// What the store behind a check answers beyond Kinesis's API.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// The embedded store, or freshet's server: read byte limits; `AT_TIMESTAMP` in the future reads nothing.
    Freshet,
    /// AWS Kinesis or an emulator: no byte limit on reads; a timestamp in the future is refused.
    Kinesis,
}

async fn check_missing_stream(store: &dyn StreamStore, missing: &StreamName) -> Result<()> {
    expect_err!(
        store.describe_stream(missing).await,
        StoreError::StreamNotFound(_)
    );
    expect_err!(store.delete_stream(missing).await, StoreError::StreamNotFound(_));
    expect_err!(
        store.put_records(missing, vec![PutRecord::new("k", "v")]).await,
        StoreError::StreamNotFound(_)
    );
    expect_err!(
        store
            .get_shard_iterator(missing, ShardId(0), StartingPosition::TrimHorizon)
            .await,
        StoreError::StreamNotFound(_)
    );
    expect_err!(
        store.split_shard(missing, ShardId(0), 1 << 127).await,
        StoreError::StreamNotFound(_)
    );
    expect_err!(
        store.set_retention_hours(missing, 48).await,
        StoreError::StreamNotFound(_)
    );
    expect_err!(
        store.register_consumer(missing, "c").await,
        StoreError::StreamNotFound(_)
    );
    expect_err!(store.list_consumers(missing).await, StoreError::StreamNotFound(_));
    Ok(())
}

async fn check_streams(store: &dyn StreamStore, s: &StreamName) -> Result<()> {
    expect_err!(store.create_stream(s, 0).await, StoreError::InvalidArgument(_));
    let before = now_ms();
    store.create_stream(s, 3).await?;
    expect_err!(store.create_stream(s, 3).await, StoreError::StreamExists(_));
    ensure!(
        store.list_streams().await?.contains(s),
        "a created stream is listed"
    );
    let desc = store.describe_stream(s).await?;
    ensure!(desc.name == *s && desc.status == StreamStatus::Active, "{desc:?}");
    ensure!(
        desc.retention_hours == 24,
        "default retention is 24 h, not {}",
        desc.retention_hours
    );
    ensure!(
        (before - 5_000..=now_ms() + 5_000).contains(&desc.created_ms),
        "created_ms {} is not about now",
        desc.created_ms
    );
    let ranges: Vec<_> = desc.shards.iter().map(|s| s.hash_key_range).collect();
    ensure!(
        ranges == uniform_ranges(3),
        "a new stream's shards split the key space evenly"
    );
    ensure!(
        desc.shards
            .iter()
            .all(|s| s.is_open() && s.parent_shard_id.is_none())
    );
    Ok(())
}

/// Put records and check where they land. Returns (record, where it landed) in put order.
async fn check_puts(
    store: &dyn StreamStore,
    s: &StreamName,
) -> Result<Vec<(PutRecord, ShardId, SequenceNumber)>> {
    expect_err!(
        store.put_records(s, Vec::new()).await,
        StoreError::InvalidArgument(_)
    );
    let too_many = (0..501).map(|i| PutRecord::new(format!("k{i}"), "x")).collect();
    expect_err!(
        store.put_records(s, too_many).await,
        StoreError::InvalidArgument(_)
    );
    let with_bad_key = vec![PutRecord::new("fine", "x"), PutRecord::new("", "x")];
    expect_err!(
        store.put_records(s, with_bad_key).await,
        StoreError::InvalidArgument(_)
    );
    let long_key = vec![PutRecord::new("k".repeat(257), "x")];
    expect_err!(
        store.put_records(s, long_key).await,
        StoreError::InvalidArgument(_)
    );

    let desc = store.describe_stream(s).await?;
    let owner = |key: u128| {
        desc.open_shards()
            .find(|sh| sh.hash_key_range.contains(key))
            .map(|sh| sh.shard_id)
    };
    let mut records: Vec<PutRecord> = (0..300)
        .map(|i| PutRecord::new(format!("key-{}", i % 41), format!("record {i}").into_bytes()))
        .collect();
    // Explicit hash keys override the key's MD5 (on keys of their own: they do not keep a key's order).
    records[5] = PutRecord {
        explicit_hash_key: Some(u128::MAX),
        ..PutRecord::new("explicit-max", "to the last shard")
    };
    records[6] = PutRecord {
        explicit_hash_key: Some(0),
        ..PutRecord::new("explicit-zero", "to the first shard")
    };
    let results = store.put_records(s, records.clone()).await?;
    ensure!(results.len() == records.len(), "one result per record");
    let mut out = Vec::new();
    for (record, result) in records.into_iter().zip(results) {
        let put = result?;
        let key = record
            .explicit_hash_key
            .unwrap_or_else(|| hash_key(&record.partition_key));
        ensure!(
            owner(key) == Some(put.shard_id),
            "{} landed on {}, not on the owner of its hash key",
            record.partition_key,
            put.shard_id
        );
        out.push((record, put.shard_id, put.sequence_number));
    }
    let single = store.put_record(s, PutRecord::new("single", "one")).await?;
    ensure!(owner(hash_key("single")) == Some(single.shard_id));
    out.push((
        PutRecord::new("single", "one"),
        single.shard_id,
        single.sequence_number,
    ));

    let mut all: Vec<SequenceNumber> = out.iter().map(|(_, _, seq)| *seq).collect();
    all.sort_unstable();
    all.dedup();
    ensure!(
        all.len() == out.len(),
        "sequence numbers are unique across the stream"
    );
    let mut last: BTreeMap<ShardId, SequenceNumber> = BTreeMap::new();
    for (_, shard, seq) in &out {
        if let Some(prev) = last.insert(*shard, *seq) {
            ensure!(prev < *seq, "sequence numbers increase within {shard}");
        }
    }
    ensure!(last.len() == 3, "300 keys reach all 3 shards");
    Ok(out)
}

async fn check_reads(
    store: &dyn StreamStore,
    s: &StreamName,
    puts: &[(PutRecord, ShardId, SequenceNumber)],
    endpoint: Endpoint,
) -> Result<()> {
    let desc = store.describe_stream(s).await?;
    for shard in desc.shards.iter().map(|d| d.shard_id) {
        let want: Vec<&(PutRecord, ShardId, SequenceNumber)> = puts.iter().filter(|p| p.1 == shard).collect();
        let it = store
            .get_shard_iterator(s, shard, StartingPosition::TrimHorizon)
            .await?;
        let (got, children) = drain(store, it, 7).await?;
        ensure!(children.is_none(), "an open shard does not end");
        ensure!(
            got.len() == want.len(),
            "{shard}: read {} of {}",
            got.len(),
            want.len()
        );
        for (r, (p, _, seq)) in got.iter().zip(&want) {
            ensure!(r.sequence_number == *seq && r.partition_key == p.partition_key && r.data == p.data);
            ensure!(
                (now_ms() - 60_000..=now_ms() + 1_000).contains(&r.arrival_ms),
                "arrival time is now"
            );
        }
        let seqs: Vec<SequenceNumber> = want.iter().map(|p| p.2).collect();

        let at = store
            .get_shard_iterator(s, shard, StartingPosition::AtSequenceNumber(seqs[3]))
            .await?;
        let r = store.get_records(&at, limits(1)).await?;
        ensure!(
            r.records[0].sequence_number == seqs[3],
            "AT_SEQUENCE_NUMBER starts at it"
        );
        let next = r.next_iterator.context("an open shard has a next iterator")?;
        let r2 = store.get_records(&next, limits(1)).await?;
        ensure!(
            r2.records[0].sequence_number == seqs[4],
            "the next iterator continues"
        );

        let after = store
            .get_shard_iterator(s, shard, StartingPosition::AfterSequenceNumber(seqs[3]))
            .await?;
        let r = store.get_records(&after, limits(2)).await?;
        ensure!(r.records.len() == 2 && r.records[0].sequence_number == seqs[4]);

        let from_epoch = store
            .get_shard_iterator(s, shard, StartingPosition::AtTimestamp(0))
            .await?;
        let r = store.get_records(&from_epoch, limits(1)).await?;
        ensure!(
            r.records[0].sequence_number == seqs[0],
            "AT_TIMESTAMP 0 is the trim horizon"
        );
        let future = store
            .get_shard_iterator(s, shard, StartingPosition::AtTimestamp(now_ms() + 3_600_000))
            .await;
        if endpoint == Endpoint::Freshet {
            ensure!(store.get_records(&future?, limits(10)).await?.records.is_empty());
        } else {
            expect_err!(future, StoreError::InvalidArgument(_));
        }
        let arrival = got[2].arrival_ms;
        let at_time = store
            .get_shard_iterator(s, shard, StartingPosition::AtTimestamp(arrival))
            .await?;
        let first = &store.get_records(&at_time, limits(1)).await?.records[0];
        ensure!(
            first.arrival_ms >= arrival && first.sequence_number <= seqs[2],
            "AT_TIMESTAMP"
        );

        let one_byte = ReadLimits {
            records_max: 100,
            bytes_max: 1,
        };
        let trim = store
            .get_shard_iterator(s, shard, StartingPosition::TrimHorizon)
            .await?;
        if endpoint == Endpoint::Freshet {
            ensure!(
                store.get_records(&trim, one_byte).await?.records.len() == 1,
                "a read returns at least one record, however small its byte limit"
            );
        }
        expect_err!(
            store.get_records(&trim, limits(0)).await,
            StoreError::InvalidArgument(_)
        );
        expect_err!(
            store.get_records(&trim, limits(10_001)).await,
            StoreError::InvalidArgument(_)
        );

        let latest = store
            .get_shard_iterator(s, shard, StartingPosition::Latest)
            .await?;
        let r = store.get_records(&latest, limits(10)).await?;
        ensure!(
            r.records.is_empty() && r.millis_behind_latest == 0,
            "LATEST reads nothing yet"
        );
        let latest = r.next_iterator.context("open shard")?;
        let key = (0..)
            .map(|i| format!("latest-{i}"))
            .find(|k| {
                desc.shard(shard)
                    .is_some_and(|d| d.hash_key_range.contains(hash_key(k)))
            })
            .context("a key for this shard")?;
        store.put_record(s, PutRecord::new(key.clone(), "late")).await?;
        let r = store.get_records(&latest, limits(10)).await?;
        ensure!(
            r.records.len() == 1 && r.records[0].partition_key == key,
            "LATEST then reads what came after"
        );
    }
    expect_err!(
        store
            .get_shard_iterator(s, ShardId(99), StartingPosition::TrimHorizon)
            .await,
        StoreError::ShardNotFound { .. }
    );
    let shard0 = desc.shards[0].starting_sequence_number;
    expect_err!(
        store
            .get_shard_iterator(
                s,
                ShardId(0),
                StartingPosition::AtSequenceNumber(SequenceNumber::from_u64(1))
            )
            .await,
        StoreError::InvalidArgument(_)
    );
    expect_err!(
        store
            .get_shard_iterator(
                s,
                ShardId(0),
                // A thousand times the shard's start: far beyond its records, whatever the numbers' size.
                StartingPosition::AtSequenceNumber(format!("{shard0}000").parse()?)
            )
            .await,
        StoreError::InvalidArgument(_)
    );
    Ok(())
}

async fn check_long_poll(store: Arc<dyn StreamStore>, s: &StreamName) -> Result<()> {
    let latest = store
        .get_shard_iterator(s, ShardId(0), StartingPosition::Latest)
        .await?;
    // Nothing new: the wait ends at its timeout, not before.
    let started = Instant::now();
    store
        .wait_for_records(&latest, Duration::from_millis(300))
        .await?;
    ensure!(
        started.elapsed() >= Duration::from_millis(250),
        "returned early without records"
    );
    // A record arrives: the wait ends well before its timeout.
    let desc = store.describe_stream(s).await?;
    let range = desc.shards[0].hash_key_range;
    let key = (0..)
        .map(|i| format!("wake-{i}"))
        .find(|k| range.contains(hash_key(k)))
        .context("a key for shard 0")?;
    let writer = {
        let store = store.clone();
        let s = s.clone();
        tokio::spawn(async move { store.put_record(&s, PutRecord::new(key, "wake up")).await })
    };
    let started = Instant::now();
    store.wait_for_records(&latest, Duration::from_secs(30)).await?;
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "the wait did not end when a record arrived"
    );
    writer.await??;
    let r = store.get_records(&latest, limits(10)).await?;
    ensure!(r.records.len() == 1 && r.records[0].data == "wake up".as_bytes());
    expect_err!(
        store
            .wait_for_records(
                &ShardIterator {
                    shard_id: ShardId(99),
                    ..latest.clone()
                },
                Duration::from_millis(10)
            )
            .await,
        StoreError::ShardNotFound { .. }
    );
    Ok(())
}

async fn check_resharding(store: &dyn StreamStore, s: &StreamName) -> Result<()> {
    let before = store.describe_stream(s).await?;
    let parent = before.shards[0].clone();
    let mid = parent.hash_key_range.start + (parent.hash_key_range.end - parent.hash_key_range.start) / 2;
    expect_err!(
        store
            .split_shard(s, ShardId(0), parent.hash_key_range.start)
            .await,
        StoreError::InvalidArgument(_)
    );
    expect_err!(
        store.split_shard(s, ShardId(99), mid).await,
        StoreError::ShardNotFound { .. }
    );
    let tail = store
        .get_shard_iterator(s, ShardId(0), StartingPosition::TrimHorizon)
        .await?;
    store.split_shard(s, ShardId(0), mid).await?;
    let desc = store.describe_stream(s).await?;
    let closed = desc.shard(ShardId(0)).context("the parent stays described")?;
    ensure!(!closed.is_open(), "a split closes its parent");
    let children: Vec<ShardId> = desc
        .shards
        .iter()
        .filter(|c| c.parent_shard_id == Some(ShardId(0)))
        .map(|c| c.shard_id)
        .collect();
    ensure!(children.len() == 2, "a split makes two children: {desc:?}");
    expect_err!(
        store.split_shard(s, ShardId(0), mid).await,
        StoreError::ResourceInUse(_)
    );
    // A reader of the parent reaches its end and is sent to the children.
    let (_, ended) = drain(store, tail, 50).await?;
    let mut got = ended.context("a closed shard ends")?;
    got.sort();
    ensure!(
        got == children,
        "the parent's children are {children:?}, not {got:?}"
    );

    // Records now go to the children; merging them makes one shard whose parents are both.
    for i in 0..40 {
        store
            .put_record(s, PutRecord::new(format!("after-split-{i}"), "x"))
            .await?;
    }
    expect_err!(
        store.merge_shards(s, children[0], ShardId(2)).await,
        StoreError::InvalidArgument(_)
    );
    let child_tail = store
        .get_shard_iterator(s, children[0], StartingPosition::TrimHorizon)
        .await?;
    store.merge_shards(s, children[0], children[1]).await?;
    let desc = store.describe_stream(s).await?;
    let merged = desc
        .shards
        .iter()
        .find(|m| m.adjacent_parent_shard_id.is_some())
        .context("a merged shard")?;
    ensure!(
        [merged.parent_shard_id, merged.adjacent_parent_shard_id] == [Some(children[0]), Some(children[1])]
    );
    ensure!(
        merged.hash_key_range == parent.hash_key_range,
        "the merge covers the split's range"
    );
    let (_, ended) = drain(store, child_tail, 50).await?;
    ensure!(
        ended == Some(vec![merged.shard_id]),
        "a merged parent's child is the merged shard"
    );

    expect_err!(
        store.update_shard_count(s, 100).await,
        StoreError::InvalidArgument(_)
    );
    store.update_shard_count(s, 4).await?;
    let open = store.describe_stream(s).await?.open_shards().count();
    ensure!(open == 4, "update_shard_count(4) left {open} open shards");
    for i in 0..40 {
        store
            .put_record(s, PutRecord::new(format!("after-update-{i}"), "x"))
            .await?;
    }
    Ok(())
}

/// A group reader consumes the whole stream in lineage order: every record once, each key in order.
async fn check_group_reader(store: Arc<dyn StreamStore>, s: &StreamName) -> Result<()> {
    let desc = store.describe_stream(s).await?;
    let mut total = 0;
    for shard in &desc.shards {
        let it = store
            .get_shard_iterator(s, shard.shard_id, StartingPosition::TrimHorizon)
            .await?;
        total += drain(&*store, it, 10_000).await?.0.len();
    }
    let mut reader = GroupReader::new(store.clone(), s.clone(), "group").await?;
    let mut seen: Vec<Record> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < total {
        ensure!(
            Instant::now() < deadline,
            "the group read {} of {total} records",
            seen.len()
        );
        let batches = reader.poll(limits(64)).await?;
        for batch in &batches {
            seen.extend(batch.records.iter().cloned());
            reader.commit(batch).await?;
        }
    }
    ensure!(
        seen.len() == total,
        "read {} records, expected {total}",
        seen.len()
    );
    let mut per_key: BTreeMap<&str, Vec<SequenceNumber>> = BTreeMap::new();
    for r in &seen {
        per_key
            .entry(r.partition_key.as_str())
            .or_default()
            .push(r.sequence_number);
    }
    for (key, seqs) in per_key {
        ensure!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} was read out of order"
        );
    }
    let checkpoints = store.checkpoints(s, "group").await?;
    let closed: Vec<_> = desc.shards.iter().filter(|d| !d.is_open()).collect();
    for d in closed {
        ensure!(
            checkpoints.get(&d.shard_id) == d.ending_sequence_number.as_ref(),
            "a finished parent is checkpointed at its end"
        );
    }
    // A second reader of the same group resumes after the checkpoints: nothing is left.
    let mut again = GroupReader::new(store.clone(), s.clone(), "group").await?;
    let rest: usize = again
        .poll(limits(64))
        .await?
        .iter()
        .map(|b| b.records.len())
        .sum();
    ensure!(rest == 0, "a resumed group re-read {rest} records");
    store.deregister_consumer(s, "group").await?;
    Ok(())
}

async fn check_retention(store: &dyn StreamStore, s: &StreamName) -> Result<()> {
    store.set_retention_hours(s, 168).await?;
    ensure!(store.describe_stream(s).await?.retention_hours == 168);
    store.set_retention_hours(s, 48).await?;
    ensure!(store.describe_stream(s).await?.retention_hours == 48);
    expect_err!(
        store.set_retention_hours(s, 23).await,
        StoreError::InvalidArgument(_)
    );
    expect_err!(
        store.set_retention_hours(s, 8_761).await,
        StoreError::InvalidArgument(_)
    );
    ensure!(store.describe_stream(s).await?.retention_hours == 48);
    Ok(())
}

async fn check_consumers(store: &dyn StreamStore, s: &StreamName) -> Result<()> {
    ensure!(store.list_consumers(s).await?.is_empty(), "no consumers yet");
    let before = now_ms();
    let c = store.register_consumer(s, "analytics").await?;
    ensure!(c.name == "analytics" && (before - 5_000..=now_ms() + 5_000).contains(&c.created_ms));
    expect_err!(
        store.register_consumer(s, "analytics").await,
        StoreError::ConsumerExists { .. }
    );
    expect_err!(
        store.register_consumer(s, "bad name").await,
        StoreError::InvalidArgument(_)
    );
    store.register_consumer(s, "archiver").await?;
    let mut names: Vec<String> = store
        .list_consumers(s)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    names.sort();
    ensure!(names == ["analytics", "archiver"], "{names:?}");
    let listed = store.list_consumers(s).await?;
    ensure!(listed.contains(&c), "a consumer lists as registered");

    ensure!(store.checkpoints(s, "analytics").await?.is_empty());
    store
        .checkpoint(s, "analytics", ShardId(1), SequenceNumber::from_u64(12345))
        .await?;
    store
        .checkpoint(s, "analytics", ShardId(2), SequenceNumber::from_u64(678))
        .await?;
    store
        .checkpoint(s, "analytics", ShardId(1), SequenceNumber::from_u64(12346))
        .await?;
    let want: BTreeMap<ShardId, SequenceNumber> = [
        (ShardId(1), SequenceNumber::from_u64(12346)),
        (ShardId(2), SequenceNumber::from_u64(678)),
    ]
    .into();
    ensure!(
        store.checkpoints(s, "analytics").await? == want,
        "checkpoints read back"
    );
    ensure!(
        store.checkpoints(s, "archiver").await?.is_empty(),
        "checkpoints are per consumer"
    );
    expect_err!(
        store
            .checkpoint(s, "nobody", ShardId(1), SequenceNumber::from_u64(1))
            .await,
        StoreError::ConsumerNotFound { .. }
    );
    expect_err!(
        store
            .checkpoint(s, "analytics", ShardId(99), SequenceNumber::from_u64(1))
            .await,
        StoreError::ShardNotFound { .. }
    );
    expect_err!(
        store.checkpoints(s, "nobody").await,
        StoreError::ConsumerNotFound { .. }
    );

    store.deregister_consumer(s, "analytics").await?;
    expect_err!(
        store.deregister_consumer(s, "analytics").await,
        StoreError::ConsumerNotFound { .. }
    );
    expect_err!(
        store.checkpoints(s, "analytics").await,
        StoreError::ConsumerNotFound { .. }
    );
    let names: Vec<String> = store
        .list_consumers(s)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    ensure!(names == ["archiver"], "{names:?}");
    store.deregister_consumer(s, "archiver").await?;
    Ok(())
}
