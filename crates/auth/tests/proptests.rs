//! Property tests of the JWT path with hostile tokens: nothing a client
//! can make without the key is accepted, and nothing panics. The
//! `jwt_header` fuzz target in `fuzz/` checks the same on bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::prelude::*;
use switchboard_auth::{AuthError, Authenticator, MAX_USER_LEN};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn auth() -> Authenticator {
    Authenticator::hs256(SECRET).unwrap()
}

/// `header.claims.signature`, signed with the key.
fn signed(header: &str, claims: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

const CLAIMS: &str = r#"{"sub":"prop","exp":4102444800}"#;

proptest! {
    #[test]
    fn arbitrary_tokens_are_refused(token in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,43}",
    ]) {
        let _ = jsonwebtoken::decode_header(&token);
        match auth().authenticate(Some(&token), None) {
            Err(AuthError::MissingToken) => prop_assert!(token.is_empty()),
            Err(err) => prop_assert!(
                matches!(err, AuthError::InvalidToken(_) | AuthError::Expired | AuthError::BadUser(_)),
                "{err:?}"
            ),
            Ok(identity) => prop_assert!(false, "accepted {token:?} as {identity:?}"),
        }
    }

    /// With the right signature, only an `HS256` header without `crit`
    /// is accepted: the key fixes the algorithm, whatever `alg` says.
    #[test]
    fn only_hs256_headers_are_accepted(
        alg in prop_oneof![
            Just("HS256".to_owned()),
            Just("none".to_owned()),
            Just("HS512".to_owned()),
            Just("RS256".to_owned()),
            "[A-Za-z0-9 ]{0,8}",
        ],
        extra in prop_oneof![
            Just(String::new()),
            Just(r#","typ":"JWT""#.to_owned()),
            Just(r#","kid":"../x""#.to_owned()),
            Just(r#","crit":["b64"],"b64":false"#.to_owned()),
        ],
    ) {
        let header = format!(r#"{{"alg":"{alg}"{extra}}}"#);
        let outcome = auth().authenticate(Some(&signed(&header, CLAIMS)), None);
        prop_assert_eq!(outcome.is_ok(), alg == "HS256" && !extra.contains("crit"), "{}", header);
    }

    #[test]
    fn signed_claims_give_a_valid_user_or_a_refusal(sub in any::<String>()) {
        let claims = serde_json::json!({"sub": sub, "exp": 4_102_444_800u64}).to_string();
        let outcome = auth().authenticate(Some(&signed(r#"{"alg":"HS256"}"#, &claims)), None);
        let valid = !sub.is_empty() && sub.len() <= MAX_USER_LEN && !sub.chars().any(char::is_control);
        match outcome {
            Ok(identity) => {
                prop_assert!(valid, "{:?}", sub);
                prop_assert_eq!(identity.user, sub);
            }
            Err(err) => {
                prop_assert!(!valid, "{:?}: {}", sub, err);
                prop_assert!(matches!(err, AuthError::BadUser(_)));
            }
        }
    }

    #[test]
    fn anonymous_names_are_validated(user in any::<String>()) {
        let valid = !user.is_empty() && user.len() <= MAX_USER_LEN && !user.chars().any(char::is_control);
        let outcome = Authenticator::Anonymous.authenticate(None, Some(&user));
        prop_assert_eq!(outcome.is_ok(), valid, "{:?}", user);
    }
}
