//! Shard routing, exactly as Kinesis does it: the partition key's MD5 digest read as a big-endian
//! 128-bit unsigned integer is the hash key, and the open shard whose inclusive hash-key range holds it
//! takes the record. An explicit hash key replaces the digest.

use md5::{Digest, Md5};

use crate::types::HashKeyRange;

/// The 128-bit hash key of a partition key (MD5 of its UTF-8 bytes, big-endian).
pub fn hash_key(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Most partition keys remembered per thread by [`hash_key_cached`].
const CACHE_KEYS_MAX: usize = 16 * 1024;

thread_local! {
    static CACHE: std::cell::RefCell<std::collections::HashMap<Box<str>, u128>> = Default::default();
}

/// [`hash_key`], remembered per thread: devices publish under the same few thousand keys over and over, and MD5
/// was the largest single cost of an append (≈ 200 ns of ≈ 1 µs). The cache is cleared when it reaches
/// [`CACHE_KEYS_MAX`] keys, so memory stays bounded whatever the keys.
pub fn hash_key_cached(partition_key: &str) -> u128 {
    CACHE.with_borrow_mut(|cache| {
        if let Some(&hash) = cache.get(partition_key) {
            return hash;
        }
        if cache.len() >= CACHE_KEYS_MAX {
            cache.clear();
        }
        let hash = hash_key(partition_key);
        cache.insert(partition_key.into(), hash);
        hash
    })
}

/// `count` contiguous ranges covering the whole key space evenly, the way Kinesis lays out a new stream:
/// range `i` starts at `floor(i * 2^128 / count)`.
pub fn uniform_ranges(count: u32) -> Vec<HashKeyRange> {
    assert!(count > 0, "a stream has at least one shard");
    if count == 1 {
        return vec![HashKeyRange::FULL]; // 2^128 / 1 does not fit in a u128
    }
    let n = u128::from(count);
    // 2^128 = q * n + r, computed without overflowing u128.
    let (mut q, mut r) = (u128::MAX / n, u128::MAX % n + 1);
    if r == n {
        q += 1;
        r = 0;
    }
    let start = |i: u128| i * q + (i * r) / n;
    (0..n)
        .map(|i| HashKeyRange {
            start: start(i),
            end: if i + 1 == n { u128::MAX } else { start(i + 1) - 1 },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_hash_key_matches_known_digest() {
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
    }

    #[test]
    fn cached_hash_keys_equal_fresh_ones() {
        for i in 0..(CACHE_KEYS_MAX + 10) {
            let key = format!("device-{}", i % (CACHE_KEYS_MAX + 3));
            assert_eq!(hash_key_cached(&key), hash_key(&key));
        }
    }

    #[test]
    fn uniform_ranges_match_kinesis_layout_and_cover_everything() {
        let four = uniform_ranges(4);
        assert_eq!(four[1].start, 85070591730234615865843651857942052864);
        assert_eq!(four[0].end, 85070591730234615865843651857942052863);
        for count in [1, 2, 3, 5, 7, 64, 1024] {
            let ranges = uniform_ranges(count);
            assert_eq!(ranges.len(), count as usize);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, u128::MAX);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end + 1, pair[1].start);
                assert!(pair[0].start < pair[0].end);
            }
        }
    }
}
