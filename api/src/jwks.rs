//! Token keys from an identity provider's JSON Web Key Set (a `jwks_uri`): fetched at
//! start, again every [`REFRESH`], and again (at most every [`MIN_REFETCH`]) when a token
//! names a key id the set does not hold, so a provider's key rotation is followed
//! without a restart. Only public keys count: RSA keys check RS256 tokens, EC P-256
//! keys ES256; a symmetric key in a published set would be anyone's, and is skipped.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// How often the set is fetched again while every token's key is known.
pub const REFRESH: Duration = Duration::from_secs(300);
/// The least time between two fetches caused by unknown key ids (a flood of tokens with
/// made-up ids must not become a flood of requests to the provider).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching the JWKS {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the JWKS {url} holds no RS256 or ES256 key with a key id")]
    NoUsableKey { url: String },
    #[error("HTTP client: {0}")]
    Client(#[from] workpool_runtime::http_client::ClientError),
}

type Keys = HashMap<String, (DecodingKey, Algorithm)>;

/// The current keys of one JWKS URL, by key id.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Arc<Keys>>,
    /// When a fetch last started; `None` before the first.
    fetched: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwks({})", self.url)
    }
}

impl Jwks {
    pub fn new(url: &str) -> Result<Arc<Self>, JwksError> {
        let http = workpool_runtime::http_client::client_builder()?
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(workpool_runtime::http_client::ClientError::from)?;
        Ok(Arc::new(Self {
            url: url.to_owned(),
            http,
            keys: RwLock::default(),
            fetched: std::sync::Mutex::default(),
        }))
    }

    /// The key with id `kid`, and the one algorithm it checks.
    pub fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.get(kid).cloned()
    }

    /// Fetches the set and replaces the keys with it. A failed fetch keeps the keys
    /// there were.
    pub async fn fetch(&self) -> Result<usize, JwksError> {
        self.mark_fetched();
        let fetch = |source| JwksError::Fetch {
            url: self.url.clone(),
            source,
        };
        let response = self.http.get(&self.url).send().await.map_err(fetch)?;
        let set: JwkSet = response
            .error_for_status()
            .map_err(fetch)?
            .json()
            .await
            .map_err(fetch)?;
        let keys: Keys = set.keys.iter().filter_map(usable).collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                url: self.url.clone(),
            });
        }
        let count = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(count)
    }

    /// A token named a key id the set lacks: fetch again in the background, unless a
    /// fetch started less than [`MIN_REFETCH`] ago.
    pub fn unknown_key(self: &Arc<Self>) {
        let recent = self
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < MIN_REFETCH);
        if recent {
            return;
        }
        self.mark_fetched();
        let jwks = self.clone();
        tokio::spawn(async move { jwks.fetch_logged().await });
    }

    /// Fetches the set once (tokens are refused until a fetch succeeds), then keeps it
    /// fresh in the background: every [`REFRESH`], or every [`MIN_REFETCH`] while no
    /// fetch has succeeded yet.
    pub async fn start(url: &str) -> Result<Arc<Self>, JwksError> {
        let jwks = Self::new(url)?;
        let mut have_keys = jwks.fetch_logged().await;
        let refreshed = jwks.clone();
        tokio::spawn(async move {
            loop {
                let pause = if have_keys { REFRESH } else { MIN_REFETCH };
                tokio::time::sleep(pause).await;
                have_keys |= refreshed.fetch_logged().await;
            }
        });
        Ok(jwks)
    }

    async fn fetch_logged(&self) -> bool {
        match self.fetch().await {
            Ok(count) => {
                tracing::info!(url = %self.url, keys = count, "JWKS fetched");
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "JWKS not fetched; keeping the keys there were");
                false
            }
        }
    }

    fn mark_fetched(&self) {
        *self
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
}

/// A key id with its key, if the key is one we check tokens with: RSA (RS256) or EC
/// P-256 (ES256), and its `alg`, if it names one, agreeing.
fn usable(jwk: &Jwk) -> Option<(String, (DecodingKey, Algorithm))> {
    let kid = jwk.common.key_id.clone()?;
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(_) => return None,
    };
    if named.is_some_and(|named| named != algorithm) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, (key, algorithm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: serde_json::Value) -> JwkSet {
        serde_json::from_value(json).expect("a JWK set")
    }

    #[test]
    fn only_public_rs256_and_es256_keys_with_ids_are_used() {
        let published: JwkSet =
            serde_json::from_str(include_str!("../testdata/jwks.json")).expect("jwks");
        let keys: Keys = published.keys.iter().filter_map(usable).collect();
        assert_eq!(keys["rs-1"].1, Algorithm::RS256);
        assert_eq!(keys["ec-1"].1, Algorithm::ES256);

        let rsa = published.find("rs-1").expect("rs-1").clone();
        let mut no_id = rsa.clone();
        no_id.common.key_id = None;
        let mut wrong_alg = rsa.clone();
        wrong_alg.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let mut pss = rsa;
        pss.common.key_algorithm = Some(KeyAlgorithm::PS256);
        let secret = set(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "alg": "HS256", "k": "c2VjcmV0"}
        ]}));
        for jwk in [&no_id, &wrong_alg, &pss, &secret.keys[0]] {
            assert!(usable(jwk).is_none(), "{jwk:?}");
        }
    }
}
