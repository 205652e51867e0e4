//! Who is connecting, and which rooms they may use (spec §7).
//!
//! An [`Authenticator`] turns the credentials a transport found (bearer
//! token, `access_token` query parameter, gRPC metadata) into an
//! [`Identity`]. Without a configured key everyone is anonymous and names
//! themselves with `?user=`; with a key every request needs a valid JWT.
//! Transports decide where a token comes from; this crate decides whether
//! it is good and what it allows. Keys come from the configuration (a
//! secret, a PEM file) or from an identity provider's JWKS URL
//! ([`jwks`]), the only network access this crate makes.

pub mod jwks;

pub use jwks::Jwks;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use rand::Rng;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_protocol::{ErrorCode, RoomName};

/// Longest user name; names appear in every event.
pub const MAX_USER_LEN: usize = 64;

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "a token is required (Authorization: Bearer, access_token query parameter or authorization metadata)"
    )]
    MissingToken,
    #[error("token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("invalid user name: {0}")]
    BadUser(String),
    #[error("invalid auth configuration: {0}")]
    Config(String),
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::BadUser(_) => ErrorCode::BadFrame,
            _ => ErrorCode::Unauthorized,
        }
    }
}

/// A room pattern from a token: an exact name, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoomPattern(String);

impl RoomPattern {
    fn matches(&self, room: &RoomName) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => room.as_str().starts_with(prefix),
            None => room.as_str() == self.0,
        }
    }
}

/// An authenticated (or anonymous) user and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// When the credentials stop being valid; connections close then.
    pub expires_at: Option<SystemTime>,
    subscribe: Option<Vec<RoomPattern>>,
    publish: Option<Vec<RoomPattern>>,
}

impl Identity {
    /// An anonymous user allowed everywhere.
    pub fn anonymous(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            expires_at: None,
            subscribe: None,
            publish: None,
        }
    }

    /// May this user subscribe to (and read history/presence of) `room`?
    pub fn can_subscribe(&self, room: &RoomName) -> bool {
        allowed(self.subscribe.as_deref(), room)
    }

    pub fn can_publish(&self, room: &RoomName) -> bool {
        allowed(self.publish.as_deref(), room)
    }

    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| at <= SystemTime::now())
    }
}

fn allowed(patterns: Option<&[RoomPattern]>, room: &RoomName) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| p.matches(room)))
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

/// Claim rules of a deployment (`--jwt-audience`, `--jwt-issuer`,
/// `--jwt-leeway`).
#[derive(Debug, Clone, Default)]
pub struct JwtRules {
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub issuer: Vec<String>,
    pub leeway: Duration,
}

/// Validates credentials; cheap to share behind an `Arc`.
pub enum Authenticator {
    Anonymous,
    Jwt {
        key: Box<DecodingKey>,
        validation: Box<Validation>,
    },
    /// Keys of a JWKS URL, each with its own algorithm; `validation`
    /// holds the claim rules.
    Jwks {
        jwks: Arc<Jwks>,
        validation: Box<Validation>,
    },
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::Anonymous => f.write_str("Authenticator::Anonymous"),
            Authenticator::Jwt { validation, .. } => {
                write!(f, "Authenticator::Jwt({:?})", validation.algorithms)
            }
            Authenticator::Jwks { jwks, .. } => write!(f, "Authenticator::Jwks({})", jwks.url()),
        }
    }
}

