//! Model-based test of the embedded store: seeded random sequences of append, read, trim (retention), split,
//! merge, shard-count update and restart, each checked against a plain in-memory model of what Kinesis promises.
//! On failure the seed is printed; rerun one seed with `FRESHET_MODEL_SEED=<seed>`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use freshet_storage::consumer::GroupReader;
use freshet_storage::hash::hash_key;
use freshet_storage::*;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const RETENTION_MS: i64 = 24 * 3_600_000;

#[derive(Clone, Debug)]
struct ModelRecord {
    seq: u64,
    key: String,
    /// The routing hash (MD5 of the key, or the explicit hash key).
    hash: u128,
    data: Vec<u8>,
    arrival_ms: i64,
}

#[derive(Debug)]
struct ModelShard {
    range: HashKeyRange,
    open: bool,
    parents: Vec<ShardId>,
    records: Vec<ModelRecord>,
}

struct Harness {
    rng: StdRng,
    clock: Arc<ManualClock>,
    config: StoreConfig,
    store: Option<Store>,
    stream: StreamName,
    model: BTreeMap<ShardId, ModelShard>,
    seen_seqs: BTreeSet<u64>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    /// Bring the model's topology in line with the store's description, checking what must not change.
    async fn sync_topology(&mut self) {
        let desc = self.store().describe_stream(&self.stream).await.unwrap();
        for s in &desc.shards {
            let entry = self.model.entry(s.shard_id).or_insert_with(|| ModelShard {
                range: s.hash_key_range,
                open: s.is_open(),
                parents: [s.parent_shard_id, s.adjacent_parent_shard_id]
                    .into_iter()
                    .flatten()
                    .collect(),
                records: Vec::new(),
            });
            assert_eq!(
                entry.range, s.hash_key_range,
                "hash range of {} changed",
                s.shard_id
            );
            assert!(entry.open || !s.is_open(), "{} reopened", s.shard_id);
            entry.open = s.is_open();
            if let Some(end) = s.ending_sequence_number {
                assert!(
                    entry.records.iter().all(|r| r.seq < end.to_u64().unwrap()),
                    "{} holds records past its end",
                    s.shard_id
                );
            }
        }
        assert_eq!(desc.shards.len(), self.model.len(), "shards disappeared");
        // Open shards tile the hash key space.
        let mut open: Vec<HashKeyRange> = desc.open_shards().map(|s| s.hash_key_range).collect();
        open.sort_by_key(|r| r.start);
        assert_eq!(open.first().unwrap().start, 0);
        assert_eq!(open.last().unwrap().end, u128::MAX);
        for pair in open.windows(2) {
            assert_eq!(
                pair[0].end + 1,
                pair[1].start,
                "open shards do not tile the key space"
            );
        }
    }

    fn open_shards(&self) -> Vec<ShardId> {
        self.model
            .iter()
            .filter(|(_, s)| s.open)
            .map(|(id, _)| *id)
            .collect()
    }

    async fn append(&mut self) {
        let n = self.rng.random_range(1..=20);
        let mut records = Vec::new();
        for _ in 0..n {
            let key = format!("k{}", self.rng.random_range(0..40));
            let len = self.rng.random_range(0..300);
            let data: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
            let mut record = PutRecord::new(key, data);
            if self.rng.random_ratio(1, 10) {
                record.explicit_hash_key = Some(self.rng.random());
            }
            records.push(record);
        }
        let results = self
            .store()
            .put_records(&self.stream, records.clone())
            .await
            .unwrap();
        let now = self.clock.now_ms();
        for (record, result) in records.into_iter().zip(results) {
            let result = result.unwrap();
            let hash = record
                .explicit_hash_key
                .unwrap_or_else(|| hash_key(&record.partition_key));
            let shard = self.model.get_mut(&result.shard_id).unwrap();
            assert!(shard.open, "appended to closed shard {}", result.shard_id);
            assert!(
                shard.range.contains(hash),
                "record routed to {} outside its hash range",
                result.shard_id
            );
            let seq = result.sequence_number.to_u64().unwrap();
            assert!(
                shard.records.last().is_none_or(|r| r.seq < seq),
                "sequence numbers not increasing"
            );
            assert!(self.seen_seqs.insert(seq), "sequence number {seq} reused");
            shard.records.push(ModelRecord {
                seq,
                hash,
                key: record.partition_key,
                data: record.data.to_vec(),
                arrival_ms: now,
            });
        }
    }

