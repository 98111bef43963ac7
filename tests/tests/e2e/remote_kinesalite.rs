//! The remote `StreamStore` against kinesalite (npm), a Kinesis emulator that, like AWS Kinesis, issues 56-digit
//! sequence numbers (about 2^186) and does not report iterator positions: puts, reads from every iterator kind,
//! AT/AFTER_SEQUENCE_NUMBER with those numbers, resuming from a saved position or checkpoint in a fresh client,
//! reading across a split, and what is refused (freshet's checkpoint extension, a number of another shard).
//! boto3 reads and writes the same stream, so the numbers are compared with what a real AWS client sees.

use std::collections::BTreeMap;
use std::sync::Arc;

use freshet_storage::remote::{RemoteConfig, RemoteCredentials, RemoteStore};
use freshet_storage::{
    PutRecord, ReadLimits, Record, SequenceNumber, ShardId, ShardIterator, StartingPosition, StoreError,
    StreamName, StreamStore,
};
use freshet_tests::kinesalite::Kinesalite;
use freshet_tests::python_json;
use freshet_tests::store_contract::check_kinesis_subset;

/// A client of `endpoint` with nothing cached. kinesalite wants an `Authorization` header (it never checks it).
fn client(endpoint: &str) -> RemoteStore {
    let mut config = RemoteConfig::new(endpoint);
    config.credentials = Some(RemoteCredentials {
        access_key: "AKIDKINESALITE".into(),
        secret: "unchecked".into(),
        session_token: None,
    });
    RemoteStore::new(config).unwrap()
}

fn limits(records_max: usize) -> ReadLimits {
    ReadLimits {
        records_max,
        ..ReadLimits::default()
    }
}

/// Read from `it` until a read returns nothing (open shard) or the shard ends; `page` records per read.
async fn drain(
    store: &dyn StreamStore,
    mut it: ShardIterator,
    page: usize,
) -> (Vec<Record>, Option<Vec<ShardId>>) {
    let mut records = Vec::new();
    for _ in 0..10_000 {
        let out = store.get_records(&it, limits(page)).await.unwrap();
        assert!(out.records.len() <= page);
        let empty = out.records.is_empty();
        records.extend(out.records);
        match out.next_iterator {
            None => return (records, Some(out.child_shards)),
            Some(_) if empty => return (records, None),
            Some(next) => it = next,
        }
    }
    panic!("reading a shard did not end");
}

