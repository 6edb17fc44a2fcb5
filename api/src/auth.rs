//! Optional bearer-token auth: HS256 JWTs signed with the pool's secret (with `exp`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::AppState;
use crate::error::ApiError;

/// A request that may use the work routes: auth is off, or it carries a valid token.
/// [`crate::router`] extracts it for its whole guarded group of routes (as middleware, so
/// a route added to that group is guarded without asking); a `401 unauthorized` otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match state.auth() {
            Some(auth) => auth.check(&parts.headers).map(|()| Authorized),
            None => Ok(Authorized),
        }
    }
}

#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(HS256)")
    }
}

impl Auth {
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        jsonwebtoken::decode::<serde_json::Value>(token.trim(), &self.key, &self.validation)
            .map(|_| ())
            .map_err(|_| ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Request};
    use serde_json::json;

    use super::*;
    use crate::router_tests::{SECRET, state, token};

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = Request::builder();
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(()).expect("request").into_parts().0
    }

    async fn extract(
        state: &AppState,
        authorization: Option<&str>,
    ) -> Result<Authorized, ApiError> {
        Authorized::from_request_parts(&mut parts(authorization), state).await
    }

    #[tokio::test]
    async fn with_auth_off_every_request_is_authorized() {
        let state = state(None);
        for authorization in [None, Some("Bearer not-a-jwt"), Some("Basic eDp5")] {
            assert!(
                extract(&state, authorization).await.is_ok(),
                "{authorization:?}"
            );
        }
    }

    #[tokio::test]
    async fn with_auth_on_only_an_unexpired_hs256_token_of_the_secret_is_authorized() {
        let state = state(Some(Auth::hs256(SECRET)));
        let good = token(SECRET, &json!({"exp": 4_000_000_000u64}));
        let refused = [
            None,
            Some(String::new()),
            Some("Bearer".to_owned()),
            Some(format!("bearer {good}")),
            Some(format!(
                "Bearer {}",
                token(b"other", &json!({"exp": 4_000_000_000u64}))
            )),
            Some(format!(
                "Bearer {}",
                token(SECRET, &json!({"exp": 1_000_000_000u64}))
            )),
            Some(format!(
                "Bearer {}",
                token(SECRET, &json!({"sub": "no exp"}))
            )),
        ];
        for authorization in refused {
            let answer = extract(&state, authorization.as_deref()).await;
            assert!(
                matches!(answer, Err(ApiError::Unauthorized)),
                "{authorization:?}: {answer:?}"
            );
        }
        for authorization in [format!("Bearer {good}"), format!("Bearer  {good} ")] {
            assert!(extract(&state, Some(&authorization)).await.is_ok());
        }
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
        assert_eq!(format!("{:?}", Auth::hs256(SECRET)), "Auth(HS256)");
    }
}