    async fn read_from(&mut self, shard: ShardId, position: StartingPosition) -> (Vec<Record>, bool) {
        let mut iterator = self
            .store()
            .get_shard_iterator(&self.stream, shard, position)
            .await
            .unwrap();
        let mut records = Vec::new();
        loop {
            let limits = ReadLimits {
                records_max: self.rng.random_range(1..=50),
                bytes_max: self.rng.random_range(1..=4096),
            };
            let out = self.store().get_records(&iterator, limits).await.unwrap();
            assert!(out.records.len() <= limits.records_max);
            let empty = out.records.is_empty();
            records.extend(out.records);
            match out.next_iterator {
                None => {
                    let children: BTreeSet<ShardId> = out.child_shards.into_iter().collect();
                    let expected: BTreeSet<ShardId> = self
                        .model
                        .iter()
                        .filter(|(_, s)| s.parents.contains(&shard))
                        .map(|(id, _)| *id)
                        .collect();
                    assert_eq!(children, expected, "children of {shard}");
                    return (records, true);
                }
                Some(next) if !empty => iterator = next,
                Some(_) => return (records, false),
            }
        }
    }

    async fn check_read(&mut self) {
        let ids: Vec<ShardId> = self.model.keys().copied().collect();
        let shard = *ids.choose(&mut self.rng).unwrap();
        let model = &self.model[&shard].records;
        let (position, expected): (StartingPosition, Vec<ModelRecord>) = match self.rng.random_range(0..5) {
            0 => (StartingPosition::TrimHorizon, model.clone()),
            1 => (StartingPosition::Latest, Vec::new()),
            2 if !model.is_empty() => {
                let i = self.rng.random_range(0..model.len());
                (
                    StartingPosition::AtSequenceNumber(SequenceNumber::from_u64(model[i].seq)),
                    model[i..].to_vec(),
                )
            }
            3 if !model.is_empty() => {
                let i = self.rng.random_range(0..model.len());
                (
                    StartingPosition::AfterSequenceNumber(SequenceNumber::from_u64(model[i].seq)),
                    model[i + 1..].to_vec(),
                )
            }
            _ if !model.is_empty() => {
                let (lo, hi) = (model[0].arrival_ms - 10, model.last().unwrap().arrival_ms + 10);
                let at = self.rng.random_range(lo..=hi);
                (
                    StartingPosition::AtTimestamp(at),
                    model.iter().filter(|r| r.arrival_ms >= at).cloned().collect(),
                )
            }
            _ => (StartingPosition::TrimHorizon, Vec::new()),
        };
        let open = self.model[&shard].open;
        let (records, ended) = self.read_from(shard, position).await;
        assert_records(shard, &records, &expected);
        assert_eq!(
            ended, !open,
            "{shard}: end of shard reported {ended}, shard open {open}"
        );
    }

    async fn trim(&mut self) {
        self.clock.advance(self.rng.random_range(0..30 * 3_600_000));
        self.store().enforce_retention().await.unwrap();
        let cutoff = self.clock.now_ms() - RETENTION_MS;
        let ids: Vec<ShardId> = self.model.keys().copied().collect();
        for shard in ids {
            let held = freshet_tests::read_shard(self.store(), &self.stream, shard).await;
            let model = &mut self.model.get_mut(&shard).unwrap().records;
            // What remains is a suffix of the model, and everything removed had expired.
            let removed = model.len() - held.len();
            assert!(
                model[..removed].iter().all(|r| r.arrival_ms < cutoff),
                "{shard}: unexpired records removed"
            );
            if model.iter().all(|r| r.arrival_ms < cutoff) {
                assert!(
                    held.is_empty(),
                    "{shard}: every record expired but {} are held",
                    held.len()
                );
            }
            model.drain(..removed);
            assert_records(shard, &held, model);
        }
    }

