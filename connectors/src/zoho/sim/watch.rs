//! `POST|PATCH /crm/{v}/actions/watch`: Notifications API channel subscription.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, error};
use crate::canonical::Timestamp;

pub(super) async fn watch(
    State(sim): Shared,
    headers: HeaderMap,
    Path(version): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(response) = sim.gate(&headers, &version).await {
        return sim.with_credits(response);
    }
    sim.counters.write.fetch_add(1, Ordering::SeqCst);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return sim.with_credits(error(StatusCode::BAD_REQUEST, "INVALID_DATA", "invalid data", json!({})));
    };
    let Some(watch) = request.get("watch").and_then(Value::as_array).and_then(|items| items.first()).cloned() else {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "watch is missing",
            json!({}),
        ));
    };
    let token_ok =
        watch.get("token").and_then(Value::as_str).is_some_and(|token| !token.is_empty() && token.len() <= 50);
    let expiry_ok = watch
        .get("channel_expiry")
        .and_then(Value::as_str)
        .and_then(|text| text.parse::<Timestamp>().ok())
        .is_some_and(|expiry| {
            let now = Timestamp::now().unix_millis();
            expiry.unix_millis() > now && expiry.unix_millis() <= now + 86_400_000 + 60_000
        });
    if !token_ok || !expiry_ok || watch.get("notify_url").is_none() {
        return sim.with_credits(error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "invalid data",
            json!({"api_name": "channel_expiry or token"}),
        ));
    }
    let expiry = watch["channel_expiry"].clone();
    let channel = watch["channel_id"].clone();
    sim.lock().watch = Some(watch);
    sim.with_credits(
        axum::Json(json!({"watch": [{"code": "SUCCESS", "status": "success", "message": "Successfully subscribed for actions-watch of the given module", "details": {"events": [{"channel_expiry": expiry, "channel_id": channel}]}}]}))
            .into_response(),
    )
}
