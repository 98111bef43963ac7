//! Torn-tail test: a segment cut at random byte offsets (with and without garbage after the cut, as a crash in
//! the middle of a write leaves it) recovers to the last whole record, truncates the file there, and accepts
//! appends again.

use std::sync::Arc;

use freshet_storage::segment::{self, HEADER_BYTES};
use freshet_storage::*;
use freshet_tests::read_shard;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn the_segment(data_dir: &std::path::Path) -> std::path::PathBuf {
    let shard_dir = data_dir.join("streams/torn/shards/0000000000");
    let mut segments: Vec<_> = std::fs::read_dir(&shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(
        segments.len(),
        1,
        "one segment expected in {}",
        shard_dir.display()
    );
    segments.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tails_recover_to_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::new(dir.path());
    let stream = StreamName::new("torn").unwrap();
    let mut rng = StdRng::seed_from_u64(7);

    // Write records of varied sizes in several group commits.
    let store = Store::open(config.clone(), Arc::new(SystemClock)).unwrap();
    store.create_stream(&stream, 1).await.unwrap();
    for batch in 0..10 {
        let records = (0..rng.random_range(1..30))
            .map(|i| {
                PutRecord::new(
                    format!("key-{batch}-{i}"),
                    vec![b'a' + (i % 26) as u8; rng.random_range(0..2000)],
                )
            })
            .collect();
        for result in store.put_records(&stream, records).await.unwrap() {
            result.unwrap();
        }
    }
    let original = read_shard(&store, &stream, ShardId(0)).await;
    store.shutdown().await;
    drop(store);

    let path = the_segment(dir.path());
    let whole = std::fs::read(&path).unwrap();
    // Where each record ends in the file.
    let mut ends = Vec::new();
    let mut at = HEADER_BYTES as usize;
    for record in &original {
        at += segment::frame_bytes(&record.partition_key, record.data.len());
        ends.push(at);
    }
    assert_eq!(at, whole.len(), "segment holds exactly the records written");

    for trial in 0..40 {
        let cut = rng.random_range(HEADER_BYTES as usize..whole.len());
        let mut torn = whole[..cut].to_vec();
        if trial % 2 == 1 {
            // A crash can leave garbage (or zeros from preallocation) after the last whole write.
            let garbage = rng.random_range(1..3000);
            torn.extend((0..garbage).map(|_| if trial % 4 == 1 { 0u8 } else { rng.random() }));
        }
        std::fs::write(&path, &torn).unwrap();

        let store = Store::open(config.clone(), Arc::new(SystemClock)).unwrap();
        let kept = ends.iter().filter(|&&e| e <= cut).count();
        let recovered = read_shard(&store, &stream, ShardId(0)).await;
        assert_eq!(recovered, original[..kept], "trial {trial}: cut at {cut}");
        let expect_len = if kept == 0 {
            HEADER_BYTES as usize
        } else {
            ends[kept - 1]
        };
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            expect_len,
            "trial {trial}: file truncated"
        );

        // The shard takes appends after recovery, and they read back after the recovered records.
        let fresh = store
            .put_record(&stream, PutRecord::new("after", format!("trial-{trial}")))
            .await
            .unwrap();
        let after = read_shard(&store, &stream, ShardId(0)).await;
        assert_eq!(after.len(), kept + 1);
        assert_eq!(after.last().unwrap().sequence_number, fresh.sequence_number);
        assert!(kept == 0 || original[kept - 1].sequence_number < fresh.sequence_number);
        store.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_the_middle_is_skipped_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::new(dir.path());
    let stream = StreamName::new("torn").unwrap();
    let store = Store::open(config.clone(), Arc::new(SystemClock)).unwrap();
    store.create_stream(&stream, 1).await.unwrap();
    let records: Vec<PutRecord> = (0..5)
        .map(|i| PutRecord::new("k", format!("record-{i}")))
        .collect();
    for result in store.put_records(&stream, records).await.unwrap() {
        result.unwrap();
    }
    let original = read_shard(&store, &stream, ShardId(0)).await;
    store.shutdown().await;
    drop(store);

    let path = the_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let third = HEADER_BYTES as usize + 2 * segment::frame_bytes("k", "record-0".len());
    let last_byte_of_third = third + segment::frame_bytes("k", "record-2".len()) - 1;
    bytes[last_byte_of_third] ^= 0x55; // flip bits in record 2's data
    std::fs::write(&path, &bytes).unwrap();

    let store = Store::open(config, Arc::new(SystemClock)).unwrap();
    let recovered = read_shard(&store, &stream, ShardId(0)).await;
    let expected: Vec<Record> = original
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(
        recovered, expected,
        "the corrupt record is skipped; the records after it are kept"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        bytes.len(),
        "nothing after the corruption is cut"
    );
    store.shutdown().await;
}

/// Copy a directory tree (the store's files as a crash would leave them: the copy is taken while it runs).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// With fsync `always` the writer keeps zeroed room past its records (so most syncs write data only). A crash
/// leaves that room behind: recovery cuts it, keeps every record (and nothing else), and the shard takes appends
/// again. A clean stop leaves no room behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroed_room_left_by_a_crash_is_cut_and_every_record_kept() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamName::new("torn").unwrap();
    let store = Store::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).unwrap();
    store.create_stream(&stream, 1).await.unwrap();
    for batch in 0..5 {
        let records = (0..20)
            .map(|i| PutRecord::new(format!("k{i}"), format!("batch {batch} record {i}")))
            .collect();
        for result in store.put_records(&stream, records).await.unwrap() {
            result.unwrap();
        }
    }
    let original = read_shard(&store, &stream, ShardId(0)).await;
    let records_end = HEADER_BYTES as usize
        + original
            .iter()
            .map(|r| segment::frame_bytes(&r.partition_key, r.data.len()))
            .sum::<usize>();

    // The files as a crash now would leave them: the records, then zeros.
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), crashed.path());
    let path = the_segment(crashed.path());
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > records_end && bytes.len() as u64 >= HEADER_BYTES + shard::ZERO_AHEAD_BYTES,
        "zeroed room after the records: {} bytes for {records_end} of records",
        bytes.len()
    );
    assert!(bytes[records_end..].iter().all(|b| *b == 0));

    let recovered = Store::open(StoreConfig::new(crashed.path()), Arc::new(SystemClock)).unwrap();
    assert_eq!(read_shard(&recovered, &stream, ShardId(0)).await, original);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        records_end,
        "room cut"
    );
    let fresh = recovered
        .put_record(&stream, PutRecord::new("after", "after the crash"))
        .await
        .unwrap();
    let after = read_shard(&recovered, &stream, ShardId(0)).await;
    assert_eq!(after.len(), original.len() + 1);
    assert_eq!(after.last().unwrap().sequence_number, fresh.sequence_number);
    assert_eq!(&after.last().unwrap().data[..], b"after the crash");
    recovered.shutdown().await;

    // A clean stop cuts the room: the file ends with the last record.
    store.shutdown().await;
    let path = the_segment(dir.path());
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, records_end);
}

