//! Client errors.

use mlog_wire::protocol::{DecodeError, ErrorCode, FrameError};

/// Result alias of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What went wrong talking to a broker.
///
/// ```no_run
/// # async fn example(admin: mlog_client::Admin) {
/// use mlog_client::{ClientError, ErrorCode};
/// match admin.create_topic("orders", 3, &[]).await {
///     Ok(()) => println!("created"),
///     Err(ClientError::Broker { code: ErrorCode::TopicAlreadyExists, .. }) => println!("already there"),
///     Err(e) if e.is_retriable() => println!("try again later: {e}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed or closed.
    #[error("connection to {addr}: {source}")]
    Io {
        /// The broker address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The broker answered with an error code.
    #[error("{code}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker {
        /// The code.
        code: ErrorCode,
        /// The broker's message, when it sent one.
        message: Option<String>,
    },
    /// The broker's answer could not be decoded, or did not match the request.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether retrying the same request (after a backoff or a metadata refresh) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Io { .. } => true,
            ClientError::Broker { code, .. } => code.is_retriable(),
            ClientError::Protocol(_) => false,
        }
    }

    pub(crate) fn broker(code: ErrorCode, message: Option<String>) -> Self {
        ClientError::Broker { code, message }
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}
