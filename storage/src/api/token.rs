//! Opaque tokens handed to clients: shard iterators and pagination `NextToken`s.
//!
//! A token is base64 of `version, kind, creation time (epoch ms), two numbers, a short text` followed by a
//! truncated HMAC-SHA256 of all of it under the API's token key. The MAC makes garbage, truncated or edited
//! tokens fail with `InvalidArgumentException` instead of reading from a wrong place; with the default (public)
//! key it is a keyed checksum, with a secret key it also makes forged tokens fail. The creation time lets the
//! API expire iterators after 5 minutes, as Kinesis does. Tokens carry no secret: an iterator only names a
//! position that the same caller could ask for by sequence number.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const MAC_BYTES: usize = 16;
const HEADER_BYTES: usize = 1 + 1 + 8 + 8 + 8 + 2;
/// Longest token accepted, in characters (Kinesis iterators are at most 512).
pub const TOKEN_CHARS_MAX: usize = 1024;
/// Longest text a token carries.
const TEXT_BYTES_MAX: usize = 512;

/// What a token is for; a token of one kind is refused where another is expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenKind {
    Iterator = 1,
    ShardPage = 2,
    StreamPage = 3,
    ConsumerPage = 4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub created_ms: i64,
    pub a: u64,
    pub b: u64,
    pub text: String,
}

/// Seals and opens tokens under one key.
#[derive(Clone)]
pub struct Sealer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { .. }")
    }
}

impl Sealer {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, bytes: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(bytes);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    pub fn seal(&self, token: &Token) -> String {
        let text = &token.text.as_bytes()[..token.text.len().min(TEXT_BYTES_MAX)];
        let mut bytes = Vec::with_capacity(HEADER_BYTES + text.len() + MAC_BYTES);
        bytes.push(VERSION);
        bytes.push(token.kind as u8);
        bytes.extend_from_slice(&token.created_ms.to_be_bytes());
        bytes.extend_from_slice(&token.a.to_be_bytes());
        bytes.extend_from_slice(&token.b.to_be_bytes());
        bytes.extend_from_slice(&(text.len() as u16).to_be_bytes());
        bytes.extend_from_slice(text);
        let mac = self.mac(&bytes);
        bytes.extend_from_slice(&mac);
        STANDARD.encode(bytes)
    }

    /// Open a token of `kind`; `Err` says why it is not one of ours (never echoing secrets).
    pub fn open(&self, s: &str, kind: TokenKind) -> Result<Token, String> {
        if s.is_empty() || s.len() > TOKEN_CHARS_MAX {
            return Err(format!("must be 1 to {TOKEN_CHARS_MAX} characters"));
        }
        let bytes = STANDARD.decode(s).map_err(|_| "is not base64".to_string())?;
        if bytes.len() < HEADER_BYTES + MAC_BYTES {
            return Err("is too short".into());
        }
        let (body, mac) = bytes.split_at(bytes.len() - MAC_BYTES);
        let mut check = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        check.update(body);
        check
            .verify_truncated_left(mac)
            .map_err(|_| "failed its integrity check".to_string())?;
        if body[0] != VERSION {
            return Err(format!("has unknown version {}", body[0]));
        }
        if body[1] != kind as u8 {
            return Err("is of another kind".into());
        }
        let num = |at: usize| -> [u8; 8] {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            b
        };
        let text_len = usize::from(u16::from_be_bytes([body[26], body[27]]));
        if body.len() != HEADER_BYTES + text_len {
            return Err("has a wrong length".into());
        }
        let text = std::str::from_utf8(&body[HEADER_BYTES..])
            .map_err(|_| "holds text that is not UTF-8".to_string())?
            .to_string();
        Ok(Token {
            kind,
            created_ms: i64::from_be_bytes(num(2)),
            a: u64::from_be_bytes(num(10)),
            b: u64::from_be_bytes(num(18)),
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token {
            kind: TokenKind::Iterator,
            created_ms: 1_763_800_000_000,
            a: 7,
            b: 1_763_800_000_000_123,
            text: "telemetry".into(),
        }
    }

    #[test]
    fn tokens_round_trip() {
        let sealer = Sealer::new(b"key");
        let sealed = sealer.seal(&token());
        assert!(sealed.len() <= 512);
        assert_eq!(sealer.open(&sealed, TokenKind::Iterator).unwrap(), token());
    }

    #[test]
    fn garbage_and_tampering_are_refused() {
        let sealer = Sealer::new(b"key");
        let sealed = sealer.seal(&token());
        assert!(sealer.open("", TokenKind::Iterator).is_err());
        assert!(sealer.open("garbage!", TokenKind::Iterator).is_err());
        assert!(sealer.open("AAAA", TokenKind::Iterator).is_err());
        assert!(sealer.open(&"A".repeat(2000), TokenKind::Iterator).is_err());
        assert!(sealer.open(&sealed, TokenKind::ShardPage).is_err());
        assert!(Sealer::new(b"other").open(&sealed, TokenKind::Iterator).is_err());
        let mut bytes = STANDARD.decode(&sealed).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            let edited = STANDARD.encode(&bytes);
            assert!(sealer.open(&edited, TokenKind::Iterator).is_err(), "byte {i}");
            bytes[i] ^= 1;
        }
        let truncated = STANDARD.encode(&bytes[..bytes.len() - 1]);
        assert!(sealer.open(&truncated, TokenKind::Iterator).is_err());
    }
}
