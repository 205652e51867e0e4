//! Verification keys from an identity provider's JWKS URL
//! (`--jwt-jwks-url`, spec §7).
//!
//! The set is fetched at start, refreshed periodically, and refetched when
//! a token names a key id the cached set does not hold (the provider
//! rotated its keys) — at most once per [`Jwks::min_refetch`], so a flood
//! of tokens with made-up `kid`s cannot turn into a flood of requests to
//! the provider. Each key's algorithm is fixed by the key itself (its
//! `alg`, else its type and curve), never by a token's header, and
//! symmetric (`oct`) keys and encryption keys are ignored: a public JWKS
//! must never make a shared secret out of published bytes.

use crate::AuthError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Largest JWKS document read; real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Most keys kept from one document.
const MAX_KEYS: usize = 100;
/// Bound of one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable key of the set.
#[derive(Clone)]
pub(crate) struct JwksKey {
    pub(crate) key: DecodingKey,
    pub(crate) alg: Algorithm,
}

/// The cached key set of one JWKS URL.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, JwksKey>>>,
    /// When the last fetch started: an unknown `kid` refetches only once
    /// this is at least `min_refetch` old.
    last_attempt: Mutex<Option<Instant>>,
    /// One fetch at a time; the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    min_refetch: Duration,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url)
            .field("keys", &self.key_ids())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key set for `url` (http or https), empty until [`Jwks::fetch`].
    pub fn new(url: &str, min_refetch: Duration) -> Result<Self, AuthError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|err| AuthError::Config(format!("--jwt-jwks-url {url:?}: {err}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(AuthError::Config(format!(
                "--jwt-jwks-url {url:?}: must be http or https"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|err| AuthError::Config(format!("JWKS client: {err}")))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            min_refetch,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Shortest time between two fetches caused by unknown key ids.
    pub fn min_refetch(&self) -> Duration {
        self.min_refetch
    }

    /// The key ids of the cached set, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.current().keys().cloned().collect();
        ids.sort();
        ids
    }

    fn current(&self) -> Arc<HashMap<String, JwksKey>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key for a token's `kid`; a token without `kid` may use the only
    /// key of a one-key set.
    pub(crate) fn key(&self, kid: Option<&str>) -> Option<JwksKey> {
        let keys = self.current();
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// Fetches the set and replaces the cached one; returns how many keys
    /// it holds. On failure the cached set stays.
    pub async fn fetch(&self) -> Result<usize, AuthError> {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, AuthError> {
        *self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let fetched = self.download().await;
        let keys = match fetched {
            Ok(keys) => keys,
            Err(err) => {
                tracing::warn!(url = %self.url, %err, "JWKS fetch failed; keeping the cached keys");
                return Err(err);
            }
        };
        let count = keys.len();
        let mut ids: Vec<&String> = keys.keys().collect();
        ids.sort();
        tracing::info!(url = %self.url, keys = ?ids, "JWKS fetched");
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(count)
    }

    async fn download(&self) -> Result<HashMap<String, JwksKey>, AuthError> {
        let fail = |why: String| AuthError::Config(format!("JWKS {}: {why}", self.url));
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| fail(err.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| fail(err.to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(fail(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        parse_set(&body).map_err(fail)
    }

    /// After a token named an unknown `kid`: refetches the set unless a
    /// fetch started less than `min_refetch` ago, then answers whether the
    /// key is known now. Concurrent callers share one fetch.
    pub(crate) async fn refetch_for(&self, kid: Option<&str>) -> Option<JwksKey> {
        let _one = self.fetching.lock().await;
        // Someone else's fetch may have brought it while we waited.
        if let Some(key) = self.key(kid) {
            return Some(key);
        }
        let recent = self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < self.min_refetch);
        if recent {
            return None;
        }
        let _ = self.fetch_locked().await;
        self.key(kid)
    }

    /// Refreshes the set every `every` in the background (keys the
    /// provider withdrew stop being accepted), for as long as the set is
    /// in use.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        let jwks = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(jwks) = jwks.upgrade() else { return };
                let _ = jwks.fetch().await;
            }
        });
    }
}

