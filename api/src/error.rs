//! Every error the api answers: a status code and a JSON body `{"error", "code"}`.

use std::borrow::Cow;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// How long clients should wait before retrying after a 429 or 503.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token may not use this route (it needs the admin claim)")]
    Forbidden,
    #[error("no work with id {0} (unknown, or its record expired)")]
    NotFound(String),
    #[error("no dead letter of work {0}")]
    NoDeadLetter(String),
    #[error("no such route: {0}")]
    NoRoute(String),
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is larger than the pool's limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("content type must be {expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("the queue is full; retry later")]
    QueueFull,
    #[error("{limit} requests already wait for work in this api pod; retry later")]
    TooManyWaiters { limit: usize },
    /// NATS or the store could not do what the request needs now; `source` is the error
    /// behind it, if there is one (its text is in `reason`, which the client is shown).
    #[error("the queue is unavailable ({reason}); retry later")]
    Unavailable {
        reason: Cow<'static, str>,
        #[source]
        source: Option<BoxError>,
    },
}

/// The error behind a [`ApiError::Unavailable`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The JSON body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    pub error: String,
    /// A stable machine-readable code.
    pub code: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// 503 for a reason of the api's own, with no error behind it.
    pub fn unavailable(reason: &'static str) -> Self {
        ApiError::Unavailable {
            reason: Cow::Borrowed(reason),
            source: None,
        }
    }

    /// 503 because of `source`, whose text is the reason the client is shown.
    pub fn unavailable_from(source: impl Into<BoxError>) -> Self {
        let source = source.into();
        ApiError::Unavailable {
            reason: Cow::Owned(source.to_string()),
            source: Some(source),
        }
    }

    /// 503 because of `source`, with a reason that says more than its text.
    pub fn unavailable_with(
        reason: impl Into<Cow<'static, str>>,
        source: impl Into<BoxError>,
    ) -> Self {
        ApiError::Unavailable {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NoDeadLetter(_) | ApiError::NoRoute(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::QueueFull | ApiError::TooManyWaiters { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Conflict { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) | ApiError::NoDeadLetter(_) => "not_found",
            ApiError::NoRoute(_) => "no_route",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::QueueFull => "queue_full",
            ApiError::TooManyWaiters { .. } => "too_many_waiters",
            ApiError::Unavailable { .. } => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.to_string(),
            code: self.code().to_owned(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        if matches!(
            self,
            ApiError::QueueFull | ApiError::TooManyWaiters { .. } | ApiError::Unavailable { .. }
        ) {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[tokio::test]
    async fn every_error_answers_its_documented_status_code_and_headers() {
        // docs/api.md, "Errors"; the ones that need a live NATS server (409, 429, and
        // 503 for its errors) are built here directly.
        let cases = [
            (
                ApiError::bad_request("invalid_json", "x"),
                400,
                "invalid_json",
            ),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::NotFound("0".repeat(32)), 404, "not_found"),
            (ApiError::NoDeadLetter("0".repeat(32)), 404, "not_found"),
            (ApiError::NoRoute("/x".into()), 404, "no_route"),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (
                ApiError::Conflict {
                    code: "finished",
                    message: "the work is already worked".into(),
                },
                409,
                "finished",
            ),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                ApiError::UnsupportedMediaType {
                    expected: "application/json",
                },
                415,
                "unsupported_media_type",
            ),
            (ApiError::QueueFull, 429, "queue_full"),
            (
                ApiError::TooManyWaiters { limit: 1 },
                429,
                "too_many_waiters",
            ),
            (
                ApiError::unavailable("NATS is not connected"),
                503,
                "unavailable",
            ),
            (
                ApiError::unavailable_from(std::io::Error::other("timed out")),
                503,
                "unavailable",
            ),
        ];
        for (error, status, code) in cases {
            let message = error.to_string();
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            let headers = response.headers();
            let retry_after = headers.get(header::RETRY_AFTER).map(|v| v.as_bytes());
            let expected = matches!(status, 429 | 503).then_some(&b"1"[..]);
            assert_eq!(retry_after, expected, "{code}");
            let challenge = headers.get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes());
            assert_eq!(
                challenge,
                (status == 401).then_some(&b"Bearer"[..]),
                "{code}"
            );
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            let body: ErrorBody = serde_json::from_slice(&body).expect("an ErrorBody");
            assert_eq!((body.code.as_str(), body.error), (code, message));
        }
    }

    #[test]
    fn a_503_keeps_the_error_behind_it_and_shows_its_text() {
        let error = ApiError::unavailable_from(std::io::Error::other("timed out"));
        assert_eq!(
            error.to_string(),
            "the queue is unavailable (timed out); retry later"
        );
        let source = error.source().expect("a source");
        assert!(source.downcast_ref::<std::io::Error>().is_some());

        let error = ApiError::unavailable_with(
            "the record could not be read",
            std::io::Error::other("timed out"),
        );
        assert_eq!(
            error.to_string(),
            "the queue is unavailable (the record could not be read); retry later"
        );
        assert_eq!(
            error.source().map(ToString::to_string).as_deref(),
            Some("timed out")
        );

        assert!(
            ApiError::unavailable("NATS is not connected")
                .source()
                .is_none()
        );
    }
}
