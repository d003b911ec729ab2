//! The mlog binary protocol: length-prefixed frames carrying requests and responses.
//!
//! Layers, each pure (no I/O):
//! * [`codec`]: primitive encodings and the [`codec::Wire`] trait; bounded, panic-free decoding;
//! * [`frame`]: frame headers, API keys, frame delimiting against `max_frame_bytes`;
//! * [`error`]: stable error codes;
//! * [`messages`]: request and response bodies of every API.
//!
//! Invariant: decoding reads only bytes the peer sent and allocates at most in proportion to them;
//! "need more bytes" ([`frame::check_frame`] returning `Ok(None)`) is distinct from "these bytes are
//! wrong" (an error). `docs/protocol.md` is the specification.

pub mod codec;
pub mod error;
pub mod frame;
pub mod messages;

pub use codec::{DecodeError, RawBytes, Reader, Wire};
pub use error::ErrorCode;
pub use frame::{ApiKey, FrameError, RequestHeader, ResponseHeader};
