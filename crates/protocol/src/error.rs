use std::fmt;

/// The error codes of the spec (§3/§4), identical on every transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadFrame,
    InvalidRoom,
    TooLarge,
    RateLimited,
    Unauthorized,
    Forbidden,
    NotSubscribed,
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadFrame,
        ErrorCode::InvalidRoom,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotSubscribed,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// Inverse of [`ErrorCode::as_str`], for errors that crossed a wire.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Input that does not form valid protocol values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid room name {0:?}: must match ^[A-Za-z0-9_-]{{1,64}}$")]
    InvalidRoom(String),
    #[error("invalid cursor: {0}")]
    BadCursor(String),
    #[error("bad frame: {0}")]
    BadFrame(String),
    #[error("event does not decode: {0}")]
    BadEvent(String),
}

impl ProtocolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::InvalidRoom(_) => ErrorCode::InvalidRoom,
            ProtocolError::BadCursor(_)
            | ProtocolError::BadFrame(_)
            | ProtocolError::BadEvent(_) => ErrorCode::BadFrame,
        }
    }
}
