//! Strict text encodings for keys, signatures and hashes.
//!
//! Every decoder here accepts exactly one spelling of a value (lowercase, no padding, no
//! separators, zero padding bits), so that a value and its text are one-to-one: a flipped bit
//! in a signed record's text can never decode to the same bytes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The z-base-32 alphabet (the one pkarr uses for ed25519 keys, so node ids can be DHT keys).
const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Each ASCII character's value in [`ZBASE32`]; 0xff for characters outside it.
const ZBASE32_INDEX: [u8; 128] = {
    let mut t = [0xffu8; 128];
    let mut i = 0;
    while i < 32 {
        t[ZBASE32[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Why a text did not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The text has the wrong number of characters for the expected value.
    #[error("expected {expected} characters, found {found}")]
    Length {
        /// Characters the value needs.
        expected: usize,
        /// Characters given.
        found: usize,
    },
    /// A character outside the alphabet (or uppercase where only lowercase is allowed).
    #[error("character {0:?} is not allowed here")]
    Character(char),
    /// The unused low bits of the last character are not zero (a non-canonical spelling).
    #[error("the last character is not the canonical one")]
    Padding,
}

/// Encodes bytes as z-base-32, without padding.
pub fn zbase32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ZBASE32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ZBASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Number of z-base-32 characters for `n` bytes.
pub const fn zbase32_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Decodes exactly `N` bytes from canonical z-base-32.
pub fn zbase32_decode<const N: usize>(text: &str) -> Result<[u8; N], DecodeError> {
    let expected = zbase32_len(N);
    if text.len() != expected {
        return Err(DecodeError::Length { expected, found: text.chars().count() });
    }
    let mut out = [0u8; N];
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut i = 0;
    for c in text.chars() {
        let v = u32::from(*ZBASE32_INDEX.get(c as usize).filter(|&&v| v != 0xff).ok_or(DecodeError::Character(c))?);
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            if i < N {
                out[i] = (acc >> bits) as u8;
            }
            i += 1;
        }
    }
    if acc & ((1 << bits) - 1) != 0 {
        return Err(DecodeError::Padding);
    }
    Ok(out)
}

/// Encodes bytes as lowercase hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Decodes exactly `N` bytes from lowercase hex.
pub fn hex_decode<const N: usize>(text: &str) -> Result<[u8; N], DecodeError> {
    if text.len() != N * 2 {
        return Err(DecodeError::Length { expected: N * 2, found: text.chars().count() });
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(DecodeError::Character(char::from(c))),
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(out)
}

/// The schema version every JSON file carries.
pub const SCHEMA_VERSION: u64 = 1;

/// The `"schema": 1` field of every state file and record file: writes 1, refuses any other
/// value on read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schema;

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(SCHEMA_VERSION)
    }
}

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == SCHEMA_VERSION {
            Ok(Schema)
        } else {
            Err(serde::de::Error::custom(format_args!(
                "schema {v} is not one this version reads (it reads schema {SCHEMA_VERSION})"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zbase32_known_value() {
        // The z-base-32 spec's own example: 0xF0 0xBF 0xC7 -> "6n9hq".
        assert_eq!(zbase32_encode(&[0xf0, 0xbf, 0xc7]), "6n9hq");
        assert_eq!(zbase32_decode::<3>("6n9hq"), Ok([0xf0, 0xbf, 0xc7]));
    }

    #[test]
    fn non_canonical_spellings_are_refused() {
        // 24 bits take 5 characters; the last one's low bit is padding: 'q' is 01110, 'x' 01111.
        assert_eq!(zbase32_decode::<3>("6n9hx"), Err(DecodeError::Padding));
        assert_eq!(zbase32_decode::<3>("6N9HQ"), Err(DecodeError::Character('N')));
        assert_eq!(hex_decode::<1>("AB"), Err(DecodeError::Character('A')));
        assert!(matches!(hex_decode::<1>("abc"), Err(DecodeError::Length { .. })));
    }

    proptest! {
        #[test]
        fn zbase32_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let text = zbase32_encode(&bytes);
            prop_assert_eq!(text.len(), zbase32_len(32));
            prop_assert_eq!(zbase32_decode::<32>(&text), Ok(bytes));
        }

        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            prop_assert_eq!(hex_decode::<32>(&hex_encode(&bytes)), Ok(bytes));
        }

        #[test]
        fn zbase32_decoder_never_panics(text in "\\PC{0,60}") {
            let _ = zbase32_decode::<32>(&text);
        }
    }
}

/// Serde helpers for a 32-byte value written as 64 lowercase hex digits:
/// `#[serde(with = "crate::protocol::encoding::hex32")]`.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the value as hex.
    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex_encode(bytes))
    }

    /// Reads the value from hex, strictly.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        super::hex_decode::<32>(&text).map_err(serde::de::Error::custom)
    }
}
