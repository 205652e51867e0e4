//! Property tests of what the SSE gateway and HTTP API parse themselves:
//! the publish body and the choice of resume cursor. The fuzz targets in
//! `fuzz/` check the same properties on bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use switchboard_sse::{PublishBody, resume_from};

proptest! {
    #[test]
    fn publish_bodies_round_trip(text in any::<String>(), id in proptest::option::of(any::<String>())) {
        let body = PublishBody { text, id };
        let json = json!({"text": body.text, "id": body.id}).to_string();
        prop_assert_eq!(PublishBody::from_json(json.as_bytes()).unwrap(), body);
    }

    /// `deny_unknown_fields`: a misspelt `id` is an error, not a publish
    /// without idempotency.
    #[test]
    fn unknown_body_fields_are_refused(text in any::<String>(), key in "[a-z_]{1,8}") {
        prop_assume!(key != "text" && key != "id");
        let json = json!({"text": text, key: "x"}).to_string();
        prop_assert!(PublishBody::from_json(json.as_bytes()).is_err());
    }

    #[test]
    fn arrays_are_not_bodies(text in any::<String>(), id in proptest::option::of(any::<String>())) {
        let array = json!([text, id]).to_string();
        prop_assert!(PublishBody::from_json(array.as_bytes()).is_err());
        prop_assert!(PublishBody::from_json(json!([text]).to_string().as_bytes()).is_err());
    }

    #[test]
    fn bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(body) = PublishBody::from_json(&bytes) {
            prop_assert!(std::str::from_utf8(&bytes).is_ok());
            prop_assert!(bytes.len() >= body.text.len());
        }
    }

    #[test]
    fn text_bodies_never_panic(
        text in prop_oneof![
            any::<String>(),
            "\\{(\"(text|id|x)\":(\"[^\"]{0,6}\"|null|[0-9]{1,3}|\\[\\]),?){0,3}\\}",
        ],
    ) {
        let _ = PublishBody::from_json(text.as_bytes());
    }

    /// `Last-Event-ID` wins over `?since=` when it is non-empty visible
    /// ASCII; otherwise `?since=` applies.
    #[test]
    fn last_event_id_wins_when_usable(
        header in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        since in proptest::option::of(any::<String>()),
    ) {
        let mut headers = HeaderMap::new();
        let mut usable = None;
        if let Some(value) = header.as_deref().and_then(|h| HeaderValue::from_bytes(h).ok()) {
            usable = value.to_str().ok().filter(|v| !v.is_empty()).map(str::to_owned);
            headers.insert("last-event-id", value);
        }
        let params: HashMap<String, String> =
            since.iter().map(|s| ("since".to_owned(), s.clone())).collect();
        let expected = usable.as_deref().or(since.as_deref());
        prop_assert_eq!(resume_from(&headers, &params), expected);
    }
}
