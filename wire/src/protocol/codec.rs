//! Primitive encodings of the mlog protocol and the [`Wire`] trait every message implements.
//!
//! All integers are big-endian. `string`: u16 length + UTF-8 bytes. `bytes`: u32 length + bytes.
//! `array<T>`: u32 count + items. `option<T>`: u8 0 (absent) or 1 followed by `T`.
//!
//! Decoding never panics, and a peer's counts cannot make it allocate beyond two bounds: every count
//! is checked against the bytes left before anything is reserved (an item takes at least its
//! `MIN_BYTES`), and a [`Reader`] decodes at most `max_items` array items in all (every array, nested
//! ones too). The first alone is not enough: a decoded item can take ~12x its smallest encoding (a
//! 2-byte empty string becomes a 24-byte `String`), so a 64 MiB frame of empty names would otherwise
//! decode into gigabytes.

use bytes::{BufMut, BytesMut};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside `field`.
    #[error("truncated {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// `field` holds a value the protocol does not allow.
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// The field being read.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Array items a [`Reader::new`] decodes in all before refusing the input.
pub const DEFAULT_MAX_ITEMS: usize = 1 << 20;

/// A cursor over input bytes; every read checks the length first.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    /// Array items this reader may still decode.
    items_left: usize,
}

impl<'a> Reader<'a> {
    /// Reads from `buf`, decoding at most [`DEFAULT_MAX_ITEMS`] array items in all.
    pub fn new(buf: &'a [u8]) -> Self {
        Self::with_max_items(buf, DEFAULT_MAX_ITEMS)
    }

    /// Reads from `buf`, decoding at most `max_items` array items in all.
    pub fn with_max_items(buf: &'a [u8], max_items: usize) -> Self {
        Reader {
            buf,
            items_left: max_items,
        }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// An array count, checked against the bytes left (each item takes at least `min_item_bytes`)
    /// and against the items this reader may still decode.
    pub fn count(
        &mut self,
        min_item_bytes: usize,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = u32::decode(self, field)? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.remaining() {
            return Err(DecodeError::Malformed {
                field,
                reason: "count larger than the bytes that follow",
            });
        }
        self.items_left = self
            .items_left
            .checked_sub(n)
            .ok_or(DecodeError::Malformed {
                field,
                reason: "more array items than one message may hold",
            })?;
        Ok(n)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed {
                field,
                reason: "trailing bytes",
            })
        }
    }
}

/// A type with a protocol encoding.
pub trait Wire<'a>: Sized {
    /// Smallest encoded size, used to bound array counts before allocating.
    const MIN_BYTES: usize;
    /// Appends the encoding to `out`.
    fn encode(&self, out: &mut BytesMut);
    /// Reads one value; `field` names it in errors.
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError>;
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl<'a> Wire<'a> for $t {
            const MIN_BYTES: usize = std::mem::size_of::<$t>();
            fn encode(&self, out: &mut BytesMut) {
                out.put_slice(&self.to_be_bytes());
            }
            fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
                r.array(field).map(<$t>::from_be_bytes)
            }
        }
    )*};
}
wire_int!(u8, i8, u16, i16, u32, i32, u64, i64);

impl<'a> Wire<'a> for bool {
    const MIN_BYTES: usize = 1;
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(u8::from(*self));
    }
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        match u8::decode(r, field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed {
                field,
                reason: "boolean other than 0 or 1",
            }),
        }
    }
}

impl<'a> Wire<'a> for String {
    const MIN_BYTES: usize = 2;
    fn encode(&self, out: &mut BytesMut) {
        self.as_str().encode(out);
    }
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        <&str>::decode(r, field).map(str::to_owned)
    }
}

impl<'a> Wire<'a> for &'a str {
    const MIN_BYTES: usize = 2;
    /// Strings longer than `u16::MAX` bytes are cut at the last character boundary that fits
    /// (names and messages are validated far below that before they get here).
    fn encode(&self, out: &mut BytesMut) {
        let mut end = self.len().min(u16::MAX as usize);
        while !self.is_char_boundary(end) {
            end -= 1;
        }
        out.put_u16(end as u16);
        out.put_slice(&self.as_bytes()[..end]);
    }
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let len = u16::decode(r, field)? as usize;
        std::str::from_utf8(r.take(len, field)?).map_err(|_| DecodeError::Malformed {
            field,
            reason: "not UTF-8",
        })
    }
}

/// Raw bytes: u32 length + bytes, borrowed from the input when decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawBytes<'a>(pub &'a [u8]);

impl<'a> Wire<'a> for RawBytes<'a> {
    const MIN_BYTES: usize = 4;
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.0.len() as u32);
        out.put_slice(self.0);
    }
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let len = u32::decode(r, field)? as usize;
        r.take(len, field).map(RawBytes)
    }
}

impl<'a, T: Wire<'a>> Wire<'a> for Vec<T> {
    const MIN_BYTES: usize = 4;
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.len() as u32);
        for item in self {
            item.encode(out);
        }
    }
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        let n = r.count(T::MIN_BYTES, field)?;
        (0..n).map(|_| T::decode(r, field)).collect()
    }
}

impl<'a, T: Wire<'a>> Wire<'a> for Option<T> {
    const MIN_BYTES: usize = 1;
    fn encode(&self, out: &mut BytesMut) {
        match self {
            None => out.put_u8(0),
            Some(v) => {
                out.put_u8(1);
                v.encode(out);
            }
        }
    }
    fn decode(r: &mut Reader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        match u8::decode(r, field)? {
            0 => Ok(None),
            1 => T::decode(r, field).map(Some),
            _ => Err(DecodeError::Malformed {
                field,
                reason: "option tag other than 0 or 1",
            }),
        }
    }
}

/// Declares a protocol struct whose encoding is its fields, in order. A struct that borrows from
/// the input takes the lifetime `'a`.
#[macro_export]
macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $name:ident<'a> { $($fields:tt)* }) => {
        $crate::wire_struct!(@define [$(#[$meta])*] $name [<'a>] { $($fields)* });
    };
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $crate::wire_struct!(@define [$(#[$meta])*] $name [] { $($fields)* });
    };
    (
        @define [$($meta:tt)*] $name:ident [$($lifetime:tt)*] {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $($meta)*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name $($lifetime)* {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        impl<'a> $crate::protocol::codec::Wire<'a> for $name $($lifetime)* {
            const MIN_BYTES: usize = 0 $( + <$ty as $crate::protocol::codec::Wire<'a>>::MIN_BYTES )*;
            #[allow(unused_variables)]
            fn encode(&self, out: &mut bytes::BytesMut) {
                $( $crate::protocol::codec::Wire::encode(&self.$field, out); )*
            }
            #[allow(unused_variables)]
            fn decode(
                r: &mut $crate::protocol::codec::Reader<'a>,
                _field: &'static str,
            ) -> Result<Self, $crate::protocol::codec::DecodeError> {
                Ok($name {
                    $( $field: <$ty as $crate::protocol::codec::Wire<'a>>::decode(
                        r,
                        concat!(stringify!($name), ".", stringify!($field)),
                    )? ),*
                })
            }
        }
    };
}