/// Sealed segments carry no zeroed room (a roll cuts it while the store runs), and without fsync `always` the
/// writer keeps none at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_cut_the_zeroed_room_and_only_fsync_always_keeps_one() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.log.fsync = fsync;
        config.log.segment_bytes_max = 16 * 1024;
        let stream = StreamName::new("torn").unwrap();
        let store = Store::open(config, Arc::new(SystemClock)).unwrap();
        store.create_stream(&stream, 1).await.unwrap();
        for batch in 0..20 {
            let records = (0..10)
                .map(|i| PutRecord::new(format!("k{i}"), vec![b'a' + (batch % 26) as u8; 300]))
                .collect();
            for result in store.put_records(&stream, records).await.unwrap() {
                result.unwrap();
            }
        }
        let records = read_shard(&store, &stream, ShardId(0)).await;
        assert_eq!(records.len(), 200);
        // While the store runs: every segment but the newest ends with its last record.
        let shard_dir = dir.path().join("streams/torn/shards/0000000000");
        let mut segments: Vec<_> = std::fs::read_dir(&shard_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segments.sort();
        assert!(
            segments.len() > 3,
            "{fsync:?}: rolled {} times",
            segments.len() - 1
        );
        let mut lengths = Vec::new();
        for path in &segments {
            let bytes = std::fs::read(path).unwrap();
            let mut end = HEADER_BYTES as usize;
            // Frames: body length (u32 LE), checksum, body; zeros are no frame.
            while end + 8 <= bytes.len() {
                let body = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
                if body == 0 || end + 8 + body > bytes.len() {
                    break;
                }
                end += 8 + body;
            }
            lengths.push((bytes.len(), end));
        }
        let (newest, sealed) = lengths.split_last().unwrap();
        for (i, (len, end)) in sealed.iter().enumerate() {
            assert_eq!(
                len, end,
                "{fsync:?}: sealed segment {i} has bytes after its last record"
            );
        }
        match fsync {
            FsyncPolicy::Always => assert!(newest.0 > newest.1, "{fsync:?}: no room in the newest segment"),
            _ => assert_eq!(newest.0, newest.1, "{fsync:?}: room without fsync always"),
        }
        store.shutdown().await;
    }
}
