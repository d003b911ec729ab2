//! Kafka's zig-zag variable-length integers.
//!
//! Inside a v2 record Kafka writes lengths, deltas and counts as *varints*
//! (32-bit) and *varlongs* (64-bit), exactly like protobuf's `sint32` /
//! `sint64`:
//!
//! 1. the signed value is zig-zag mapped to an unsigned one so that small
//!    magnitudes of either sign stay small (`0 → 0, -1 → 1, 1 → 2, -2 → 3`, …);
//! 2. the unsigned value is written as LEB128: seven bits per byte, least
//!    significant group first, with the high bit set on every byte but the last.
//!
//! # Invariants
//!
//! * The encoders always produce the shortest encoding; `varint_len(v)` /
//!   `varlong_len(v)` is exactly the number of bytes `put_varint(v)` /
//!   `put_varlong(v)` appends.
//! * The decoders are total: for any input they return a value or a
//!   [`VarintError`], never panic and never read past the slice.
//! * Decoding is strict about width: a varint may span at most
//!   [`MAX_VARINT_LEN`] bytes (varlong: [`MAX_VARLONG_LEN`]) and its final byte
//!   may not carry bits beyond bit 31 (varlong: bit 63); otherwise the result
//!   is [`VarintError::Overflow`]. Running out of input before the final byte
//!   is [`VarintError::Truncated`].
//! * Non-minimal encodings that stay within those limits (e.g. `80 00` for
//!   zero) are accepted, as Kafka's own decoder accepts them.

use thiserror::Error;

/// The longest encoding of a 32-bit varint, in bytes.
pub const MAX_VARINT_LEN: usize = 5;

/// The longest encoding of a 64-bit varlong, in bytes.
pub const MAX_VARLONG_LEN: usize = 10;

/// Why a varint or varlong could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VarintError {
    /// The input ended before the final byte (the one with the high bit clear).
    #[error("varint truncated: the input ended before its final byte")]
    Truncated,
    /// The encoding is longer than the integer type allows, or its final byte
    /// sets bits beyond the type's width.
    #[error("varint overflow: the encoding is too long or sets bits beyond the integer's width")]
    Overflow,
}

/// Appends the zig-zag varint encoding of `v` (1 to 5 bytes) to `buf`.
pub fn put_varint(buf: &mut Vec<u8>, v: i32) {
    put_unsigned(buf, u64::from(zigzag32(v)));
}

/// Appends the zig-zag varlong encoding of `v` (1 to 10 bytes) to `buf`.
pub fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    put_unsigned(buf, zigzag64(v));
}

/// The number of bytes [`put_varint`] appends for `v`.
pub fn varint_len(v: i32) -> usize {
    unsigned_len(u64::from(zigzag32(v)))
}

/// The number of bytes [`put_varlong`] appends for `v`.
pub fn varlong_len(v: i64) -> usize {
    unsigned_len(zigzag64(v))
}

/// Decodes a zig-zag varint from the start of `buf`.
///
/// Returns the value and the number of bytes it occupied; bytes after it are
/// ignored.
///
/// # Errors
///
/// [`VarintError::Truncated`] if `buf` ends before the varint does;
/// [`VarintError::Overflow`] if the encoding is longer than
/// [`MAX_VARINT_LEN`] bytes or does not fit in 32 bits.
pub fn get_varint(buf: &[u8]) -> Result<(i32, usize), VarintError> {
    let (raw, len) = get_unsigned(buf, MAX_VARINT_LEN, 32)?;
    let raw = u32::try_from(raw).map_err(|_| VarintError::Overflow)?;
    Ok((unzigzag32(raw), len))
}

/// Decodes a zig-zag varlong from the start of `buf`.
///
/// Returns the value and the number of bytes it occupied; bytes after it are
/// ignored.
///
/// # Errors
///
/// [`VarintError::Truncated`] if `buf` ends before the varlong does;
/// [`VarintError::Overflow`] if the encoding is longer than
/// [`MAX_VARLONG_LEN`] bytes or does not fit in 64 bits.
pub fn get_varlong(buf: &[u8]) -> Result<(i64, usize), VarintError> {
    let (raw, len) = get_unsigned(buf, MAX_VARLONG_LEN, 64)?;
    Ok((unzigzag64(raw), len))
}

/// Maps a signed 32-bit value to an unsigned one, small magnitudes first.
const fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

/// Inverse of [`zigzag32`].
const fn unzigzag32(u: u32) -> i32 {
    ((u >> 1) as i32) ^ -((u & 1) as i32)
}

