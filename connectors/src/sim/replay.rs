//! Bench serving mode: a simulator records the answers it renders once, then serves them again from
//! memory, so `crmsync bench` measures crmsync and not the simulators.
//!
//! `POST /__sim/replay` with `{"mode": "record"}` starts recording: every vendor API call is served
//! live and its answer (status, headers, body) is kept under the request (method, path and query,
//! headers but `Authorization`, body). `{"mode": "replay"}` then answers each request with the
//! answers recorded for it, in the order they were recorded (a status poll that said "in progress"
//! and then "done" says so again), each answer once; a request with none left is served live and
//! counted as a miss. `{"mode": "off"}` forgets everything. Every mode change answers with the
//! counts so far ([`ReplayStats`]).
//!
//! A replayed answer skips the simulator entirely: no fault switch, no call counter, no state
//! change. That is the point (its cost is a hash lookup and a copy of the recorded headers); it is
//! only faithful while the simulated data does not change between the recording and the replay,
//! which is how `bench` uses it (a warm-up pull records, the measured pull replays; nothing writes).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// What a simulator does with the answers it renders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayMode {
    /// Serve every call live (the default).
    #[default]
    Off,
    /// Serve live and record each answer.
    Record,
    /// Answer from the recording where it has an answer left; live otherwise.
    Replay,
}

/// The body of `POST /__sim/replay`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySwitch {
    /// The new mode.
    pub mode: ReplayMode,
}

/// Counts of the bench serving mode, returned by `POST /__sim/replay`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayStats {
    /// The mode now in force.
    pub mode: ReplayMode,
    /// Answers recorded.
    pub recorded: u64,
    /// Bytes of the recorded answers' bodies.
    pub recorded_bytes: u64,
    /// Calls answered from the recording.
    pub replayed: u64,
    /// Calls in replay mode that had no recorded answer left (served live).
    pub missed: u64,
}

/// One recorded answer.
struct Recorded {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct Recording {
    stats: ReplayStats,
    answers: HashMap<Vec<u8>, VecDeque<Recorded>>,
}

/// The serving mode's state, shared by the middleware and the admin route.
#[derive(Clone, Default)]
pub(crate) struct Replay(Arc<Mutex<Recording>>);

/// Recorded request bodies larger than this are not replayed (no vendor read sends one).
const BODY_LIMIT: usize = 4 * 1024 * 1024;

impl Replay {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mode(&self) -> ReplayMode {
        self.lock().stats.mode
    }
}

/// The key of a request: method, path and query, headers (but the access token, which a client may
/// renew at any time) and body.
fn request_key(parts: &axum::http::request::Parts, body: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(256 + body.len());
    key.extend_from_slice(parts.method.as_str().as_bytes());
    key.push(b' ');
    key.extend_from_slice(parts.uri.path_and_query().map_or("", |path| path.as_str()).as_bytes());
    let mut headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION && *name != header::CONTENT_LENGTH && *name != header::HOST)
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    headers.sort_unstable();
    for (name, value) in headers {
        key.push(b'\n');
        key.extend_from_slice(name.as_bytes());
        key.push(b':');
        key.extend_from_slice(value);
    }
    key.extend_from_slice(b"\n\n");
    key.extend_from_slice(body);
    key
}