impl Authenticator {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < 16 {
            return Err(AuthError::Config(
                "the JWT secret must be at least 16 bytes".into(),
            ));
        }
        Ok(Self::jwt(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// RS256 or ES256, whichever the PEM public key is.
    pub fn public_key_pem(pem: &[u8]) -> Result<Self, AuthError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::jwt(key, Algorithm::RS256));
        }
        DecodingKey::from_ec_pem(pem)
            .map(|key| Self::jwt(key, Algorithm::ES256))
            .map_err(|err| {
                AuthError::Config(format!("public key is neither RSA nor EC PEM: {err}"))
            })
    }

    /// One algorithm per key, fixed by how the key was configured: a
    /// token's `alg` header never chooses it (so `none`, or HS256 signed
    /// with an RSA public key as the secret, is refused).
    fn jwt(key: DecodingKey, alg: Algorithm) -> Self {
        Self::Jwt {
            key: Box::new(key),
            validation: Box::new(base_validation(alg)),
        }
    }

    /// Keys from a JWKS URL. Each key's algorithm is its own (see
    /// [`jwks`]); a token is checked against the key its `kid` names.
    pub fn jwks(jwks: Arc<Jwks>) -> Self {
        Self::Jwks {
            jwks,
            validation: Box::new(base_validation(Algorithm::RS256)),
        }
    }

    /// Adds the deployment's claim rules: with an audience (or issuer)
    /// set, a token must name one of them in `aud` (`iss`) — a token
    /// minted for another service is refused. `leeway` tolerates clock
    /// skew on `exp` and `nbf`.
    pub fn with_rules(mut self, rules: &JwtRules) -> Self {
        if let Authenticator::Jwt { validation, .. } | Authenticator::Jwks { validation, .. } =
            &mut self
        {
            validation.leeway = rules.leeway.as_secs();
            if !rules.audience.is_empty() {
                validation.set_audience(&rules.audience);
                validation.validate_aud = true;
                validation.required_spec_claims.insert("aud".to_owned());
            }
            if !rules.issuer.is_empty() {
                validation.set_issuer(&rules.issuer);
                validation.required_spec_claims.insert("iss".to_owned());
            }
        }
        self
    }

    /// How long after `exp` a token is still honoured (the leeway).
    pub fn leeway(&self) -> Duration {
        match self {
            Authenticator::Jwt { validation, .. } | Authenticator::Jwks { validation, .. } => {
                Duration::from_secs(validation.leeway)
            }
            Authenticator::Anonymous => Duration::ZERO,
        }
    }

    pub fn requires_token(&self) -> bool {
        !matches!(self, Authenticator::Anonymous)
    }

    /// Checks a request's credentials. `requested_user` is `?user=`, only
    /// honoured for anonymous access. With a JWKS, only the cached keys
    /// are used: a token naming an unknown key is refused (see
    /// [`Authenticator::authenticate_fresh`]).
    pub fn authenticate(
        &self,
        token: Option<&str>,
        requested_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        match self {
            Authenticator::Anonymous => match requested_user {
                Some(user) => Ok(Identity::anonymous(validate_user(user)?)),
                None => Ok(Identity::anonymous(guest_name())),
            },
            Authenticator::Jwt { key, validation } => identity_of(present(token)?, key, validation),
            Authenticator::Jwks { jwks, validation } => {
                let token = present(token)?;
                let kid = key_id(token)?;
                match jwks.key(kid.as_deref()) {
                    Some(key) => identity_with(token, &key, validation),
                    None => Err(unknown_key(jwks, kid.as_deref())),
                }
            }
        }
    }

    /// [`Authenticator::authenticate`], and with a JWKS a token naming a
    /// key the cached set lacks refetches the set first (the provider may
    /// have rotated its keys), at most once per the set's minimum refetch
    /// interval however many such tokens arrive.
    pub async fn authenticate_fresh(
        &self,
        token: Option<&str>,
        requested_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let Authenticator::Jwks { jwks, validation } = self else {
            return self.authenticate(token, requested_user);
        };
        let token = present(token)?;
        let kid = key_id(token)?;
        let key = match jwks.key(kid.as_deref()) {
            Some(key) => key,
            None => jwks
                .refetch_for(kid.as_deref())
                .await
                .ok_or_else(|| unknown_key(jwks, kid.as_deref()))?,
        };
        identity_with(token, &key, validation)
    }
}

impl Authenticator {
    /// False only for a JWKS whose cached set lacks the key `token` names;
    /// anything else (no token, a malformed one) is left to
    /// [`Authenticator::authenticate`] to refuse.
    pub fn knows_key(&self, token: Option<&str>) -> bool {
        let Authenticator::Jwks { jwks, .. } = self else {
            return true;
        };
        let Some(Ok(kid)) = present(token).ok().map(key_id) else {
            return true;
        };
        jwks.key(kid.as_deref()).is_some()
    }

