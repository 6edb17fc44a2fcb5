//! Optional bearer-token auth: JWTs (with `exp`) signed with the pool's HS256 secret,
//! or with the private half of the RSA (RS256) or EC P-256 (ES256) public key the pool
//! gives instead, or with one of the keys of an identity provider's JWKS ([`Jwks`]).
//! A token's tenant claim scopes the work its holder submits, reads and cancels; its
//! admin claim opens the cluster view (docs/security.md#work-ids-and-tenants).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::AppState;
use crate::error::ApiError;
use crate::jwks::Jwks;

/// The claim that names a token's tenant, unless configured otherwise.
pub const DEFAULT_TENANT_CLAIM: &str = "sub";
/// The claim that, `true`, makes a token's holder an admin, unless configured otherwise.
pub const DEFAULT_ADMIN_CLAIM: &str = "workpool_admin";

/// Who sent a request on the guarded routes, put in the request's extensions by
/// [`authenticate`]. With auth off: anyone, with no tenant, allowed everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's tenant claim, if it has one (a string, or a number as text).
    pub tenant: Option<String>,
    pub admin: bool,
}

impl Caller {
    /// The caller when auth is off.
    pub fn anyone() -> Self {
        Self {
            tenant: None,
            admin: true,
        }
    }

    /// Whether work submitted by `tenant` is this caller's to see and cancel.
    pub fn owns(&self, tenant: Option<&str>) -> bool {
        self.tenant.as_deref() == tenant
    }

    /// Refuses a caller that is not an admin (`403`).
    pub fn must_be_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// The guard of [`crate::router`]'s work routes: the token's [`Caller`] goes into the
/// request's extensions, or the request is answered `401 unauthorized`. It is the
/// group's layer, not a call in each handler, so a route added to the group cannot go
/// without it, and the token is decoded once.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match state.auth() {
        Some(auth) => match auth.check(request.headers()) {
            Ok(caller) => caller,
            Err(err) => return err.into_response(),
        },
        None => Caller::anyone(),
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[derive(Clone)]
pub struct Auth {
    keys: TokenKeys,
    tenant_claim: String,
    admin_claim: String,
}

/// What checks a token's signature.
#[derive(Clone)]
enum TokenKeys {
    /// One key and its one algorithm: the pool's secret or PEM public key.
    Fixed {
        key: DecodingKey,
        validation: Box<Validation>,
    },
    /// The key a JWKS holds under the token's `kid`, with that key's algorithm.
    Jwks(std::sync::Arc<Jwks>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.keys {
            TokenKeys::Fixed { validation, .. } => write!(f, "Auth({:?})", validation.algorithms),
            TokenKeys::Jwks(jwks) => write!(f, "Auth({jwks:?})"),
        }
    }
}

/// Only `algorithm`, and `exp` required; `aud` is not checked.
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.validate_aud = false;
    validation
}