    async fn split(&mut self) {
        let open = self.open_shards();
        let shard = *open.choose(&mut self.rng).unwrap();
        let range = self.model[&shard].range;
        if range.end - range.start < 2 {
            return;
        }
        let key = self.rng.random_range(range.start + 1..=range.end);
        self.store().split_shard(&self.stream, shard, key).await.unwrap();
        self.sync_topology().await;
        assert!(!self.model[&shard].open);
    }

    async fn merge(&mut self) {
        let mut open: Vec<(HashKeyRange, ShardId)> = self
            .open_shards()
            .into_iter()
            .map(|id| (self.model[&id].range, id))
            .collect();
        if open.len() < 2 {
            return;
        }
        open.sort_by_key(|(r, _)| r.start);
        let i = self.rng.random_range(0..open.len() - 1);
        let (a, b) = (open[i].1, open[i + 1].1);
        // Merging shards that do not touch must fail and change nothing.
        if open.len() >= 3 {
            let far = open[(i + 2) % open.len()].1;
            let (fr, ar) = (self.model[&far].range, self.model[&a].range);
            let touches = fr.start.checked_sub(1) == Some(ar.end) || ar.start.checked_sub(1) == Some(fr.end);
            if far != a && far != b && !touches {
                let err = self.store().merge_shards(&self.stream, a, far).await.unwrap_err();
                assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
            }
        }
        self.store().merge_shards(&self.stream, a, b).await.unwrap();
        self.sync_topology().await;
    }

    async fn scale(&mut self) {
        let open = self.open_shards().len() as u32;
        let target = self.rng.random_range(open.div_ceil(2)..=(open * 2).min(8));
        self.store()
            .update_shard_count(&self.stream, target)
            .await
            .unwrap();
        self.sync_topology().await;
        assert_eq!(self.open_shards().len() as u32, target);
    }

    async fn restart(&mut self) {
        let store = self.store.take().unwrap();
        store.shutdown().await;
        drop(store);
        self.store = Some(Store::open(self.config.clone(), self.clock.clone()).unwrap());
        self.sync_topology().await;
    }

    async fn check_errors(&mut self) {
        let store = self.store();
        let bad_key = PutRecord::new("", "x");
        assert!(matches!(
            store
                .put_records(&self.stream, vec![PutRecord::new("ok", "y"), bad_key])
                .await,
            Err(StoreError::InvalidArgument(_))
        ));
        let big = PutRecord::new("k", vec![0u8; RECORD_BYTES_MAX_DEFAULT]);
        assert!(matches!(
            store.put_record(&self.stream, big).await,
            Err(StoreError::InvalidArgument(_))
        ));
        let unknown = StreamName::new("nope").unwrap();
        assert!(matches!(
            store.put_record(&unknown, PutRecord::new("k", "x")).await,
            Err(StoreError::StreamNotFound(_))
        ));
        assert!(matches!(
            store
                .get_shard_iterator(&self.stream, ShardId(999), StartingPosition::Latest)
                .await,
            Err(StoreError::ShardNotFound { .. })
        ));
        let shard = *self.model.keys().next().unwrap();
        let beyond = SequenceNumber::from_u64(u64::MAX - 1);
        assert!(matches!(
            store
                .get_shard_iterator(&self.stream, shard, StartingPosition::AtSequenceNumber(beyond))
                .await,
            Err(StoreError::InvalidArgument(_))
        ));
    }

