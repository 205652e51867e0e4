use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use switchboard_auth::Identity;
use switchboard_gateway::{Gateway, GatewayError, Peer, Transport, request_token};
use switchboard_protocol::ErrorCode;
use switchboard_protocol::frames::events_json_array;

pub(crate) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/api/rooms/{room}/messages", get(history).post(publish))
        .route("/api/rooms/{room}/presence", get(presence))
}

type Params = Query<HashMap<String, String>>;

async fn identify(
    gateway: &Gateway,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Identity, GatewayError> {
    let token = request_token(headers, params.get("access_token").map(String::as_str));
    gateway
        .authenticate_fresh(token, params.get("user").map(String::as_str))
        .await
}

/// The JSON body of `POST /api/rooms/{room}/messages`:
/// `{"text":…,"id":…}`, nothing else (a misspelt `id` must not silently
/// lose idempotency, hence `deny_unknown_fields`).
///
/// Public so that the fuzz targets and property tests parse bodies with
/// the very type the handler uses.
///
/// ```
/// use switchboard_sse::PublishBody;
/// let body = PublishBody::from_json(br#"{"text":"hi","id":"c-1"}"#).unwrap();
/// assert_eq!(body.id.as_deref(), Some("c-1"));
/// assert!(PublishBody::from_json(br#"{"text":"hi","idd":"c-1"}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    pub text: String,
    /// The publish id; the `Idempotency-Key` header stands in when absent.
    #[serde(default)]
    pub id: Option<String>,
}

impl PublishBody {
    /// Parses a request body as the handler does; size limits are the
    /// handler's, applied before.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        // serde's derived visitor also reads a JSON array positionally
        // (`["hi","c-1"]`), which the API does not offer.
        let first = body
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first == Some(&b'[') {
            return Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Seq,
                &"a JSON object",
            ));
        }
        serde_json::from_slice(body)
    }
}

async fn publish(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(room): Path<String>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = async {
        let identity = identify(&gateway, &headers, &params).await?;
        let max = gateway.limits().max_frame_bytes;
        let body = axum::body::to_bytes(body, max).await.map_err(|_| {
            GatewayError::refused(ErrorCode::TooLarge, format!("body exceeds {max} bytes"))
        })?;
        let body = PublishBody::from_json(&body).map_err(|err| {
            GatewayError::refused(
                ErrorCode::BadFrame,
                format!("body must be {{\"text\":…,\"id\":…}}: {err}"),
            )
        })?;
        let key = headers
            .get("idempotency-key")
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    GatewayError::refused(ErrorCode::BadFrame, "Idempotency-Key must be ASCII")
                })
            })
            .transpose()?;
        let id = body.id.or(key);
        gateway.api_rate_limit(
            &identity.user,
            gateway.client_ip_of(Some(peer.0.ip()), &headers),
        )?;
        let (room, ack) = gateway
            .publish(&identity, &room, body.text, id.clone(), Transport::Http)
            .await?;
        let mut reply = serde_json::json!({
            "room": room.as_str(),
            "cursor": ack.cursor.to_string(),
            "duplicate": ack.duplicate,
        });
        if let Some(id) = id {
            reply["id"] = serde_json::Value::String(id);
        }
        Ok::<_, GatewayError>(reply)
    }
    .await;
    match outcome {
        Ok(reply) => (StatusCode::CREATED, axum::Json(reply)).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn history(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(room): Path<String>,
    params: Params,
    headers: HeaderMap,
) -> Response {
    let peer = gateway.client_ip_of(Some(peer.0.ip()), &headers);
    let outcome = async {
        let identity = identify(&gateway, &headers, &params).await?;
        gateway.ip_read_limit(peer)?;
        let limit = params
            .get("limit")
            .map(|l| {
                l.parse::<u32>().map_err(|_| {
                    GatewayError::refused(ErrorCode::BadFrame, "limit must be a positive integer")
                })
            })
            .transpose()?;
        let after = params.get("after").map(String::as_str);
        let before = params.get("before").map(String::as_str);
        let (_, events) = gateway
            .history(&identity, &room, after, before, limit)
            .await?;
        gateway.ip_read_spend(peer, events.len());
        Ok::<_, GatewayError>(events)
    }
    .await;
    match outcome {
        Ok(events) => {
            // Spliced from each event's cached JSON: no re-encoding.
            let mut body = b"{\"events\":".to_vec();
            body.extend_from_slice(&events_json_array(&events));
            body.push(b'}');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(err) => err.into_response(),
    }
}

async fn presence(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(room): Path<String>,
    params: Params,
    headers: HeaderMap,
) -> Response {
    let peer = gateway.client_ip_of(Some(peer.0.ip()), &headers);
    let outcome = async {
        let identity = identify(&gateway, &headers, &params).await?;
        gateway.ip_read_limit(peer)?;
        let (room, users) = gateway.presence(&identity, &room).await?;
        gateway.ip_read_spend(peer, users.len());
        Ok::<_, GatewayError>((room, users))
    }
    .await;
    match outcome {
        Ok((room, users)) => {
            axum::Json(serde_json::json!({ "room": room.as_str(), "users": users })).into_response()
        }
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `http_body` fuzz target: `[\n"jwk"]` was a body with
    /// text `jwk`.
    #[test]
    fn arrays_are_not_bodies() {
        for body in [&br#"["hi"]"#[..], br#" ["hi","c-1"]"#, b"\n[\"jwk\"]"] {
            assert!(PublishBody::from_json(body).is_err(), "{body:?}");
        }
        let body = PublishBody::from_json(br#" {"text":"hi","id":"c-1"}"#).expect("object");
        assert_eq!(body.text, "hi");
    }
}
