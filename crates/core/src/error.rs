use switchboard_protocol::{ErrorCode, ProtocolError};

/// Why the core refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("text is {len} bytes, the limit is {max}")]
    TextTooLarge { len: usize, max: usize },
    #[error("{0}")]
    BadInput(String),
    /// The memory bound is reached and nothing can be evicted.
    #[error("{0}")]
    Full(String),
}

impl CoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::Protocol(err) => err.code(),
            CoreError::TextTooLarge { .. } => ErrorCode::TooLarge,
            CoreError::BadInput(_) => ErrorCode::BadFrame,
            CoreError::Full(_) => ErrorCode::Unavailable,
        }
    }
}
