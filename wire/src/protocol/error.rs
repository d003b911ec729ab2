//! Error codes of the mlog protocol: stable numbers on the wire, never reused.

/// An error code carried in responses (`0` is success).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// An unexpected server error; the message says more.
    Unknown = 1,
    /// The request could not be decoded (the connection stays open when framing is intact).
    InvalidRequest = 2,
    /// The API key is not served.
    UnsupportedApi = 3,
    /// The API version is outside the served range (see ApiVersions).
    UnsupportedVersion = 4,
    /// A record batch failed validation (length, magic, CRC, records).
    CorruptBatch = 5,
    /// The topic or partition does not exist.
    UnknownTopicOrPartition = 6,
    /// The fetch or list offset is outside `[log start, log end]`.
    OffsetOutOfRange = 7,
    /// A batch (or request) is larger than the configured maximum.
    MessageTooLarge = 8,
    /// A topic with that name exists.
    TopicAlreadyExists = 9,
    /// The topic name is not valid.
    InvalidTopic = 10,
    /// The partition count is not valid.
    InvalidPartitions = 11,
    /// A topic configuration key or value is not valid.
    InvalidConfig = 12,
    /// The acks value is not one of 0, 1, -1.
    InvalidAcks = 13,
    /// The request did not complete within its timeout.
    RequestTimedOut = 14,
    /// The storage failed (I/O error, disk full); nothing was acknowledged for this partition.
    StorageError = 15,
    /// The broker is shutting down; retry elsewhere or later.
    ShuttingDown = 16,
    /// The request was made against stale metadata; refresh it and retry.
    StaleMetadata = 17,
    /// The consumer group name is not valid.
    InvalidGroup = 18,
    /// An idempotent producer's batch is neither its next one nor one of its last stored ones (a
    /// stale resend); it was not stored.
    OutOfOrderSequence = 19,
    /// An idempotent producer's batch carries an epoch older than the producer's newest.
    ProducerFenced = 20,
    /// A committed offset's metadata is longer than the broker stores (4096 bytes).
    OffsetMetadataTooLarge = 21,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::None,
        ErrorCode::Unknown,
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedApi,
        ErrorCode::UnsupportedVersion,
        ErrorCode::CorruptBatch,
        ErrorCode::UnknownTopicOrPartition,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::MessageTooLarge,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidPartitions,
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidAcks,
        ErrorCode::RequestTimedOut,
        ErrorCode::StorageError,
        ErrorCode::ShuttingDown,
        ErrorCode::StaleMetadata,
        ErrorCode::InvalidGroup,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::ProducerFenced,
        ErrorCode::OffsetMetadataTooLarge,
    ];

    /// The code for a number; numbers this version does not know map to `Unknown`.
    pub fn from_i16(code: i16) -> ErrorCode {
        usize::try_from(code)
            .ok()
            .and_then(|i| ErrorCode::ALL.get(i).copied())
            .unwrap_or(ErrorCode::Unknown)
    }

    /// Whether a client may retry the same request unchanged (after a backoff or a metadata refresh).
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::RequestTimedOut | ErrorCode::ShuttingDown | ErrorCode::StaleMetadata
        )
    }

    /// A short description.
    pub fn description(self) -> &'static str {
        match self {
            ErrorCode::None => "success",
            ErrorCode::Unknown => "unexpected server error",
            ErrorCode::InvalidRequest => "the request could not be decoded",
            ErrorCode::UnsupportedApi => "unsupported API",
            ErrorCode::UnsupportedVersion => "unsupported API version",
            ErrorCode::CorruptBatch => "record batch failed validation",
            ErrorCode::UnknownTopicOrPartition => "unknown topic or partition",
            ErrorCode::OffsetOutOfRange => "offset out of range",
            ErrorCode::MessageTooLarge => "message too large",
            ErrorCode::TopicAlreadyExists => "topic already exists",
            ErrorCode::InvalidTopic => "invalid topic name",
            ErrorCode::InvalidPartitions => "invalid partition count",
            ErrorCode::InvalidConfig => "invalid topic configuration",
            ErrorCode::InvalidAcks => "invalid acks",
            ErrorCode::RequestTimedOut => "request timed out",
            ErrorCode::StorageError => "storage error",
            ErrorCode::ShuttingDown => "broker shutting down",
            ErrorCode::StaleMetadata => "stale metadata",
            ErrorCode::InvalidGroup => "invalid group name",
            ErrorCode::OutOfOrderSequence => "out of order sequence number",
            ErrorCode::ProducerFenced => "producer epoch fenced",
            ErrorCode::OffsetMetadataTooLarge => "offset metadata too large",
        }
    }
}

impl<'a> super::codec::Wire<'a> for ErrorCode {
    const MIN_BYTES: usize = 2;
    fn encode(&self, out: &mut bytes::BytesMut) {
        (*self as i16).encode(out);
    }
    fn decode(
        r: &mut super::codec::Reader<'a>,
        field: &'static str,
    ) -> Result<Self, super::codec::DecodeError> {
        i16::decode(r, field).map(ErrorCode::from_i16)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.description(), *self as i16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_their_index_and_round_trip() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as i16 as usize, i);
            assert_eq!(ErrorCode::from_i16(*code as i16), *code);
        }
        assert_eq!(ErrorCode::from_i16(-5), ErrorCode::Unknown);
        assert_eq!(ErrorCode::from_i16(999), ErrorCode::Unknown);
    }
}