    /// With a JWKS lacking the key `token` names: refetches the set
    /// (rate-limited, shared with concurrent callers).
    pub async fn refetch_key(&self, token: Option<&str>) {
        if let Authenticator::Jwks { jwks, .. } = self
            && let Some(Ok(kid)) = present(token).ok().map(key_id)
            && jwks.key(kid.as_deref()).is_none()
        {
            jwks.refetch_for(kid.as_deref()).await;
        }
    }
}

fn present(token: Option<&str>) -> Result<&str, AuthError> {
    token
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::MissingToken)
}

/// The `kid` of a token's header (not yet verified: it only picks a key).
fn key_id(token: &str) -> Result<Option<String>, AuthError> {
    decode_header(token)
        .map(|header| header.kid)
        .map_err(|err| AuthError::InvalidToken(err.to_string()))
}

fn unknown_key(jwks: &Jwks, kid: Option<&str>) -> AuthError {
    let kid: String = kid.unwrap_or_default().chars().take(64).collect();
    AuthError::InvalidToken(format!(
        "key id {kid:?} is not in the JWKS of {} (refetched at most every {}s)",
        jwks.url(),
        jwks.min_refetch().as_secs()
    ))
}

/// The validation of the deployment, bound to the one algorithm of `key`.
fn identity_with(
    token: &str,
    key: &jwks::JwksKey,
    validation: &Validation,
) -> Result<Identity, AuthError> {
    let mut validation = validation.clone();
    validation.algorithms = vec![key.alg];
    identity_of(token, &key.key, &validation)
}

/// The claims every key configuration requires: `sub` and `exp`, `nbf`
/// when present, no leeway unless configured.
fn base_validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["sub", "exp"]);
    // Expiry is exact by default: connections are closed at `exp`, so
    // a leeway only helps clocks that disagree (`--jwt-leeway`).
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation
}

fn identity_of(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Identity, AuthError> {
    let data = decode::<Claims>(token, key, validation).map_err(|err| match err.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
        _ => AuthError::InvalidToken(err.to_string()),
    })?;
    // RFC 7515 §4.1.11: a recipient must refuse a token whose `crit`
    // header lists extensions it does not implement. Switchboard
    // implements none, and `jsonwebtoken` does not check: `crit: ["b64"]`
    // with `b64: false` would mean the signature covers another payload.
    if data.header.crit.is_some() {
        return Err(AuthError::InvalidToken(
            "critical header extensions (crit) are not supported".into(),
        ));
    }
    let claims = data.claims;
    let user = validate_user(&claims.sub)?;
    let subscribe = claims
        .rooms
        .map(|rs| rs.into_iter().map(RoomPattern).collect::<Vec<_>>());
    let publish = claims
        .publish
        .map(|ps| ps.into_iter().map(RoomPattern).collect())
        .or_else(|| subscribe.clone());
    Ok(Identity {
        user,
        // A signed but absurd `exp` (u64::MAX) must not overflow the
        // clock: it means "far future". Closed when the token stops being
        // accepted.
        expires_at: Some(
            UNIX_EPOCH
                .checked_add(Duration::from_secs(
                    claims.exp.min(MAX_EXP).saturating_add(validation.leeway),
                ))
                .unwrap_or(UNIX_EPOCH),
        ),
        subscribe,
        publish,
    })
}

/// 9999-12-31T23:59:59Z: later expiries are clamped to it.
const MAX_EXP: u64 = 253_402_300_799;

fn validate_user(user: &str) -> Result<String, AuthError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
        return Err(AuthError::BadUser(format!(
            "must be 1-{MAX_USER_LEN} bytes without control characters"
        )));
    }
    Ok(user.to_owned())
}

