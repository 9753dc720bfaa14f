//! Probes and Prometheus, served on the admin listener.
//!
//! `/healthz` is liveness: the process answers. `/readyz` is readiness: 503 with the reasons as
//! JSON while starting or stopping, when the store is not writable, when the ingest is saturated
//! (its queue full and the writer behind for [`crate::ingest::SATURATED_AFTER`]: a burst is not), or when a connection × entity has been failing for longer than `daemon.unready_after`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use crmsync_connectors::canonical::{ConnectionId, Entity, Timestamp};
use serde::Serialize;

use super::HttpState;
use crate::store::SyncStatus;

/// What `/readyz` checks besides the store and the ingest queue.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// How long a connection × entity may fail (no successful pull, its last attempt an error)
    /// before the daemon reports itself not ready (`daemon.unready_after`).
    pub unready_after: Duration,
    /// The connection × entities the daemon pulls.
    pub pulled: BTreeSet<(ConnectionId, Entity)>,
    /// When the daemon started: a failure is counted from the later of this and the last success,
    /// so a restart gives a failing connection `unready_after` to recover.
    pub started: Timestamp,
}

/// Why the daemon is not ready (one per failed check).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnreadyReason {
    /// `lifecycle`, `store`, `ingest` or `connection`.
    pub check: &'static str,
    /// The failing connection (`connection` check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// The failing entity (`connection` check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<Entity>,
    /// Seconds since the connection × entity last succeeded (or since the daemon started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_seconds: Option<u64>,
    /// What went wrong.
    pub message: String,
}

/// The `/readyz` body.
#[derive(Debug, Serialize)]
struct ReadyzBody {
    ready: bool,
    reasons: Vec<UnreadyReason>,
}

/// `GET /healthz`: the process is up (liveness; restart it only when this fails).
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 `{"ready":true,"reasons":[]}`, or 503 with every reason it is not ready.
pub(crate) async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if !state.ready.load(Ordering::SeqCst) {
        reasons.push(reason("lifecycle", "starting or stopping".to_owned()));
    }
    if let Some(behind) = state.ingest.saturated_for() {
        reasons.push(reason(
            "ingest",
            format!(
                "the ingest queue is full and the writer has been behind for {} s (the store cannot keep up)",
                behind.as_secs()
            ),
        ));
    }
    let (store, readiness) = (state.store.clone(), state.readiness.clone());
    // Store reads: off the async threads.
    let checked = tokio::task::spawn_blocking(move || {
        let mut reasons = Vec::new();
        if let Some(error) = store.storage_error() {
            reasons.push(reason("store", format!("the store is not writable: {error}")));
        }
        if let Some(readiness) = readiness {
            reasons.extend(failing_connections(&readiness, Timestamp::now(), |connection, entity| {
                store.sync_status(connection, entity).ok().flatten()
            }));
        }
        reasons
    })
    .await;
    match checked {
        Ok(found) => reasons.extend(found),
        Err(error) => reasons.push(reason("store", format!("the readiness check failed: {error}"))),
    }
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(ReadyzBody { ready: reasons.is_empty(), reasons }))
}

fn reason(check: &'static str, message: String) -> UnreadyReason {
    UnreadyReason { check, connection: None, entity: None, failing_seconds: None, message }
}

/// The pulled connection × entities whose last attempt failed and that have not succeeded for
/// longer than `unready_after` (counted from the daemon's start at the earliest).
pub(crate) fn failing_connections(
    readiness: &Readiness,
    now: Timestamp,
    status_of: impl Fn(&ConnectionId, Entity) -> Option<SyncStatus>,
) -> Vec<UnreadyReason> {
    let mut reasons = Vec::new();
    for (connection, entity) in &readiness.pulled {
        let Some(status) = status_of(connection, *entity) else { continue };
        let Some(error) = status.last_error else { continue };
        let since = status.last_success.map_or(readiness.started, |success| success.max(readiness.started));
        let failing_millis = u64::try_from(now.unix_millis() - since.unix_millis()).unwrap_or(0);
        if u128::from(failing_millis) > readiness.unready_after.as_millis() {
            reasons.push(UnreadyReason {
                check: "connection",
                connection: Some(connection.to_string()),
                entity: Some(*entity),
                failing_seconds: Some(failing_millis / 1000),
                message: error,
            });
        }
    }
    reasons
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    // Store reads (outbox depth is a count of its entries): off the async threads.
    if let Some(refresh) = state.refresh_gauges.clone() {
        let _ = tokio::task::spawn_blocking(move || refresh()).await;
    }
    let body = state.prometheus.as_ref().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn readiness() -> Readiness {
        Readiness {
            unready_after: Duration::from_secs(900),
            pulled: BTreeSet::from([
                (ConnectionId::new("sf"), Entity::Account),
                (ConnectionId::new("zoho"), Entity::Account),
                (ConnectionId::new("d365"), Entity::Account),
            ]),
            started: at("2026-11-01T00:00:00Z"),
        }
    }

    fn status(last_success: Option<&str>, last_error: Option<&str>) -> SyncStatus {
        SyncStatus {
            last_success: last_success.map(at),
            last_error: last_error.map(str::to_owned),
            ..SyncStatus::default()
        }
    }

    #[test]
    fn only_a_connection_failing_longer_than_unready_after_makes_the_daemon_unready() {
        let readiness = readiness();
        let statuses = |connection: &ConnectionId, _: Entity| match connection.as_str() {
            // Failing since its last success 20 minutes ago.
            "sf" => Some(status(Some("2026-11-01T09:40:00Z"), Some("connection refused"))),
            // Failing, but it succeeded 5 minutes ago.
            "zoho" => Some(status(Some("2026-11-01T09:55:00Z"), Some("HTTP 503"))),
            // Healthy.
            _ => Some(status(Some("2026-11-01T09:59:00Z"), None)),
        };
        let reasons = failing_connections(&readiness, at("2026-11-01T10:00:00Z"), statuses);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert_eq!(reasons[0].connection.as_deref(), Some("sf"));
        assert_eq!(reasons[0].entity, Some(Entity::Account));
        assert_eq!(reasons[0].failing_seconds, Some(1200));
        assert_eq!(reasons[0].message, "connection refused");
    }

    #[test]
    fn a_failure_is_counted_from_the_daemon_start_at_the_earliest() {
        let readiness = readiness();
        // Failing since long before this start: the daemon gets `unready_after` to recover.
        let statuses = |_: &ConnectionId, _: Entity| Some(status(Some("2026-10-01T00:00:00Z"), Some("refused")));
        assert!(failing_connections(&readiness, at("2026-11-01T00:10:00Z"), statuses).is_empty());
        let reasons = failing_connections(&readiness, at("2026-11-01T00:16:00Z"), statuses);
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons.iter().all(|reason| reason.failing_seconds == Some(960)));
        // Never pulled yet: nothing to judge.
        assert!(failing_connections(&readiness, at("2026-11-02T00:00:00Z"), |_, _| None).is_empty());
    }
}
