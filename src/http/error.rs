//! `ApiError`: every HTTP error as `{"error":{"code","message"}}` (plus `field` naming the offending
//! input, `allowed` for a refused status change, `current` for a stale version), never leaking
//! internals. [`json_errors`] turns the errors axum, tower and hyper-level limits produce themselves
//! (unknown route 404, 405, 413, 414, …) into the same shape.

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ingest::operator::OperatorError;
use crate::queries::QueryError;

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
    /// A query parameter or header that does not validate (400, naming it).
    #[error("{field}: {message}")]
    InvalidParameter {
        /// The parameter.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A body field that does not validate (422, naming it).
    #[error("{field}: {message}")]
    Unprocessable {
        /// The field (`lines[0].quantity`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A status change the order state machine refuses (409, with the allowed statuses).
    #[error("{message}")]
    Transition {
        /// The explanation, naming the allowed statuses.
        message: String,
        /// The statuses the order may go to.
        allowed: Vec<String>,
    },
    /// The action does not apply to the record as it is (409).
    #[error("{0}")]
    Conflict(String),
    /// The version in `If-Match` is not the current one (412, with the current record).
    #[error("{message}")]
    Stale {
        /// The explanation.
        message: String,
        /// The record as it is now, with its version.
        current: Value,
    },
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
    /// An error with a status axum or tower chose (the public listener rewrites those as JSON).
    #[error("{message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The explanation.
        message: String,
    },
}

impl ApiError {
    /// A query parameter or header that does not validate.
    pub fn invalid_parameter(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidParameter { field: field.to_owned(), message: message.into() }
    }

    /// Returns the HTTP status and the error code of the body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadRequest(_) | Self::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unprocessable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            Self::Transition { .. } => (StatusCode::CONFLICT, "invalid_transition"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Stale { .. } => (StatusCode::PRECONDITION_FAILED, "version_mismatch"),
            Self::Saturated { .. } => (StatusCode::SERVICE_UNAVAILABLE, "saturated"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::Status { status, .. } => (*status, code_of(*status)),
        }
    }
}

/// The error code of a status axum or tower answered by itself.
fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthenticated",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        411 => "length_required",
        412 => "version_mismatch",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "invalid",
        429 => "too_many_requests",
        431 => "headers_too_large",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut error = json!({"code": code, "message": self.to_string()});
        match &self {
            Self::InvalidParameter { field, .. } | Self::Unprocessable { field, .. } => {
                error["field"] = Value::String(field.clone());
            }
            Self::Transition { allowed, .. } => error["allowed"] = json!(allowed),
            Self::Stale { current, .. } => error["current"] = current.clone(),
            _ => {}
        }
        let mut response = (status, Json(json!({"error": error}))).into_response();
        if let Self::Saturated { retry_after } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<OperatorError> for ApiError {
    fn from(error: OperatorError) -> Self {
        match error {
            OperatorError::NotFound(message) => Self::NotFound(message),
            OperatorError::Invalid { field, message } => Self::Unprocessable { field, message },
            error @ OperatorError::Transition { .. } => {
                let allowed = match &error {
                    OperatorError::Transition { allowed, .. } => {
                        allowed.iter().map(|status| status.as_str().to_owned()).collect()
                    }
                    _ => Vec::new(),
                };
                Self::Transition { message: error.to_string(), allowed }
            }
            OperatorError::Stale { expected, current_version, current } => {
                let message = format!(
                    "order {} changed since version {expected} was read; its current version is {current_version}",
                    current.id
                );
                let current = serde_json::to_value(crate::queries::Versioned::of(*current)).unwrap_or(Value::Null);
                Self::Stale { message, current }
            }
            OperatorError::Refused(message) => Self::Conflict(message),
            OperatorError::Stopped => Self::Unavailable("shutting down".into()),
            OperatorError::Store(error) => {
                tracing::error!(error = %error, "operator action failed in the store");
                Self::Internal
            }
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Invalid { field, message } => Self::InvalidParameter { field, message },
            QueryError::NotFound(message) => Self::NotFound(message),
            QueryError::Store(error) => {
                tracing::error!(error = %error, "store read failed");
                Self::Internal
            }
        }
    }
}

/// Longest accepted request target (path and query). Longer ones get a JSON 414 here; hyper's own
/// limit (64 KiB) answers a bare 414 before any handler runs.
pub(crate) const MAX_URI_LENGTH: usize = 8 * 1024;

/// Answers every error response of the public listener in the documented JSON shape: those of the
/// handlers already are; axum's and tower's own (no route, method not allowed, body too large,
/// malformed query, timeout) are plain text or empty and are rewritten here, keeping their status
/// and headers (`Allow`, `Retry-After`). Also refuses over-long request targets with a JSON 414.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let target = request.uri().path_and_query().map(|target| target.as_str().to_owned()).unwrap_or_default();
    if target.len() > MAX_URI_LENGTH {
        return ApiError::Status {
            status: StatusCode::URI_TOO_LONG,
            message: format!("the request target is {} bytes long (at most {MAX_URI_LENGTH})", target.len()),
        }
        .into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let path = target.split('?').next().unwrap_or_default();
    let message = match status {
        StatusCode::NOT_FOUND if text.is_empty() => format!("no such resource: {method} {path}"),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts.headers.get(header::ALLOW).and_then(|value| value.to_str().ok()).unwrap_or("");
            format!("{method} is not allowed on {path} (allowed: {allowed})")
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!("the request body is too large (at most {} bytes)", super::BODY_LIMIT),
        StatusCode::REQUEST_TIMEOUT => "the request took too long".to_owned(),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_lowercase(),
        _ => text,
    };
    let mut rewritten = ApiError::Status { status, message }.into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    if method == Method::HEAD {
        *rewritten.body_mut() = Body::empty();
    }
    rewritten
}

/// Catches a panic in a handler: a 500 in the documented shape and an error log line, instead of a
/// dropped connection (the last line of defence; no input should panic).
pub(crate) async fn catch_panic(request: Request, next: Next) -> Response {
    use futures::FutureExt;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match std::panic::AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(method = %method, path = %path, panic = %message, "request handler panicked");
            ApiError::Internal.into_response()
        }
    }
}
