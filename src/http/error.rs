//! `ApiError`: every HTTP error as `{"error":{"code","message"}}`, never leaking internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Unknown resource.
    #[error("{0}")]
    NotFound(String),
    /// Bad request body or parameters.
    #[error("{0}")]
    BadRequest(String),
    /// The writer is saturated: retry after this many seconds.
    #[error("ingest is saturated, retry later")]
    Saturated {
        /// Seconds.
        retry_after: u64,
    },
    /// Shutting down or not ready.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside; details are logged, not returned.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Saturated { .. } => (StatusCode::SERVICE_UNAVAILABLE, "saturated"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = (status, Json(body)).into_response();
        if let Self::Saturated { retry_after } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
