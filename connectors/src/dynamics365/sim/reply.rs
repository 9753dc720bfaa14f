//! Answers as the Web API gives them: status, headers and body, the `{"error":{"code","message"}}`
//! error body, and the same answer as a `$batch` response part.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::schema::logical;
use crate::dynamics365::wire::BatchResponse;
use crate::sim::truncate;

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    Reply::json(status, json!({"error": {"code": code, "message": message}}))
}

/// One answer, to an HTTP call or to a part of a `$batch`.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: String,
}

impl Reply {
    pub(super) fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json; odata.metadata=minimal".into())],
            body: body.to_string(),
        }
    }

    pub(super) fn empty(status: StatusCode) -> Self {
        Self { status, headers: Vec::new(), body: String::new() }
    }

    pub(super) fn with(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_owned(), value));
        self
    }

    pub(super) fn into_response(self, truncated: bool) -> Response {
        let mut response = if truncated {
            (self.status, truncate(self.body.as_bytes())).into_response()
        } else {
            (self.status, self.body).into_response()
        };
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) =
                (header::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value))
            {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

pub(super) fn not_found(set: &str, address: &str) -> Reply {
    error(StatusCode::NOT_FOUND, "0x80040217", &format!("{} With Id = {address} Does Not Exist", logical(set)))
}

pub(super) fn to_part(reply: Reply) -> BatchResponse {
    BatchResponse {
        status: reply.status.as_u16(),
        headers: reply.headers.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect(),
        body: reply.body,
    }
}