/// Maps a signed 64-bit value to an unsigned one, small magnitudes first.
const fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag64`].
const fn unzigzag64(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Appends the unsigned LEB128 encoding of `value`.
fn put_unsigned(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// The length of the unsigned LEB128 encoding of `value`.
fn unsigned_len(value: u64) -> usize {
    let significant_bits = u64::BITS - value.leading_zeros();
    // Zero still takes one byte.
    significant_bits.div_ceil(7).max(1) as usize
}

/// Decodes unsigned LEB128 of at most `max_len` bytes holding at most `width`
/// bits from the start of `buf`.
fn get_unsigned(buf: &[u8], max_len: usize, width: u32) -> Result<(u64, usize), VarintError> {
    let mut value = 0u64;
    let mut shift = 0u32;
    for (i, &byte) in buf.iter().take(max_len).enumerate() {
        let group = u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            // The final byte may only carry the bits still missing from `width`.
            // `shift <= 7 * (max_len - 1) <= width`, so this cannot underflow.
            let room = width - shift;
            if room < 7 && group >> room != 0 {
                return Err(VarintError::Overflow);
            }
            return Ok((value | (group << shift), i + 1));
        }
        value |= group << shift;
        shift += 7;
    }
    if buf.len() >= max_len {
        // `max_len` bytes, every one with the continuation bit set.
        Err(VarintError::Overflow)
    } else {
        Err(VarintError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn enc32(v: i32) -> Vec<u8> {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        buf
    }

    fn enc64(v: i64) -> Vec<u8> {
        let mut buf = Vec::new();
        put_varlong(&mut buf, v);
        buf
    }

    #[test]
    fn known_varint_encodings() {
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (-65, &[0x81, 0x01]),
            (300, &[0xd8, 0x04]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, bytes) in cases {
            assert_eq!(enc32(value), bytes, "encoding {value}");
            assert_eq!(varint_len(value), bytes.len(), "length of {value}");
            assert_eq!(
                get_varint(bytes),
                Ok((value, bytes.len())),
                "decoding {value}"
            );
        }
    }

    #[test]
    fn known_varlong_encodings() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (64, &[0x80, 0x01]),
            (
                i64::MAX,
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
            (
                i64::MIN,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for &(value, bytes) in cases {
            assert_eq!(enc64(value), bytes, "encoding {value}");
            assert_eq!(varlong_len(value), bytes.len(), "length of {value}");
            assert_eq!(
                get_varlong(bytes),
                Ok((value, bytes.len())),
                "decoding {value}"
            );
        }
    }

    #[test]
    fn decoding_ignores_trailing_bytes() {
        assert_eq!(get_varint(&[0x02, 0xff, 0xff]), Ok((1, 1)));
        assert_eq!(get_varlong(&[0x80, 0x01, 0x00]), Ok((64, 2)));
    }

    #[test]
    fn non_minimal_encodings_are_accepted() {
        assert_eq!(get_varint(&[0x80, 0x00]), Ok((0, 2)));
        assert_eq!(get_varint(&[0x82, 0x80, 0x80, 0x80, 0x00]), Ok((1, 5)));
        assert_eq!(get_varlong(&[0x80, 0x80, 0x00]), Ok((0, 3)));
    }

    #[test]
    fn truncated_inputs() {
        assert_eq!(get_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(get_varint(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(
            get_varint(&[0xff, 0xff, 0xff, 0xff]),
            Err(VarintError::Truncated)
        );
        assert_eq!(get_varlong(&[]), Err(VarintError::Truncated));
        assert_eq!(get_varlong(&[0x80; 9]), Err(VarintError::Truncated));
    }

    #[test]
    fn overlong_inputs_overflow() {
        // Five continuation bytes: a sixth byte would be needed.
        assert_eq!(get_varint(&[0x80; 5]), Err(VarintError::Overflow));
        assert_eq!(
            get_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(VarintError::Overflow)
        );
        assert_eq!(get_varlong(&[0x80; 10]), Err(VarintError::Overflow));
        assert_eq!(get_varlong(&[0x80; 11]), Err(VarintError::Overflow));
    }

    #[test]
    fn bits_beyond_the_width_overflow() {
        // Fifth byte may only use its low 4 bits (bits 28..32).
        assert_eq!(
            get_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Err(VarintError::Overflow)
        );
        assert_eq!(
            get_varint(&[0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(VarintError::Overflow)
        );
        // Tenth byte may only use its lowest bit (bit 63).
        let mut long = [0x80u8; 10];
        long[9] = 0x02;
        assert_eq!(get_varlong(&long), Err(VarintError::Overflow));
        // A valid varlong that is too wide for a varint.
        assert_eq!(
            get_varint(&enc64(i64::from(i32::MAX) + 1)),
            Err(VarintError::Overflow)
        );
    }

    proptest! {
        #[test]
        fn varint_round_trips(v in any::<i32>(), tail in vec(any::<u8>(), 0..4)) {
            let mut buf = enc32(v);
            prop_assert_eq!(buf.len(), varint_len(v));
            prop_assert!(buf.len() <= MAX_VARINT_LEN);
            let len = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(get_varint(&buf), Ok((v, len)));
        }

        #[test]
        fn varlong_round_trips(v in any::<i64>(), tail in vec(any::<u8>(), 0..4)) {
            let mut buf = enc64(v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            prop_assert!(buf.len() <= MAX_VARLONG_LEN);
            let len = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(get_varlong(&buf), Ok((v, len)));
        }

        #[test]
        fn every_i32_is_a_valid_varlong(v in any::<i32>()) {
            let buf = enc32(v);
            prop_assert_eq!(get_varlong(&buf), Ok((i64::from(v), buf.len())));
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in vec(any::<u8>(), 0..16)) {
            if let Ok((v, len)) = get_varint(&buf) {
                prop_assert!((1..=buf.len().min(MAX_VARINT_LEN)).contains(&len));
                prop_assert_eq!(get_varint(&buf[..len]), Ok((v, len)));
                prop_assert!(varint_len(v) <= len);
            }
            if let Ok((v, len)) = get_varlong(&buf) {
                prop_assert!((1..=buf.len().min(MAX_VARLONG_LEN)).contains(&len));
                prop_assert_eq!(get_varlong(&buf[..len]), Ok((v, len)));
                prop_assert!(varlong_len(v) <= len);
            }
        }
    }
}