/// The middleware: records, replays, or passes through.
pub(crate) async fn serve(State(replay): State<Replay>, request: Request, next: Next) -> Response {
    let mode = replay.mode();
    if mode == ReplayMode::Off || request.uri().path().starts_with("/__sim/") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large for the bench serving mode").into_response();
    };
    let key = request_key(&parts, &body);
    if mode == ReplayMode::Replay {
        let mut recording = replay.lock();
        let answer = recording.answers.get_mut(&key).and_then(VecDeque::pop_front);
        match answer {
            Some(answer) => {
                recording.stats.replayed += 1;
                let mut response = Response::new(Body::from(answer.body));
                *response.status_mut() = answer.status;
                *response.headers_mut() = answer.headers;
                return response;
            }
            None => recording.stats.missed += 1,
        }
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if mode != ReplayMode::Record {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut recording = replay.lock();
    // The mode may have changed while the answer was rendered: record only if it still records.
    if recording.stats.mode == ReplayMode::Record {
        recording.stats.recorded += 1;
        recording.stats.recorded_bytes += body.len() as u64;
        let answer = Recorded { status: parts.status, headers: parts.headers.clone(), body: body.clone() };
        recording.answers.entry(key).or_default().push_back(answer);
    }
    Response::from_parts(parts, Body::from(body))
}

/// `POST /__sim/replay`: switches the mode and answers with the counts so far. Switching to `off`
/// (or to `record` again) forgets the recording.
pub(crate) async fn switch(State(replay): State<Replay>, Json(switch): Json<ReplaySwitch>) -> Json<ReplayStats> {
    let mut recording = replay.lock();
    let stats = ReplayStats { mode: switch.mode, ..recording.stats.clone() };
    if switch.mode != ReplayMode::Replay {
        recording.answers.clear();
        recording.stats = ReplayStats::default();
    }
    recording.stats.mode = switch.mode;
    Json(stats)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::Router;
    use axum::routing::get;

    use super::*;
    use crate::sim::SimServer;

    async fn switch_to(http: &reqwest::Client, base: &str, mode: &str) -> ReplayStats {
        let body = serde_json::json!({ "mode": mode });
        http.post(format!("{base}/__sim/replay")).json(&body).send().await.unwrap().json().await.unwrap()
    }

    #[tokio::test]
    async fn replay_serves_each_recorded_answer_once_in_order_then_falls_back_to_live() {
        // A status poll whose answer changes: "in progress" twice, then "done".
        let polls = Arc::new(AtomicU64::new(0));
        let counter = polls.clone();
        let router = Router::new().route(
            "/job",
            get(move || {
                let call = counter.fetch_add(1, Ordering::SeqCst);
                async move { if call < 2 { "in progress" } else { "done" } }
            }),
        );
        let server = SimServer::serve("127.0.0.1:0".parse().unwrap(), router).await.unwrap();
        let (http, base) = (reqwest::Client::new(), server.base_url());
        let get_job = |token: &'static str| {
            let request = http.get(format!("{base}/job")).bearer_auth(token);
            async move { request.send().await.unwrap().text().await.unwrap() }
        };
        assert_eq!(switch_to(&http, &base, "record").await.mode, ReplayMode::Record);
        for expected in ["in progress", "in progress", "done"] {
            assert_eq!(get_job("first-token").await, expected);
        }
        let recorded = switch_to(&http, &base, "replay").await;
        assert_eq!((recorded.recorded, recorded.recorded_bytes), (3, 26));
        // Replayed with another access token: the same answers in the same order, none rendered.
        for expected in ["in progress", "in progress", "done"] {
            assert_eq!(get_job("renewed-token").await, expected);
        }
        assert_eq!(polls.load(Ordering::SeqCst), 3, "replayed answers never reach the handler");
        // Nothing recorded is left: served live (and counted as a miss).
        assert_eq!(get_job("renewed-token").await, "done");
        assert_eq!(polls.load(Ordering::SeqCst), 4);
        let replayed = switch_to(&http, &base, "off").await;
        assert_eq!((replayed.replayed, replayed.missed), (3, 1));
        // Off forgets the recording; answers in this mode are live and nothing is counted.
        assert_eq!(get_job("x").await, "done");
        assert_eq!(
            switch_to(&http, &base, "replay").await,
            ReplayStats { mode: ReplayMode::Replay, ..Default::default() }
        );
    }

    #[tokio::test]
    async fn a_request_with_another_query_or_body_is_not_answered_from_the_recording() {
        let router = Router::new().route(
            "/echo",
            axum::routing::post(|query: axum::extract::RawQuery, body: String| async move {
                format!("{}|{body}", query.0.unwrap_or_default())
            }),
        );
        let server = SimServer::serve("127.0.0.1:0".parse().unwrap(), router).await.unwrap();
        let (http, base) = (reqwest::Client::new(), server.base_url());
        let post = |query: &'static str, body: &'static str| {
            let request = http.post(format!("{base}/echo?{query}")).body(body);
            async move { request.send().await.unwrap().text().await.unwrap() }
        };
        switch_to(&http, &base, "record").await;
        assert_eq!(post("a=1", "x").await, "a=1|x");
        switch_to(&http, &base, "replay").await;
        assert_eq!(post("a=2", "x").await, "a=2|x");
        assert_eq!(post("a=1", "y").await, "a=1|y");
        assert_eq!(post("a=1", "x").await, "a=1|x");
        let stats = switch_to(&http, &base, "off").await;
        assert_eq!((stats.replayed, stats.missed), (1, 2));
    }
}
