//! A reader for the planned path that knows the layout it expects.
//!
//! A [`Plan`] knows a record's keys, in order. [`scan`] walks the payload's bytes once, comparing each key with the
//! plan's and reading each value as the plain scalar it most often is: a string without escapes, a number, `true`
//! or `false`. Anything else (an escape, `null`, a nested value, a key out of the plan, an integer of 19 digits or
//! more, a number out of range, bytes that are not JSON) makes it give up, and the record takes the serde path
//! ([`super::Planned`]), which decides exactly as before. So this reader only has to be right about what it takes:
//!
//! - Strings are the bytes between the quotes: with no backslash and no control character, JSON text is the
//!   string itself once it is checked as UTF-8. Everything else the scanner takes is ASCII it matched (keys
//!   equal to the plan's, numbers, punctuation, whitespace), so a payload it reads is UTF-8 as a whole.
//! - Integers of at most 18 digits are exact in an `i64`; `-0` is the double `-0.0`, as `serde_json` reads it.
//! - Numbers with a fraction or an exponent are parsed by the standard library, which rounds correctly, as
//!   `serde_json` does with its `float_roundtrip` feature (enabled in the workspace for this reason); those of at
//!   most 15 digits without an exponent by one exact division, which gives the same correctly rounded double.
//! - Keys are compared as raw bytes only when the plan's keys need no escaping ([`plain_key`]).

use super::{Cell, Json, Plan, PlannedFields, Target, column_cell};

/// Whether a key's JSON text is its own bytes (no character JSON must escape).
pub(super) fn plain_key(key: &str) -> bool {
    key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// A plain key as compact JSON writes it before its value: `"key":`.
pub(super) fn key_token(key: &str) -> Box<[u8]> {
    [b"\"", key.as_bytes(), b"\":"].concat().into()
}

/// Read a payload laid out as `plan` into `cells` (by field position) and `out`; `None` where the serde path must
/// decide (then `cells` and `out` may hold part of the record and must be reset).
pub(super) fn scan<'r>(
    plan: &Plan,
    text: &'r [u8],
    value_bytes_max: usize,
    cells: &mut [Option<Cell<'r>>],
    out: &mut PlannedFields<'r>,
) -> Option<()> {
    let mut s = Scanner { text, at: 0 };
    if plan.keys.is_empty() {
        s.punct(b'{')?;
    }
    for (position, (key, token)) in plan.keys.iter().zip(&plan.key_tokens).enumerate() {
        let before = if position == 0 { b'{' } else { b',' };
        // Compact JSON (what most devices send) in one comparison, else token by token.
        if s.rest()
            .split_first()
            .is_some_and(|(b, rest)| *b == before && rest.starts_with(token))
        {
            s.at += 1 + token.len();
        } else {
            s.punct(before)?;
            s.key(key)?;
            s.punct(b':')?;
        }
        let value = s.scalar()?;
        match plan.targets[position] {
            // A column's value straight into its cell (the event-time field also gives the event time).
            Target::Column(_, ty) if plan.event_field != Some(position) => {
                cells[position] = Some(column_cell(value, ty, value_bytes_max)?);
            }
            _ => plan.take(position, value, value_bytes_max, cells, out)?,
        }
    }
    s.punct(b'}')?;
    s.skip_whitespace();
    (s.at == text.len()).then_some(())
}

/// Where a JSON string's text ends: the position of its first quote, backslash or control character, if any.
/// Eight bytes at a time: a byte of a word is flagged when it equals `"` or `\\` or is below 0x20 (bytes of
/// 0x80 and up never are); a borrow can flag bytes above a flagged one, never below, so the lowest flag is right.
fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x;
    let mut words = bytes.chunks_exact(8);
    for (i, word) in words.by_ref().enumerate() {
        let x = u64::from_le_bytes(word.try_into().ok()?);
        let flags = (zero_in(x ^ (ONES * u64::from(b'"')))
            | zero_in(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGHS;
        if flags != 0 {
            return Some(i * 8 + flags.trailing_zeros() as usize / 8);
        }
    }
    let tail = words.remainder();
    let at = bytes.len() - tail.len();
    tail.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| at + p)
}

/// 10^k for the fraction digits of [`Scanner::number`]'s fast path, all exact doubles.
const POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A position in one payload.
struct Scanner<'r> {
    text: &'r [u8],
    at: usize,
}

impl<'r> Scanner<'r> {
    fn byte(&self, i: usize) -> Option<u8> {
        self.text.get(i).copied()
    }