/// Why the pool's key cannot check tokens.
#[derive(Debug, thiserror::Error)]
#[error("a PEM key must be an RSA or EC P-256 public key: {0}")]
pub struct KeyError(#[source] jsonwebtoken::errors::Error);

impl Auth {
    /// HS256 with `secret`, tenants and admins named by the default claims.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::hs256_with_claims(secret, DEFAULT_TENANT_CLAIM, DEFAULT_ADMIN_CLAIM)
    }

    pub fn hs256_with_claims(secret: &[u8], tenant_claim: &str, admin_claim: &str) -> Self {
        let key = DecodingKey::from_secret(secret);
        Self::with(key, Algorithm::HS256, tenant_claim, admin_claim)
    }

    /// From the pool's key: a PEM public key checks RS256 (RSA) or ES256 (EC P-256)
    /// tokens and nothing else, so a token cannot pick another algorithm (an HS256
    /// token "signed" with the public key is refused); anything else is an HS256 secret.
    pub fn from_key(key: &[u8], tenant_claim: &str, admin_claim: &str) -> Result<Self, KeyError> {
        if !key.starts_with(b"-----BEGIN") {
            return Ok(Self::hs256_with_claims(key, tenant_claim, admin_claim));
        }
        let (key, algorithm) = match DecodingKey::from_rsa_pem(key) {
            Ok(rsa) => (rsa, Algorithm::RS256),
            Err(_) => (
                DecodingKey::from_ec_pem(key).map_err(KeyError)?,
                Algorithm::ES256,
            ),
        };
        Ok(Self::with(key, algorithm, tenant_claim, admin_claim))
    }

    fn with(key: DecodingKey, algorithm: Algorithm, tenant_claim: &str, admin_claim: &str) -> Self {
        let validation = Box::new(validation(algorithm));
        Self::with_keys(
            TokenKeys::Fixed { key, validation },
            tenant_claim,
            admin_claim,
        )
    }

    /// Tokens signed with any RS256 or ES256 key of `jwks`, picked by their `kid`.
    pub fn from_jwks(jwks: std::sync::Arc<Jwks>, tenant_claim: &str, admin_claim: &str) -> Self {
        Self::with_keys(TokenKeys::Jwks(jwks), tenant_claim, admin_claim)
    }

    fn with_keys(keys: TokenKeys, tenant_claim: &str, admin_claim: &str) -> Self {
        Self {
            keys,
            tenant_claim: tenant_claim.to_owned(),
            admin_claim: admin_claim.to_owned(),
        }
    }

    /// The token's claims, if its signature, algorithm and `exp` hold.
    fn claims(&self, token: &str) -> Result<serde_json::Value, ApiError> {
        let decoded = match &self.keys {
            TokenKeys::Fixed { key, validation } => jsonwebtoken::decode(token, key, validation),
            TokenKeys::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token);
                let kid = header.ok().and_then(|header| header.kid);
                let kid = kid.ok_or(ApiError::Unauthorized)?;
                let Some((key, algorithm)) = jwks.key(&kid) else {
                    jwks.unknown_key();
                    return Err(ApiError::Unauthorized);
                };
                jsonwebtoken::decode(token, &key, &validation(algorithm))
            }
        };
        decoded
            .map(|token| token.claims)
            .map_err(|_| ApiError::Unauthorized)
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let claims = self.claims(token.trim())?;
        let tenant = match claims.get(&self.tenant_claim) {
            Some(serde_json::Value::String(tenant)) => Some(tenant.clone()),
            Some(serde_json::Value::Number(tenant)) => Some(tenant.to_string()),
            _ => None,
        };
        let admin = claims.get(&self.admin_claim) == Some(&serde_json::Value::Bool(true));
        Ok(Caller { tenant, admin })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::router_tests::{SECRET, token};

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(token).expect("header");
        headers.insert(header::AUTHORIZATION, value);
        headers
    }

    #[test]
    fn only_an_unexpired_hs256_token_of_the_secret_is_accepted() {
        let auth = Auth::hs256(SECRET);
        let good = token(SECRET, &json!({"exp": 4_000_000_000u64}));
        let refused = [
            String::new(),
            "Bearer".to_owned(),
            format!("bearer {good}"),
            format!(
                "Bearer {}",
                token(b"other", &json!({"exp": 4_000_000_000u64}))
            ),
            format!(
                "Bearer {}",
                token(SECRET, &json!({"exp": 1_000_000_000u64}))
            ),
            format!("Bearer {}", token(SECRET, &json!({"sub": "no exp"}))),
        ];
        for authorization in refused {
            let answer = auth.check(&bearer(&authorization));
            assert!(
                matches!(answer, Err(ApiError::Unauthorized)),
                "{authorization:?}: {answer:?}"
            );
        }
        assert!(matches!(
            auth.check(&HeaderMap::new()),
            Err(ApiError::Unauthorized)
        ));
        for authorization in [format!("Bearer {good}"), format!("Bearer  {good} ")] {
            assert!(auth.check(&bearer(&authorization)).is_ok());
        }
    }

    #[test]
    fn the_tenant_and_admin_claims_name_the_caller() {
        let exp = 4_000_000_000u64;
        let caller = |auth: &Auth, claims| {
            auth.check(&bearer(&format!("Bearer {}", token(SECRET, &claims))))
                .expect("a good token")
        };
        let auth = Auth::hs256(SECRET);
        let plain = caller(&auth, json!({"exp": exp}));
        assert_eq!(
            plain,
            Caller {
                tenant: None,
                admin: false
            }
        );
        let tenant = caller(&auth, json!({"exp": exp, "sub": "acme"}));
        assert_eq!(tenant.tenant.as_deref(), Some("acme"));
        assert!(tenant.owns(Some("acme")) && !tenant.owns(Some("other")) && !tenant.owns(None));
        let numbered = caller(&auth, json!({"exp": exp, "sub": 42}));
        assert_eq!(numbered.tenant.as_deref(), Some("42"));
        // Only `true` makes an admin, not "true" or 1.
        for (value, admin) in [
            (json!(true), true),
            (json!("true"), false),
            (json!(1), false),
        ] {
            let claims = json!({"exp": exp, DEFAULT_ADMIN_CLAIM: value});
            assert_eq!(caller(&auth, claims).admin, admin, "{value}");
        }
        assert!(matches!(plain.must_be_admin(), Err(ApiError::Forbidden)));
        // Other claim names, when configured.
        let custom = Auth::hs256_with_claims(SECRET, "org", "root");
        let other = caller(
            &custom,
            json!({"exp": exp, "sub": "x", "org": "o", "root": true}),
        );
        assert_eq!(
            other,
            Caller {
                tenant: Some("o".into()),
                admin: true
            }
        );
        assert!(Caller::anyone().must_be_admin().is_ok());
    }

    #[test]
    fn a_header_that_is_not_text_is_no_token() {
        let auth = Auth::hs256(SECRET);
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_bytes(b"Bearer \xff").expect("obs-text");
        headers.insert(header::AUTHORIZATION, value);
        assert!(matches!(auth.check(&headers), Err(ApiError::Unauthorized)));
    }

    #[test]
    fn the_debug_form_shows_no_secret() {
        assert_eq!(format!("{:?}", Auth::hs256(SECRET)), "Auth([HS256])");
    }

    fn signed(algorithm: jsonwebtoken::Algorithm, private_pem: &[u8]) -> String {
        let key = match algorithm {
            jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(private_pem),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(private_pem),
        };
        let claims = json!({"sub": "acme", "exp": 4_000_000_000u64});
        let header = jsonwebtoken::Header::new(algorithm);
        jsonwebtoken::encode(&header, &claims, &key.expect("test key")).expect("token")
    }

    #[test]
    fn a_pem_public_key_checks_rs256_or_es256_tokens_and_no_other_algorithm() {
        use jsonwebtoken::Algorithm::{ES256, RS256};
        let rsa_public = include_bytes!("../testdata/rs256-public.pem");
        let ec_public = include_bytes!("../testdata/es256-public.pem");
        let rs256 = signed(RS256, include_bytes!("../testdata/rs256-private.pem"));
        let es256 = signed(ES256, include_bytes!("../testdata/es256-private.pem"));
        let claims = DEFAULT_TENANT_CLAIM;
        let by_rsa = Auth::from_key(rsa_public, claims, DEFAULT_ADMIN_CLAIM).expect("RSA key");
        let by_ec = Auth::from_key(ec_public, claims, DEFAULT_ADMIN_CLAIM).expect("EC key");
        assert_eq!(format!("{by_rsa:?}"), "Auth([RS256])");
        assert_eq!(format!("{by_ec:?}"), "Auth([ES256])");
        let check = |auth: &Auth, token: &str| auth.check(&bearer(&format!("Bearer {token}")));
        let caller = check(&by_rsa, &rs256).expect("RS256 under the RSA key");
        assert_eq!(caller.tenant.as_deref(), Some("acme"));
        assert!(check(&by_ec, &es256).is_ok(), "ES256 under the EC key");
        // The other key's tokens, and HS256 "signed" with the public key itself (the
        // algorithm confusion attack), are refused.
        let confused = token(rsa_public, &json!({"sub": "acme", "exp": 4_000_000_000u64}));
        for (auth, token) in [(&by_rsa, &es256), (&by_ec, &rs256), (&by_rsa, &confused)] {
            assert!(matches!(check(auth, token), Err(ApiError::Unauthorized)));
        }
        // A secret is a secret, even one that looks like a key's name; a broken PEM is
        // an error at start, not a key that admits nothing.
        assert!(Auth::from_key(b"rsa", claims, DEFAULT_ADMIN_CLAIM).is_ok());
        let broken = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(Auth::from_key(broken, claims, DEFAULT_ADMIN_CLAIM).is_err());
    }
}
