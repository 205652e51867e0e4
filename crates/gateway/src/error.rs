use switchboard_auth::AuthError;
use switchboard_bus::BusError;
use switchboard_protocol::{ErrorCode, ProtocolError};

/// A refused client request, on any transport. Each transport maps
/// [`GatewayError::code`] to its own wire form in exactly one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{1}")]
    Refused(ErrorCode, String),
}

impl GatewayError {
    pub fn code(&self) -> ErrorCode {
        match self {
            GatewayError::Protocol(err) => err.code(),
            GatewayError::Bus(err) => err.code(),
            GatewayError::Auth(err) => err.code(),
            GatewayError::Refused(code, _) => *code,
        }
    }

    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        GatewayError::Refused(code, message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_show_their_message_not_their_code() {
        let err = GatewayError::refused(ErrorCode::RateLimited, "slow down");
        assert_eq!(err.to_string(), "slow down");
        assert_eq!(err.code(), ErrorCode::RateLimited);
    }
}
