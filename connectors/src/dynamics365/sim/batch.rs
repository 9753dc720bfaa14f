//! `$batch`: a multipart/mixed request of up to 1,000 requests, each dispatched as if sent alone;
//! it stops at the first failure unless `Prefer: odata.continue-on-error`.

use axum::http::{HeaderMap, Method, StatusCode, header};

use super::reply::{Reply, error, to_part};
use super::{Dynamics365Sim, Request, parse_query};
use crate::dynamics365::wire::{self, BatchResponse};

impl Dynamics365Sim {
    pub(super) fn batch(&self, headers: &HeaderMap, body: &[u8], base: &str, version: &str) -> Reply {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
        let Some(boundary) = wire::boundary_of(content_type).filter(|_| content_type.starts_with("multipart/mixed"))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80048d19",
                "The content type of a $batch request must be multipart/mixed with a boundary.",
            );
        };
        let text = String::from_utf8_lossy(body);
        let requests = match wire::decode_batch(&boundary, &text) {
            Ok(requests) => requests,
            Err(problem) => return error(StatusCode::BAD_REQUEST, "0x80048d19", &problem.to_string()),
        };
        if requests.len() > wire::BATCH_LIMIT {
            return error(
                StatusCode::BAD_REQUEST,
                "0x8005f103",
                &format!(
                    "The number of requests in batch is {} which is more than the limit of {}.",
                    requests.len(),
                    wire::BATCH_LIMIT
                ),
            );
        }
        let continue_on_error = headers
            .get("prefer")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|prefer| prefer.contains("odata.continue-on-error"));
        let prefix = format!("/api/data/{version}/");
        let mut responses = Vec::with_capacity(requests.len());
        for part in requests {
            let (path, query) = part.path.split_once('?').unwrap_or((&part.path, ""));
            let path = path.strip_prefix(base).unwrap_or(path);
            let Some(resource) = path.strip_prefix(&prefix) else {
                responses.push(to_part(error(
                    StatusCode::BAD_REQUEST,
                    "0x80048d19",
                    &format!("unsupported path {path}"),
                )));
                if !continue_on_error {
                    break;
                }
                continue;
            };
            let method = Method::from_bytes(part.method.as_bytes()).unwrap_or(Method::GET);
            let request = Request {
                method,
                resource: resource.to_owned(),
                query: parse_query(query),
                headers: part.headers,
                body: part.body,
                base,
                version,
            };
            let reply = if resource == "$batch" {
                error(StatusCode::BAD_REQUEST, "0x80048d19", "Nested $batch requests are not supported.")
            } else {
                self.dispatch(&request)
            };
            let failed = !reply.status.is_success();
            responses.push(to_part(reply));
            if failed && !continue_on_error {
                // Without continue-on-error the batch stops and answers with the failing status.
                let last =
                    responses.pop().unwrap_or(BatchResponse { status: 400, headers: Vec::new(), body: String::new() });
                let boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
                let status = StatusCode::from_u16(last.status).unwrap_or(StatusCode::BAD_REQUEST);
                return Reply {
                    status,
                    headers: vec![("Content-Type".into(), format!("multipart/mixed; boundary={boundary}"))],
                    body: wire::encode_batch_response(&boundary, &[last]),
                };
            }
        }
        let boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
        Reply {
            status: StatusCode::OK,
            headers: vec![("Content-Type".into(), format!("multipart/mixed; boundary={boundary}"))],
            body: wire::encode_batch_response(&boundary, &responses),
        }
    }
}