fn guest_name() -> String {
    format!("guest-{:06x}", rand::rng().random_range(0..0x100_0000u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn room(r: &str) -> RoomName {
        RoomName::parse(r).expect("room")
    }

    #[test]
    fn anonymous_takes_requested_name_or_generates_one() {
        let auth = Authenticator::Anonymous;
        assert_eq!(
            auth.authenticate(None, Some("alice")).expect("ok").user,
            "alice"
        );
        assert!(
            auth.authenticate(None, None)
                .expect("ok")
                .user
                .starts_with("guest-")
        );
        assert!(auth.authenticate(None, Some("")).is_err());
    }

    #[test]
    fn jwt_rooms_and_publish_patterns() {
        let auth = Authenticator::hs256(SECRET).expect("config");
        let t = token(
            json!({"sub":"bob","exp":now()+60,"rooms":["team-*","lobby"],"publish":["lobby"]}),
        );
        let id = auth.authenticate(Some(&t), Some("mallory")).expect("valid");
        assert_eq!(id.user, "bob");
        assert!(id.can_subscribe(&room("team-a")) && id.can_subscribe(&room("lobby")));
        assert!(!id.can_subscribe(&room("other")));
        assert!(id.can_publish(&room("lobby")) && !id.can_publish(&room("team-a")));
        let t = token(json!({"sub":"bob","exp":now()+60,"rooms":["a*"]}));
        let id = auth.authenticate(Some(&t), None).expect("valid");
        assert!(
            id.can_publish(&room("abc")) && !id.can_publish(&room("b")),
            "publish defaults to rooms"
        );
    }

    #[test]
    fn a_huge_exp_is_the_far_future_not_a_panic() {
        let auth = Authenticator::hs256(SECRET).expect("config");
        let t = token(json!({"sub":"bob","exp":u64::MAX}));
        let id = auth.authenticate(Some(&t), None).expect("valid");
        assert!(!id.is_expired());
        assert!(id.expires_at.is_some_and(|at| at > SystemTime::now()));
    }

    #[test]
    fn jwt_rejections() {
        let auth = Authenticator::hs256(SECRET).expect("config");
        assert_eq!(auth.authenticate(None, None), Err(AuthError::MissingToken));
        let expired = token(json!({"sub":"bob","exp":now()-5}));
        assert_eq!(
            auth.authenticate(Some(&expired), None),
            Err(AuthError::Expired)
        );
        let no_sub = token(json!({"exp":now()+60}));
        assert!(matches!(
            auth.authenticate(Some(&no_sub), None),
            Err(AuthError::InvalidToken(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("garbage"), None),
            Err(AuthError::InvalidToken(_))
        ));
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub":"x","exp":now()+60}),
            &EncodingKey::from_secret(b"another-secret-of-32-bytes-xxxxx"),
        )
        .expect("enc");
        assert!(matches!(
            auth.authenticate(Some(&other), None),
            Err(AuthError::InvalidToken(_))
        ));
    }

    fn invalid(auth: &Authenticator, token: &str) -> bool {
        matches!(
            auth.authenticate(Some(token), None),
            Err(AuthError::InvalidToken(_))
        )
    }

    /// `header.payload.` with the given JSON parts and no signature.
    fn unsigned(header: &serde_json::Value, claims: &serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        )
    }

    #[test]
    fn the_key_fixes_the_algorithm_and_claims_must_be_well_formed() {
        let auth = Authenticator::hs256(SECRET).expect("config");
        let claims = json!({"sub":"eve","exp":now()+60});
        assert!(
            invalid(
                &auth,
                &unsigned(&json!({"alg":"none","typ":"JWT"}), &claims)
            ),
            "alg none"
        );
        assert!(invalid(&auth, &token(json!({"sub":"eve"}))), "missing exp");
        assert!(
            invalid(&auth, &token(json!({"sub":"eve","exp":"9999999999"}))),
            "string exp"
        );
        let other_alg = encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("enc");
        assert!(invalid(&auth, &other_alg), "HS512 with the right secret");
    }

    /// Found by the `jwt_header` fuzz target: a correctly signed token
    /// whose header had `crit` was accepted (`jsonwebtoken` ignores it).
    #[test]
    fn critical_header_extensions_are_refused() {
        let auth = Authenticator::hs256(SECRET).expect("config");
        let claims = json!({"sub":"eve","exp":now()+60});
        for crit in [vec![], vec!["b64".to_owned()], vec!["exp-ext".to_owned()]] {
            let mut header = Header::new(Algorithm::HS256);
            header.crit = Some(crit.clone());
            let signed = encode(&header, &claims, &EncodingKey::from_secret(SECRET)).expect("enc");
            assert!(invalid(&auth, &signed), "crit {crit:?}");
        }
        let plain = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("enc");
        assert!(auth.authenticate(Some(&plain), None).is_ok());
    }

    /// The classic confusion: an RS256 deployment's public key, used as an
    /// HMAC secret by an attacker who read it.
    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("sb-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let private = dir.join("key.pem");
        let public = dir.join("pub.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&private)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public)
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            made,
            "openssl makes an RSA key pair (Debian's openssl package)"
        );
        let public_pem = std::fs::read(&public).expect("public key");
        let private_pem = std::fs::read(&private).expect("private key");
        let auth = Authenticator::public_key_pem(&public_pem).expect("RS256 config");
        let claims = json!({"sub":"eve","exp":now()+60});
        let good = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&private_pem).expect("private key"),
        )
        .expect("enc");
        assert!(
            auth.authenticate(Some(&good), None).is_ok(),
            "a real RS256 token"
        );
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&public_pem),
        )
        .expect("enc");
        assert!(invalid(&auth, &forged), "HS256 keyed with the public key");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nbf_audience_issuer_and_leeway() {
        let auth = Authenticator::hs256(SECRET).expect("config");
        let later = token(json!({"sub":"bob","exp":now()+600,"nbf":now()+120}));
        assert!(invalid(&auth, &later), "a future nbf");
        let lenient = Authenticator::hs256(SECRET)
            .expect("config")
            .with_rules(&JwtRules {
                leeway: Duration::from_secs(300),
                ..JwtRules::default()
            });
        assert!(
            lenient.authenticate(Some(&later), None).is_ok(),
            "nbf within the leeway"
        );
        let exp = now() - 5;
        let just_expired = token(json!({"sub":"bob","exp":exp}));
        assert_eq!(
            auth.authenticate(Some(&just_expired), None),
            Err(AuthError::Expired)
        );
        let id = lenient
            .authenticate(Some(&just_expired), None)
            .expect("within the leeway");
        assert_eq!(
            id.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp + 300)),
            "connections close when the leeway is over"
        );

        let strict = Authenticator::hs256(SECRET)
            .expect("config")
            .with_rules(&JwtRules {
                audience: vec!["switchboard".into()],
                issuer: vec!["https://auth.example".into()],
                leeway: Duration::ZERO,
            });
        let with = |aud: Option<&str>, iss: Option<&str>| {
            let mut claims = json!({"sub":"bob","exp":now()+60});
            if let Some(aud) = aud {
                claims["aud"] = json!(aud);
            }
            if let Some(iss) = iss {
                claims["iss"] = json!(iss);
            }
            token(claims)
        };
        let right = with(Some("switchboard"), Some("https://auth.example"));
        assert!(strict.authenticate(Some(&right), None).is_ok());
        assert!(
            invalid(
                &strict,
                &with(Some("billing"), Some("https://auth.example"))
            ),
            "wrong aud"
        );
        assert!(
            invalid(
                &strict,
                &with(Some("switchboard"), Some("https://evil.example"))
            ),
            "wrong iss"
        );
        assert!(
            invalid(&strict, &with(None, Some("https://auth.example"))),
            "missing aud"
        );
        assert!(
            invalid(&strict, &with(Some("switchboard"), None)),
            "missing iss"
        );
        let list = token(
            json!({"sub":"bob","exp":now()+60,"aud":["other","switchboard"],"iss":"https://auth.example"}),
        );
        assert!(
            strict.authenticate(Some(&list), None).is_ok(),
            "aud as a list"
        );
    }
}