    /// Read the whole stream as a named consumer and check lineage order: every record exactly once, and for
    /// each partition key the records in sequence order (parents before children).
    async fn check_consumer(&mut self) {
        let store = Arc::new(self.store().clone());
        let mut reader = GroupReader::new(store, self.stream.clone(), "model-check")
            .await
            .unwrap();
        let mut got: Vec<(ShardId, Record)> = Vec::new();
        loop {
            let batches = reader
                .poll(ReadLimits {
                    records_max: 7,
                    bytes_max: 1 << 20,
                })
                .await
                .unwrap();
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                // Parents of a shard being read are finished.
                for parent in &self.model[&batch.shard_id].parents {
                    let done = self.model[parent].records.iter().all(|r| {
                        got.iter()
                            .any(|(_, g)| g.sequence_number.to_u64().unwrap() == r.seq)
                    });
                    assert!(
                        done,
                        "read {} before finishing its parent {parent}",
                        batch.shard_id
                    );
                }
                got.extend(batch.records.iter().map(|r| (batch.shard_id, r.clone())));
                reader.commit(&batch).await.unwrap();
            }
        }
        let total: usize = self.model.values().map(|s| s.records.len()).sum();
        assert_eq!(got.len(), total, "consumer read every record exactly once");
        // Per routing hash (what decides the shard), records come in sequence order across splits and merges.
        let hash_of: BTreeMap<u64, u128> = self
            .model
            .values()
            .flat_map(|s| s.records.iter().map(|r| (r.seq, r.hash)))
            .collect();
        let mut last_by_hash: BTreeMap<u128, u64> = BTreeMap::new();
        for (shard, record) in &got {
            let seq = record.sequence_number.to_u64().unwrap();
            let last = last_by_hash.entry(hash_of[&seq]).or_insert(0);
            assert!(
                *last < seq,
                "key {} read out of order in {shard}",
                record.partition_key
            );
            *last = seq;
        }
        self.store()
            .deregister_consumer(&self.stream, "model-check")
            .await
            .unwrap();
    }
}

fn assert_records(shard: ShardId, got: &[Record], expected: &[ModelRecord]) {
    let got_seqs: Vec<u64> = got.iter().map(|r| r.sequence_number.to_u64().unwrap()).collect();
    let want_seqs: Vec<u64> = expected.iter().map(|r| r.seq).collect();
    assert_eq!(got_seqs, want_seqs, "{shard}: sequence numbers read");
    for (g, w) in got.iter().zip(expected) {
        assert_eq!(g.partition_key, w.key);
        assert_eq!(&g.data[..], &w.data[..], "{shard}: data of {}", w.seq);
        assert_eq!(g.arrival_ms, w.arrival_ms);
    }
}

async fn run_seed(seed: u64, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let config = StoreConfig {
        log: LogConfig {
            // Small segments and a sparse index make rolls, index lookups and whole-segment retention frequent.
            segment_bytes_max: 4096,
            segment_age_max_ms: 2 * 3_600_000,
            index_interval_bytes: 512,
            // Odd seeds write shard by shard, as where the kernel has no io_uring.
            io_uring: seed.is_multiple_of(2),
            ..LogConfig::default()
        },
        ..StoreConfig::new(dir.path())
    };
    let store = Store::open(config.clone(), clock.clone()).unwrap();
    let stream = StreamName::new("model").unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    store
        .create_stream(&stream, rng.random_range(1..=4))
        .await
        .unwrap();
    let mut h = Harness {
        rng,
        clock,
        config,
        store: Some(store),
        stream,
        model: BTreeMap::new(),
        seen_seqs: BTreeSet::new(),
        _dir: dir,
    };
    h.sync_topology().await;
    for _ in 0..steps {
        match h.rng.random_range(0..100) {
            0..=44 => h.append().await,
            45..=66 => h.check_read().await,
            67..=71 => h.trim().await,
            72..=78 => h.split().await,
            79..=84 => h.merge().await,
            85..=86 => h.scale().await,
            87..=91 => h.restart().await,
            92..=94 => h.check_errors().await,
            _ => h.clock.advance(h.rng.random_range(0..3 * 3_600_000)),
        }
        h.clock.advance(h.rng.random_range(0..2_000));
    }
    h.restart().await;
    h.check_consumer().await;
    let ids: Vec<ShardId> = h.model.keys().copied().collect();
    for shard in ids {
        let held = freshet_tests::read_shard(h.store(), &h.stream, shard).await;
        assert_records(shard, &held, &h.model[&shard].records);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_matches_model_over_random_operations() {
    let seeds: Vec<u64> = match std::env::var("FRESHET_MODEL_SEED") {
        Ok(seed) => vec![seed.parse().expect("FRESHET_MODEL_SEED is a number")],
        Err(_) => (1..=12).collect(),
    };
    for seed in seeds {
        let outcome = tokio::spawn(run_seed(seed, 250)).await;
        if let Err(e) = outcome {
            panic!("model test failed with seed {seed} (rerun with FRESHET_MODEL_SEED={seed}): {e}");
        }
    }
}
