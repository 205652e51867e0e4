//! The one place where errors become HTTP responses (spec §4):
//! `{"error":{"code","message"}}` with the status of the code.

use crate::GatewayError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use switchboard_protocol::ErrorCode;

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadFrame | ErrorCode::InvalidRoom | ErrorCode::NotSubscribed => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON error response for `code`.
pub fn error_response(code: ErrorCode, message: &str) -> Response {
    metrics::counter!(switchboard_telemetry::names::ERRORS, "code" => code.as_str()).increment(1);
    let body = serde_json::json!({ "error": { "code": code.as_str(), "message": message } });
    (status_of(code), Json(body)).into_response()
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        error_response(self.code(), &self.to_string())
    }
}

/// The token of a request: `Authorization: Bearer …` first, else the
/// `access_token` query parameter (browsers cannot set headers on
/// WebSocket or EventSource requests).
pub fn request_token<'a>(
    headers: &'a axum::http::HeaderMap,
    access_token: Option<&'a str>,
) -> Option<&'a str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or(access_token)
}