/// The usable keys of a JWKS document, by `kid` ("" for a key without
/// one). A key this server cannot or must not use is skipped with a log
/// line, not an error: providers publish keys for other purposes too.
fn parse_set(body: &[u8]) -> Result<HashMap<String, JwksKey>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|err| format!("not a JWKS document: {err}"))?;
    let mut keys = HashMap::new();
    for value in document.keys.into_iter().take(MAX_KEYS) {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(err) => {
                tracing::warn!(%err, "JWKS key skipped: unreadable");
                continue;
            }
        };
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        match usable(&jwk) {
            Ok(key) => {
                keys.insert(kid, key);
            }
            Err(why) => tracing::warn!(kid, why, "JWKS key skipped"),
        }
    }
    Ok(keys)
}

fn usable(jwk: &Jwk) -> Result<JwksKey, &'static str> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key");
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("an unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key"),
        _ => return Err("an unsupported key type"),
    };
    let alg = match jwk.common.key_algorithm {
        None => implied,
        Some(named) => Algorithm::try_from(named).map_err(|_| "an unsupported alg")?,
    };
    let family_matches = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        _ => alg == implied,
    };
    if !family_matches {
        return Err("its alg does not fit its key type");
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "unreadable key material")?;
    Ok(JwksKey { key, alg })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Key material is not checked until a signature is: any base64 will
    /// do to test which keys are kept, and with which algorithm.
    const B64: &str = "AQAB";

    fn algs(document: serde_json::Value) -> Vec<(String, Algorithm)> {
        let keys = parse_set(document.to_string().as_bytes()).expect("a JWKS document");
        let mut algs: Vec<(String, Algorithm)> =
            keys.into_iter().map(|(kid, key)| (kid, key.alg)).collect();
        algs.sort_by(|a, b| a.0.cmp(&b.0));
        algs
    }

    #[test]
    fn each_key_gets_its_own_algorithm_and_unusable_keys_are_skipped() {
        let keys = algs(json!({"keys":[
            {"kty":"RSA","kid":"rsa","n":B64,"e":B64},
            {"kty":"RSA","kid":"pss","alg":"PS256","n":B64,"e":B64},
            {"kty":"EC","kid":"p256","crv":"P-256","x":B64,"y":B64},
            {"kty":"EC","kid":"p384","crv":"P-384","x":B64,"y":B64},
            {"kty":"OKP","kid":"ed","crv":"Ed25519","x":B64},
            // Skipped: a shared secret, an encryption key, an alg that does
            // not fit the key, a curve we cannot verify, garbage.
            {"kty":"oct","kid":"secret","k":B64},
            {"kty":"RSA","kid":"enc","use":"enc","n":B64,"e":B64},
            {"kty":"RSA","kid":"mismatch","alg":"ES256","n":B64,"e":B64},
            {"kty":"RSA","kid":"hmac","alg":"HS256","n":B64,"e":B64},
            {"kty":"EC","kid":"p521","crv":"P-521","x":B64,"y":B64},
            {"kty":"nonsense","kid":"x"},
        ]}));
        assert_eq!(
            keys,
            vec![
                ("ed".to_owned(), Algorithm::EdDSA),
                ("p256".to_owned(), Algorithm::ES256),
                ("p384".to_owned(), Algorithm::ES384),
                ("pss".to_owned(), Algorithm::PS256),
                ("rsa".to_owned(), Algorithm::RS256),
            ]
        );
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        assert!(parse_set(b"<html>").is_err());
        assert!(parse_set(br#"{"no":"keys"}"#).is_err());
        assert!(algs(json!({"keys":[]})).is_empty());
    }

    #[test]
    fn only_http_urls() {
        assert!(
            Jwks::new(
                "https://id.example/.well-known/jwks.json",
                Duration::from_secs(30)
            )
            .is_ok()
        );
        assert!(Jwks::new("file:///etc/passwd", Duration::from_secs(30)).is_err());
        assert!(Jwks::new("not a url", Duration::from_secs(30)).is_err());
    }

    #[test]
    fn a_one_key_set_serves_tokens_without_kid() {
        let jwks = Jwks::new("http://127.0.0.1:1/jwks", Duration::from_secs(30)).expect("url");
        let keys = parse_set(
            json!({"keys":[{"kty":"OKP","kid":"only","crv":"Ed25519","x":B64}]})
                .to_string()
                .as_bytes(),
        )
        .expect("set");
        *jwks.keys.write().expect("lock") = Arc::new(keys);
        assert!(jwks.key(None).is_some());
        assert!(jwks.key(Some("only")).is_some());
        assert!(jwks.key(Some("other")).is_none());
    }
}