    fn rest(&self) -> &'r [u8] {
        self.text.get(self.at..).unwrap_or_default()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.byte(self.at) {
            self.at += 1;
        }
    }

    /// The byte `b`, after any whitespace.
    fn punct(&mut self, b: u8) -> Option<()> {
        self.skip_whitespace();
        (self.byte(self.at)? == b).then(|| self.at += 1)
    }

    /// The quoted `key` (a [`plain_key`]), after any whitespace.
    fn key(&mut self, key: &str) -> Option<()> {
        self.skip_whitespace();
        let end = self.at + key.len() + 2;
        let quoted = self.text.get(self.at..end)?;
        let (open, rest) = quoted.split_first()?;
        let (close, inner) = rest.split_last()?;
        (*open == b'"' && *close == b'"' && inner == key.as_bytes()).then(|| self.at = end)
    }

    /// A string, number or boolean, after any whitespace.
    fn scalar(&mut self) -> Option<Json<'r>> {
        self.skip_whitespace();
        match self.byte(self.at)? {
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.word("true", Json::Bool(true)),
            b'f' => self.word("false", Json::Bool(false)),
            _ => None,
        }
    }

    fn word(&mut self, word: &str, value: Json<'r>) -> Option<Json<'r>> {
        let end = self.at + word.len();
        (self.text.get(self.at..end)? == word.as_bytes()).then(|| {
            self.at = end;
            value
        })
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<Json<'r>> {
        let start = self.at + 1;
        let rest = self.text.get(start..)?;
        let len = string_end(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        Some(Json::Str(std::str::from_utf8(&rest[..len]).ok()?.into()))
    }

    fn digits(&mut self) -> usize {
        let n = self.rest().iter().take_while(|b| b.is_ascii_digit()).count();
        self.at += n;
        n
    }

    /// A number by the JSON grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<Json<'r>> {
        let start = self.at;
        let negative = self.byte(self.at) == Some(b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        // The integer part's value as it is read (wrapping: only used when it has at most 18 digits).
        let (mut magnitude, mut int_digits) = (0i64, 0);
        for &d in self.rest().iter().take_while(|b| b.is_ascii_digit()) {
            magnitude = magnitude.wrapping_mul(10).wrapping_add(i64::from(d - b'0'));
            int_digits += 1;
        }
        self.at += int_digits;
        if int_digits == 0 || (int_digits > 1 && self.byte(int_start) == Some(b'0')) {
            return None;
        }
        let mut fractional = false;
        if self.byte(self.at) == Some(b'.') {
            self.at += 1;
            let fraction_start = self.at;
            let fraction_digits = self.digits();
            if fraction_digits == 0 {
                return None;
            }
            fractional = true;
            // Fifteen digits or fewer and no exponent: the digits are an integer below 2^53 and 10^k is exact, so
            // one division rounds correctly, as the full parse would (Clinger's fast path).
            if int_digits + fraction_digits <= 15 && !matches!(self.byte(self.at), Some(b'e' | b'E')) {
                let digits = self.text[fraction_start..self.at].iter();
                let mantissa = digits.fold(magnitude, |v, d| v * 10 + i64::from(d - b'0'));
                let f = mantissa as f64 / POWERS_OF_TEN[fraction_digits];
                return Some(Json::Float(if negative { -f } else { f }));
            }
        }
        if let Some(b'e' | b'E') = self.byte(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.byte(self.at) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            fractional = true;
        }
        if fractional {
            let f: f64 = std::str::from_utf8(&self.text[start..self.at])
                .ok()?
                .parse()
                .ok()?;
            return f.is_finite().then_some(Json::Float(f));
        }
        if int_digits > 18 {
            return None;
        }
        Some(match (negative, magnitude) {
            (true, 0) => Json::Float(-0.0),
            (true, m) => Json::Int(-m),
            (false, m) => Json::Int(m),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the serde path's visitor makes of the same text.
    fn serde_scalar(text: &str) -> Option<Json<'_>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = <Json as serde::Deserialize>::deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(v)
    }

    fn same(a: &Json, b: &Json) -> bool {
        match (a, b) {
            (Json::Float(x), Json::Float(y)) => x.to_bits() == y.to_bits(),
            (Json::Int(x), Json::Int(y)) => x == y,
            (Json::Bool(x), Json::Bool(y)) => x == y,
            (Json::Str(x), Json::Str(y)) => x == y,
            _ => false,
        }
    }

    /// Every value the scanner takes, it reads as `serde_json` does (bit for bit for doubles), and it gives up on
    /// what it must not take. Numbers come from a seeded generator over the grammar's corners.
    #[test]
    fn scalars_read_as_serde_json_reads_them() {
        use rand::{Rng, SeedableRng};
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "-0.0",
            "0.0",
            "1",
            "-1",
            "17",
            "123456789012345678",
            "-123456789012345678",
            "1234567890123456789",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551616",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "1E5",
            "1e-5",
            "2.5e-3",
            "1e308",
            "1e309",
            "-1e309",
            "4.9e-324",
            "2e-324",
            "29.912299999999998",
            "-0.5",
            "0.3",
            "-1013.25",
            "12345678901234.5",
            "123456789012345.6",
            "9.999999999999999",
            "0.000000000000001",
            "1.5e2",
            "20.0123",
            "0.1",
            "1013.25",
            "\"\"",
            "\"plain\"",
            "\"a\\\"b\"",
            "\"tab\tin\"",
            "\"\u{e9}t\u{e9}\"",
            "\"\\u00e9\"",
            "true",
            "false",
            "tru",
            "falsey",
            "null",
            "[1]",
            "{}",
            "\"unterminated",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let digits = |rng: &mut rand::rngs::StdRng, n: usize| -> String {
                (0..n)
                    .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                    .collect()
            };
            let mut s = String::new();
            if rng.random_bool(0.3) {
                s.push('-');
            }
            let n = rng.random_range(1..21);
            s.push_str(&digits(&mut rng, n));
            if rng.random_bool(0.6) {
                s.push('.');
                let n = rng.random_range(1..20);
                s.push_str(&digits(&mut rng, n));
            }
            if rng.random_bool(0.2) {
                s.push(['e', 'E'][rng.random_range(0..2)]);
                if rng.random_bool(0.5) {
                    s.push(['+', '-'][rng.random_range(0..2)]);
                }
                let n = rng.random_range(1..4);
                s.push_str(&digits(&mut rng, n));
            }
            cases.push(s);
            // Doubles as a device's JSON library prints them.
            let f = f64::from_bits(rng.random::<u64>());
            if f.is_finite() {
                cases.push(serde_json::to_string(&f).unwrap());
            }
        }
        let mut taken = 0;
        for case in &cases {
            let mut s = Scanner {
                text: case.as_bytes(),
                at: 0,
            };
            let scanned = s.scalar().filter(|_| s.at == case.len());
            match (scanned, serde_scalar(case)) {
                (Some(a), Some(b)) => {
                    assert!(same(&a, &b), "{case}: scanned {a:?}, serde {b:?}");
                    taken += 1;
                }
                (Some(a), None) => panic!("{case}: scanned {a:?}, which serde refuses"),
                (None, _) => {}
            }
        }
        assert!(taken > cases.len() / 2, "{taken} of {} taken", cases.len());
        // What the scanner gives up on, by kind.
        for refused in [
            "01",
            "-",
            "1.",
            "1e",
            "1e309",
            "null",
            "[1]",
            "\"a\\\"b\"",
            "\"tab\tin\"",
            "tru",
        ] {
            let mut s = Scanner {
                text: refused.as_bytes(),
                at: 0,
            };
            assert!(
                s.scalar().filter(|_| s.at == refused.len()).is_none(),
                "{refused}"
            );
        }
    }

    /// The word-at-a-time search finds what a byte-by-byte one does, for bytes of every kind at every offset.
    #[test]
    fn string_ends_are_found_a_word_at_a_time() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let kinds = [
            b'a', b'"', b'\\', 0x1f, 0x00, 0x20, 0x7f, 0x80, 0xc3, 0xff, b'!', b'#', b'[', b']',
        ];
        for _ in 0..50_000 {
            let len = rng.random_range(0..40);
            // Mostly plain text, with a rare byte of another kind.
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.9) {
                        b'x'
                    } else {
                        kinds[rng.random_range(0..kinds.len())]
                    }
                })
                .collect();
            let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(string_end(&bytes), naive, "{bytes:?}");
        }
    }

    #[test]
    fn keys_are_compared_as_bytes_only_when_plain() {
        assert!(plain_key("temp") && plain_key("t\u{e9}") && plain_key(""));
        assert!(!plain_key("a\"b") && !plain_key("a\\") && !plain_key("a\nb"));
        let mut s = Scanner {
            text: br#"  "temp" :"#,
            at: 0,
        };
        assert!(s.key("tem").is_none());
        assert!(s.key("temp").is_some() && s.punct(b':').is_some());
    }
}