fn seqs(records: &[Record]) -> Vec<SequenceNumber> {
    records.iter().map(|r| r.sequence_number).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesalite_remote_store_reads_56_digit_sequence_numbers() {
    let kinesalite = Kinesalite::start(50);
    let endpoint = kinesalite.endpoint.clone();
    let store = client(&endpoint);
    let s = StreamName::new("aws-sized").unwrap();
    store.create_stream(&s, 2).await.unwrap();

    // Puts through the remote store: every number is AWS-sized, above 64 bits, increasing per shard.
    let records: Vec<PutRecord> = (0..40)
        .map(|i| PutRecord::new(format!("dev-{}", i % 7), format!("remote {i}")))
        .collect();
    let put: Vec<_> = store
        .put_records(&s, records)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut per_shard: BTreeMap<ShardId, Vec<SequenceNumber>> = BTreeMap::new();
    for p in &put {
        let text = p.sequence_number.to_string();
        assert_eq!(
            text.len(),
            56,
            "kinesalite's sequence number {text} is not 56 digits"
        );
        assert!(matches!(
            p.sequence_number.to_u64(),
            Err(StoreError::InvalidArgument(_))
        ));
        per_shard.entry(p.shard_id).or_default().push(p.sequence_number);
    }
    assert_eq!(per_shard.len(), 2, "7 keys reach both shards");
    for (shard, list) in &per_shard {
        assert!(
            list.windows(2).all(|w| w[0] < w[1]),
            "{shard}: not increasing: {list:?}"
        );
    }

    // boto3 puts too and lists every shard: the remote store reads the same records with the same numbers, digit
    // for digit, in the same order.
    let ep = endpoint.clone();
    let boto =
        tokio::task::spawn_blocking(move || python_json("kinesalite_boto3.py", &[&ep, "aws-sized", "25"]))
            .await
            .unwrap();
    let desc = store.describe_stream(&s).await.unwrap();
    assert_eq!(desc.shards.len(), 2);
    let mut by_shard: BTreeMap<ShardId, Vec<Record>> = BTreeMap::new();
    for shard in &desc.shards {
        let it = store
            .get_shard_iterator(&s, shard.shard_id, StartingPosition::TrimHorizon)
            .await
            .unwrap();
        assert_eq!(
            it.next, shard.starting_sequence_number,
            "TRIM_HORIZON starts at the shard's start"
        );
        let (got, children) = drain(&store, it, 4).await;
        assert!(children.is_none());
        let theirs: Vec<(String, String)> = boto["shards"][shard.shard_id.to_string()]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["seq"].as_str().unwrap().to_string(),
                    r["data"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let ours: Vec<(String, String)> = got
            .iter()
            .map(|r| {
                (
                    r.sequence_number.to_string(),
                    String::from_utf8(r.data.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ours, theirs,
            "{}: the remote store and boto3 disagree",
            shard.shard_id
        );
        assert!(
            got.iter()
                .all(|r| r.sequence_number > shard.starting_sequence_number)
        );
        let mut sorted = seqs(&got);
        sorted.sort();
        assert_eq!(sorted, seqs(&got), "reads come in sequence-number order");
        by_shard.insert(shard.shard_id, got);
    }
    let boto_puts = boto["puts"].as_array().unwrap();
    assert_eq!(boto_puts.len(), 25);
    for p in boto_puts {
        let seq: SequenceNumber = p["seq"].as_str().unwrap().parse().unwrap();
        let shard: ShardId = p["shard"].as_str().unwrap().parse().unwrap();
        assert!(
            seqs(&by_shard[&shard]).contains(&seq),
            "boto3's put {seq} is read back"
        );
    }

    // Every iterator kind, on the shard with more records.
    let (&shard, recs) = by_shard.iter().max_by_key(|(_, r)| r.len()).unwrap();
    assert!(recs.len() >= 12, "{} records on {shard}", recs.len());
    let at = store
        .get_shard_iterator(
            &s,
            shard,
            StartingPosition::AtSequenceNumber(recs[3].sequence_number),
        )
        .await
        .unwrap();
    let r = store.get_records(&at, limits(1)).await.unwrap();
    assert_eq!(
        seqs(&r.records),
        [recs[3].sequence_number],
        "AT_SEQUENCE_NUMBER starts at it"
    );
    let r = store
        .get_records(&r.next_iterator.unwrap(), limits(2))
        .await
        .unwrap();
    assert_eq!(seqs(&r.records), seqs(&recs[4..6]), "the next iterator continues");

    let after = store
        .get_shard_iterator(
            &s,
            shard,
            StartingPosition::AfterSequenceNumber(recs[3].sequence_number),
        )
        .await
        .unwrap();
    assert_eq!(Some(after.next), recs[3].sequence_number.checked_next());
    let r = store.get_records(&after, limits(2)).await.unwrap();
    assert_eq!(
        seqs(&r.records),
        seqs(&recs[4..6]),
        "AFTER_SEQUENCE_NUMBER starts after it"
    );

    let from_epoch = store
        .get_shard_iterator(&s, shard, StartingPosition::AtTimestamp(0))
        .await
        .unwrap();
    assert_eq!(
        from_epoch.next,
        SequenceNumber::ZERO,
        "no position before the first record"
    );
    let r = store.get_records(&from_epoch, limits(3)).await.unwrap();
    assert_eq!(
        seqs(&r.records),
        seqs(&recs[..3]),
        "AT_TIMESTAMP 0 is the trim horizon"
    );
    let later = recs[recs.len() - 1].arrival_ms;
    let at_time = store
        .get_shard_iterator(&s, shard, StartingPosition::AtTimestamp(later))
        .await
        .unwrap();
    let r = store.get_records(&at_time, limits(100)).await.unwrap();
    assert!(
        !r.records.is_empty()
            && r.records.iter().all(|x| x.arrival_ms >= later)
            && r.records.last().unwrap().sequence_number == recs.last().unwrap().sequence_number,
        "AT_TIMESTAMP reads from that time on"
    );

    let latest = store
        .get_shard_iterator(&s, shard, StartingPosition::Latest)
        .await
        .unwrap();
    let r = store.get_records(&latest, limits(10)).await.unwrap();
    assert!(r.records.is_empty(), "LATEST reads nothing yet");
    let latest = r.next_iterator.unwrap();
    let range = desc.shard(shard).unwrap().hash_key_range;
    let late = store
        .put_record(
            &s,
            PutRecord {
                explicit_hash_key: Some(range.start),
                ..PutRecord::new("late", "late")
            },
        )
        .await
        .unwrap();
    assert_eq!(late.shard_id, shard);
    let r = store.get_records(&latest, limits(10)).await.unwrap();
    assert_eq!(
        seqs(&r.records),
        [late.sequence_number],
        "LATEST then reads what came after"
    );
    let mut recs = recs.clone();
    recs.push(r.records[0].clone());

    // Resume in a fresh client (nothing cached, as after a restart): from a saved position, which it turns into
    // AFTER_SEQUENCE_NUMBER of the record before it, and from a checkpointed sequence number.
    let half = recs.len() / 2;
    let it = store
        .get_shard_iterator(&s, shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let first_half = store.get_records(&it, limits(half)).await.unwrap();
    assert_eq!(seqs(&first_half.records), seqs(&recs[..half]));
    let saved = serde_json::to_string(&first_half.next_iterator.unwrap()).unwrap();
    let checkpoint = serde_json::to_string(&first_half.records.last().unwrap().sequence_number).unwrap();
    assert!(
        checkpoint.len() == 58 && checkpoint.starts_with('"'),
        "{checkpoint}"
    );
    drop(store);

    let fresh = client(&endpoint);
    let resumed: ShardIterator = serde_json::from_str(&saved).unwrap();
    let (rest, _) = drain(&fresh, resumed, 3).await;
    assert_eq!(
        seqs(&rest),
        seqs(&recs[half..]),
        "a saved position resumes exactly"
    );
    let fresh = client(&endpoint);
    let from: SequenceNumber = serde_json::from_str(&checkpoint).unwrap();
    let it = fresh
        .get_shard_iterator(&s, shard, StartingPosition::AfterSequenceNumber(from))
        .await
        .unwrap();
    let (rest, _) = drain(&fresh, it, 5).await;
    assert_eq!(seqs(&rest), seqs(&recs[half..]), "a checkpoint resumes exactly");
    // A TRIM_HORIZON position (the shard's start, which no record holds) read by a fresh client.
    let trim = fresh
        .get_shard_iterator(&s, shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let (all, _) = drain(&client(&endpoint), trim, 6).await;
    assert_eq!(seqs(&all), seqs(&recs));
    // A LATEST iterator has no position until its first record: another client cannot resume it.
    let latest = fresh
        .get_shard_iterator(&s, shard, StartingPosition::Latest)
        .await
        .unwrap();
    match client(&endpoint).get_records(&latest, limits(1)).await {
        Err(StoreError::ExpiredIterator(m)) => assert!(m.contains("get a new iterator"), "{m}"),
        other => panic!("a LATEST iterator without a Kinesis iterator behind it: {other:?}"),
    }

    // What AWS-style endpoints refuse: freshet's checkpoint extension, and a number from another shard.
    match fresh.checkpoint(&s, "reader", shard, from).await {
        Err(StoreError::InvalidArgument(m)) => assert!(m.contains("not a freshet server"), "{m}"),
        other => panic!("checkpoint against kinesalite: {other:?}"),
    }
    let other = *by_shard.keys().find(|k| **k != shard).unwrap();
    let theirs = by_shard[&other][0].sequence_number;
    match fresh
        .get_shard_iterator(&s, shard, StartingPosition::AtSequenceNumber(theirs))
        .await
    {
        Err(StoreError::InvalidArgument(_)) => {}
        wrong => panic!("AT_SEQUENCE_NUMBER of a record of {other} on {shard}: {wrong:?}"),
    }

    // Across a split: the parent ends at an AWS-sized ending number after its last record and names its
    // children, which hold what comes next.
    let parent = desc.shard(shard).unwrap().clone();
    let mid = parent.hash_key_range.start + (parent.hash_key_range.end - parent.hash_key_range.start) / 2;
    fresh.split_shard(&s, shard, mid).await.unwrap();
    let after_split = fresh.describe_stream(&s).await.unwrap();
    let closed = after_split.shard(shard).unwrap();
    let ending = closed.ending_sequence_number.expect("the parent is closed");
    assert_eq!(ending.to_string().len(), 56);
    assert!(ending > recs.last().unwrap().sequence_number);
    let trim = fresh
        .get_shard_iterator(&s, shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let (all, children) = drain(&fresh, trim, 50).await;
    assert_eq!(seqs(&all), seqs(&recs));
    let mut children = children.expect("a closed shard read to its end names its children");
    children.sort();
    let mut want: Vec<ShardId> = after_split
        .shards
        .iter()
        .filter(|c| c.parent_shard_id == Some(shard))
        .map(|c| c.shard_id)
        .collect();
    want.sort();
    assert_eq!(children, want);
    assert_eq!(children.len(), 2);
    let child_put = fresh
        .put_record(
            &s,
            PutRecord {
                explicit_hash_key: Some(parent.hash_key_range.start),
                ..PutRecord::new("child", "after the split")
            },
        )
        .await
        .unwrap();
    assert!(children.contains(&child_put.shard_id));
    let it = fresh
        .get_shard_iterator(&s, child_put.shard_id, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let (got, _) = drain(&fresh, it, 10).await;
    assert_eq!(seqs(&got), [child_put.sequence_number]);
    assert!(child_put.sequence_number > ending);

    fresh.delete_stream(&s).await.unwrap();
    assert!(matches!(
        fresh.describe_stream(&s).await,
        Err(StoreError::StreamNotFound(_))
    ));
}

/// The part of the store contract that AWS Kinesis itself answers (no freshet extensions), against kinesalite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesalite_remote_store_passes_the_kinesis_part_of_the_contract() {
    let kinesalite = Kinesalite::start(50);
    check_kinesis_subset(Arc::new(client(&kinesalite.endpoint)), "kinesalite")
        .await
        .unwrap();
}
