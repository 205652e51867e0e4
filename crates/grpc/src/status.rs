use switchboard_gateway::GatewayError;
use switchboard_protocol::ErrorCode;
use tonic::{Code, Status};

/// The one mapping from the spec's error codes to gRPC status codes. The
/// spec code is kept in the `x-error-code` metadata.
pub fn to_status(err: &GatewayError) -> Status {
    let code = match err.code() {
        ErrorCode::BadFrame | ErrorCode::InvalidRoom => Code::InvalidArgument,
        ErrorCode::TooLarge => Code::OutOfRange,
        ErrorCode::RateLimited => Code::ResourceExhausted,
        ErrorCode::Unauthorized => Code::Unauthenticated,
        ErrorCode::Forbidden => Code::PermissionDenied,
        ErrorCode::NotSubscribed => Code::FailedPrecondition,
        ErrorCode::Unavailable => Code::Unavailable,
    };
    metrics::counter!(switchboard_telemetry::names::ERRORS, "code" => err.code().as_str())
        .increment(1);
    let mut status = Status::new(code, err.to_string());
    if let Ok(value) = err.code().as_str().parse() {
        status.metadata_mut().insert("x-error-code", value);
    }
    status
}
