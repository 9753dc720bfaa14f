//! What the vendor simulators share: runtime fault switches, call counters, the loopback server
//! and the seeded sales "world" each simulator renders in its vendor's shapes.
//!
//! Every simulator exposes two extra routes next to the vendor API:
//! - `GET /__sim/stats` → [`SimStats`] (calls by kind, so tests and `bench` can count API calls);
//! - `POST /__sim/faults` with a [`FaultSettings`] JSON body → switches faults at runtime;
//! - `GET /__sim/served` → [`Served`]: the bytes of every vendor API response body so far (what
//!   `bench` compares the store's size with: the JSON size of the vendor data);
//! - `POST /__sim/replay` with a [`ReplaySwitch`] → the bench serving mode ([`replay`](mod@replay)):
//!   answers rendered once are served again from memory.

pub mod replay;
mod world;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use replay::{ReplayMode, ReplayStats, ReplaySwitch};
pub use world::{PRODUCTS, World, WorldAccount, WorldLead, WorldOpportunity, WorldOrder, WorldOrderLine, WorldSize};

/// Fault switches, settable at start and at runtime. Zero means "off" for every counter and rate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Access tokens stop working after this many API calls (the client must refresh).
    pub token_expiry_after_calls: u64,
    /// After this many API calls in total, answer with the vendor's rate-limit error …
    pub rate_limit_after_calls: u64,
    /// … for this many calls (then the quota "resets").
    pub rate_limit_for_calls: u64,
    /// Admit at most this many API calls per second; answer the rest with the vendor's documented
    /// throttling answer (Salesforce 403 `REQUEST_LIMIT_EXCEEDED` for concurrent requests, Zoho 429
    /// `TOO_MANY_REQUESTS` with `X-RATELIMIT-*`, Dataverse 429 with `Retry-After`).
    pub throttle_per_second: u64,
    /// The org's daily API allocation is spent: every API call gets the vendor's daily-limit answer
    /// (Salesforce `TotalRequests Limit exceeded.`).
    pub daily_limit_exhausted: bool,
    /// Every Nth API call fails with a 5xx.
    pub server_error_every: u64,
    /// After this many API calls, every call fails with a 5xx until the switches change (an outage
    /// longer than any retry budget).
    pub outage_after_calls: u64,
    /// This percentage of API calls, drawn at random, fail with a 5xx.
    pub server_error_percent: u64,
    /// Added latency per call, in milliseconds.
    pub latency_ms: u64,
    /// The next N data responses are cut off in the middle of the body.
    pub truncate_next: u64,
    /// This percentage of data responses, drawn at random, are cut off in the middle of the body
    /// (valid HTTP framing: the length is that of the cut body).
    pub truncate_percent: u64,
    /// This percentage of records read, drawn at random, carry their numbers as strings (`"1112.5"`),
    /// as after a column's type was changed in the vendor.
    pub drift_percent: u64,
    /// This percentage of records read, drawn at random, carry their numbers as text no reader can
    /// take for a number (`"about 1112.5"`): the connector must set them aside, not guess.
    pub garble_percent: u64,
    /// Seed of the random draws, so a run with faults can be repeated exactly.
    pub seed: u64,
    /// Responses carry a field the connector has never seen.
    pub schema_drift_unknown_field: bool,
    /// A mapped field is renamed in responses (the connector must stop that entity with a clear error).
    pub schema_drift_renamed_field: bool,
}

/// The live fault state of one simulator.
pub struct Faults {
    settings: Mutex<FaultSettings>,
    calls: AtomicU64,
    calls_since_token: AtomicU64,
    rate_limited_calls: AtomicU64,
    truncated: AtomicU64,
    cut: AtomicU64,
    drifted: AtomicU64,
    garbled: Mutex<Vec<String>>,
    window: Mutex<Window>,
    rng: Mutex<StdRng>,
}

/// The one-second window of [`FaultSettings::throttle_per_second`].
struct Window {
    started: Option<tokio::time::Instant>,
    admitted: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new(&FaultSettings::default())
    }
}

/// What a simulator decides for one API call before serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Serve normally.
    None,
    /// The token has expired: answer 401 in the vendor's shape.
    TokenExpired,
    /// Answer the vendor's rate-limit error (the `rate_limit_*` switches).
    RateLimited,
    /// Answer the vendor's throttling answer: more calls this second than allowed. `retry_after` is
    /// the time until the window frees (for vendors that say so).
    Throttled {
        /// Until the next window.
        retry_after: Duration,
    },
    /// Answer the vendor's daily-limit error.
    DailyLimit,
    /// Answer a 5xx.
    ServerError,
}

impl Faults {
    /// Builds the fault state from settings.
    pub fn new(settings: &FaultSettings) -> Self {
        let faults = Self {
            settings: Mutex::new(FaultSettings::default()),
            calls: AtomicU64::new(0),
            calls_since_token: AtomicU64::new(0),
            rate_limited_calls: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            drifted: AtomicU64::new(0),
            garbled: Mutex::new(Vec::new()),
            window: Mutex::new(Window { started: None, admitted: 0 }),
            rng: Mutex::new(StdRng::seed_from_u64(0)),
        };
        faults.apply(settings);
        faults
    }

    /// Replaces every switch (and restarts the counters and the random draws).
    pub fn apply(&self, settings: &FaultSettings) {
        if let Ok(mut current) = self.settings.lock() {
            *current = settings.clone();
        }
        if let Ok(mut rng) = self.rng.lock() {
            *rng = StdRng::seed_from_u64(settings.seed);
        }
        if let Ok(mut window) = self.window.lock() {
            *window = Window { started: None, admitted: 0 };
        }
        self.truncated.store(0, Ordering::SeqCst);
        self.cut.store(0, Ordering::SeqCst);
        self.drifted.store(0, Ordering::SeqCst);
        if let Ok(mut garbled) = self.garbled.lock() {
            garbled.clear();
        }
        self.calls.store(0, Ordering::SeqCst);
        self.rate_limited_calls.store(0, Ordering::SeqCst);
    }

    /// Returns the current switches.
    pub fn settings(&self) -> FaultSettings {
        self.settings.lock().map(|settings| settings.clone()).unwrap_or_default()
    }

    /// Called when a token is issued: the expiry countdown restarts.
    pub fn token_issued(&self) {
        self.calls_since_token.store(0, Ordering::SeqCst);
    }

    /// Draws whether an event of `percent` % happens.
    fn draw(&self, percent: u64) -> bool {
        percent > 0 && self.rng.lock().is_ok_and(|mut rng| rng.random_range(0..100) < percent)
    }

    /// Applies latency and decides the fault for one authenticated API call.
    pub async fn on_api_call(&self) -> Injected {
        let settings = self.settings();
        if settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let since_token = self.calls_since_token.fetch_add(1, Ordering::SeqCst) + 1;
        if settings.token_expiry_after_calls > 0 && since_token > settings.token_expiry_after_calls {
            return Injected::TokenExpired;
        }
        if settings.daily_limit_exhausted {
            return Injected::DailyLimit;
        }
        if settings.throttle_per_second > 0
            && let Some(retry_after) = self.over_rate(settings.throttle_per_second)
        {
            return Injected::Throttled { retry_after };
        }
        if settings.rate_limit_after_calls > 0 && call > settings.rate_limit_after_calls {
            let limited = self.rate_limited_calls.fetch_add(1, Ordering::SeqCst);
            if limited < settings.rate_limit_for_calls {
                return Injected::RateLimited;
            }
        }
        if settings.outage_after_calls > 0 && call > settings.outage_after_calls {
            return Injected::ServerError;
        }
        if settings.server_error_every > 0 && call.is_multiple_of(settings.server_error_every) {
            return Injected::ServerError;
        }
        if self.draw(settings.server_error_percent) {
            return Injected::ServerError;
        }
        Injected::None
    }

    /// Admits a call into the current one-second window, or returns the time until the next one.
    fn over_rate(&self, per_second: u64) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let mut window = self.window.lock().ok()?;
        let started = match window.started {
            Some(started) if now.duration_since(started) < Duration::from_secs(1) => started,
            _ => {
                *window = Window { started: Some(now), admitted: 0 };
                now
            }
        };
        if window.admitted < per_second {
            window.admitted += 1;
            return None;
        }
        Some(Duration::from_secs(1).saturating_sub(now.duration_since(started)))
    }

    /// Returns whether this data response should be truncated (the `truncate_next` countdown, or a
    /// draw of `truncate_percent`).
    pub fn take_truncation(&self) -> bool {
        let settings = self.settings();
        let counted = self.truncated.fetch_add(1, Ordering::SeqCst) < settings.truncate_next;
        let cut = counted || self.draw(settings.truncate_percent);
        if cut {
            self.cut.fetch_add(1, Ordering::SeqCst);
        }
        cut
    }

    /// Returns how many responses were truncated since the switches were last set.
    pub fn truncated_responses(&self) -> u64 {
        self.cut.load(Ordering::SeqCst)
    }

    /// Returns how many records were drifted since the switches were last set.
    pub fn drifted_records(&self) -> u64 {
        self.drifted.load(Ordering::SeqCst)
    }

    /// Drifts a record read (a draw of `drift_percent`): its numbers, and those of its line items,
    /// become strings with the same digits, as a column whose type was changed would send them.
    /// Returns whether it did.
    pub fn drift(&self, record: &mut serde_json::Map<String, serde_json::Value>) -> bool {
        if !self.draw(self.settings().drift_percent) {
            return false;
        }
        drift_numbers(record);
        self.drifted.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Garbles a record read (a draw of `garble_percent`): its numbers become text that is not a
    /// number (`"about 1112.5"`). `id` names the record in [`Faults::garbled_records`]. Returns whether
    /// it did (a record without numbers is left alone).
    pub fn garble(&self, id: &str, record: &mut serde_json::Map<String, serde_json::Value>) -> bool {
        let percent = self.settings().garble_percent;
        if percent == 0 || !record.values().any(serde_json::Value::is_number) || !self.draw(percent) {
            return false;
        }
        for value in record.values_mut() {
            if let serde_json::Value::Number(number) = value {
                *value = serde_json::Value::String(format!("about {number}"));
            }
        }
        if let Ok(mut garbled) = self.garbled.lock() {
            garbled.push(id.to_owned());
        }
        true
    }

    /// Returns the ids of the records garbled since the switches were last set, in order.
    pub fn garbled_records(&self) -> Vec<String> {
        self.garbled.lock().map(|garbled| garbled.clone()).unwrap_or_default()
    }

    /// Returns whether responses carry an unknown extra field.
    pub fn drift_unknown_field(&self) -> bool {
        self.settings().schema_drift_unknown_field
    }

    /// Returns whether a mapped field is renamed in responses.
    pub fn drift_renamed_field(&self) -> bool {
        self.settings().schema_drift_renamed_field
    }
}

/// Turns a record's numbers into strings: top-level values and those of objects in arrays (line
/// items); nested objects (a sub-query's envelope, a lookup) keep theirs.
pub fn drift_numbers(record: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    for value in record.values_mut() {
        match value {
            Value::Number(number) => *value = Value::String(number.to_string()),
            Value::Array(items) => {
                for item in items.iter_mut() {
                    if let Value::Object(line) = item {
                        drift_numbers(line);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Cuts a body in half (a truncated transfer, as a dropped connection would leave it).
pub fn truncate(body: &[u8]) -> Vec<u8> {
    body[..body.len() / 2].to_vec()
}

/// Calls served, by kind.
#[derive(Default)]
pub struct Counters {
    /// Token endpoint calls.
    pub token: AtomicU64,
    /// Data reads (query pages, record lists, delta pages, describe).
    pub read: AtomicU64,
    /// Writes (collections, upserts, `$batch`).
    pub write: AtomicU64,
    /// Calls refused by an injected fault.
    pub faulted: AtomicU64,
}

/// A snapshot of [`Counters`] plus record totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Token endpoint calls.
    pub token_calls: u64,
    /// Data reads.
    pub read_calls: u64,
    /// Writes.
    pub write_calls: u64,
    /// Calls refused by an injected fault.
    pub faulted_calls: u64,
    /// Live records per vendor object.
    pub records: std::collections::BTreeMap<String, u64>,
}

impl Counters {
    /// Returns the counts.
    pub fn snapshot(&self) -> SimStats {
        SimStats {
            token_calls: self.token.load(Ordering::SeqCst),
            read_calls: self.read.load(Ordering::SeqCst),
            write_calls: self.write.load(Ordering::SeqCst),
            faulted_calls: self.faulted.load(Ordering::SeqCst),
            records: Default::default(),
        }
    }
}

/// What every simulator exposes to the shared admin routes.
pub trait Simulated: Send + Sync + 'static {
    /// The live faults.
    fn faults(&self) -> &Faults;
    /// Call counters and record totals.
    fn stats(&self) -> SimStats;
}

/// Adds `/__sim/stats` and `/__sim/faults` to a simulator's router.
pub fn admin_routes<S: Simulated>(state: Arc<S>) -> Router {
    async fn stats<S: Simulated>(State(state): State<Arc<S>>) -> Json<SimStats> {
        Json(state.stats())
    }
    async fn set_faults<S: Simulated>(
        State(state): State<Arc<S>>,
        Json(settings): Json<FaultSettings>,
    ) -> Json<FaultSettings> {
        state.faults().apply(&settings);
        Json(state.faults().settings())
    }
    Router::new().route("/__sim/stats", get(stats::<S>)).route("/__sim/faults", post(set_faults::<S>)).with_state(state)
}

/// A simulator serving on loopback, with its state for tests and the demo.
pub struct RunningSim<S> {
    server: SimServer,
    state: Arc<S>,
}

impl<S> RunningSim<S> {
    /// Serves `router` (built over `state`) on `addr`.
    pub async fn serve(addr: SocketAddr, state: Arc<S>, router: Router) -> std::io::Result<Self> {
        Ok(Self { server: SimServer::serve(addr, router).await?, state })
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The state (counters, faults, data).
    pub fn state(&self) -> Arc<S> {
        self.state.clone()
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// What a simulator has served (`GET /__sim/served`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// Bytes of the vendor API response bodies (the admin routes excluded).
    pub response_bytes: u64,
}

/// Adds the body size of every vendor API response to `counter`.
async fn count_served(
    State(counter): State<Arc<AtomicU64>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let is_admin = request.uri().path().starts_with("/__sim/");
    let response = next.run(request).await;
    if !is_admin && let Some(bytes) = axum::body::HttpBody::size_hint(response.body()).exact() {
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
    response
}

/// Serves HTTP/1.1 connections until `signal`, then lets the requests in flight finish.
///
/// Header names go out title-cased (`Content-Type`, `Sforce-Locator`), as the vendors' own servers
/// send them and their documentation shows them. Header names are case-insensitive (RFC 9110
/// §5.1), but some clients are not: Airbyte's CDK looks the Bulk API result's encoding up as
/// `headers.get("content-type")` in a plain dict, and on finding it (hyper's default lower case)
/// splits it with a parser that fails on `text/csv`, so against lower-case names it read no
/// Bulk API object at all.
async fn accept_loop(listener: tokio::net::TcpListener, router: Router, signal: tokio_util_like::Shutdown) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a moment, as axum::serve does.
                    tracing::warn!(error = %error, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = signal.wait() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let signal = signal.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = signal.wait() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap the connections that have ended.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// A running simulator on loopback.
pub struct SimServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: tokio_util_like::Shutdown,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Serves `router` on `addr` (port 0 picks a free port) until [`SimServer::stop`] or drop.
    pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let reported = served.clone();
        let replay = replay::Replay::default();
        // Replayed answers are counted as served: they are the same vendor JSON.
        let router = router
            .route(
                "/__sim/served",
                get(move || async move { Json(Served { response_bytes: reported.load(Ordering::Relaxed) }) }),
            )
            .route("/__sim/replay", post(replay::switch).with_state(replay.clone()))
            .layer(axum::middleware::from_fn_with_state(replay, replay::serve))
            .layer(axum::middleware::from_fn_with_state(served, count_served));
        let shutdown = tokio_util_like::Shutdown::default();
        let signal = shutdown.clone();
        let task = tokio::spawn(accept_loop(listener, router, signal));
        Ok(Self { addr, shutdown, task: Some(task) })
    }

    /// Returns `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

mod tokio_util_like {
    //! A one-shot, cloneable shutdown signal.
    use std::sync::Arc;

    use tokio::sync::watch;

    #[derive(Clone)]
    pub(super) struct Shutdown(Arc<watch::Sender<bool>>);

    impl Default for Shutdown {
        fn default() -> Self {
            Self(Arc::new(watch::channel(false).0))
        }
    }

    impl Shutdown {
        pub(super) fn trigger(&self) {
            self.0.send_replace(true);
        }

        pub(super) async fn wait(&self) {
            let mut receiver = self.0.subscribe();
            let _ = receiver.wait_for(|stopped| *stopped).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn faults_fire_in_order_and_reset() {
        let faults = Faults::new(&FaultSettings {
            rate_limit_after_calls: 2,
            rate_limit_for_calls: 1,
            server_error_every: 5,
            ..FaultSettings::default()
        });
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(faults.on_api_call().await);
        }
        use Injected::*;
        assert_eq!(seen, [None, None, RateLimited, None, ServerError, None]);
        let outage = Faults::new(&FaultSettings { outage_after_calls: 1, ..FaultSettings::default() });
        assert_eq!(outage.on_api_call().await, None);
        assert_eq!([outage.on_api_call().await, outage.on_api_call().await], [ServerError, ServerError]);
        let expiring = Faults::new(&FaultSettings { token_expiry_after_calls: 1, ..FaultSettings::default() });
        assert_eq!(expiring.on_api_call().await, None);
        assert_eq!(expiring.on_api_call().await, TokenExpired);
        expiring.token_issued();
        assert_eq!(expiring.on_api_call().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_admits_n_calls_per_second_and_says_when_the_window_frees() {
        let faults = Faults::new(&FaultSettings { throttle_per_second: 2, ..FaultSettings::default() });
        assert_eq!(faults.on_api_call().await, Injected::None);
        assert_eq!(faults.on_api_call().await, Injected::None);
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(faults.on_api_call().await, Injected::Throttled { retry_after: Duration::from_millis(600) });
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(faults.on_api_call().await, Injected::None, "a new second, a new window");
    }

    #[tokio::test]
    async fn random_faults_hit_about_their_rate_and_repeat_with_the_seed() {
        let settings = FaultSettings { server_error_percent: 30, seed: 7, ..FaultSettings::default() };
        let draw = |faults: Faults| async move {
            let mut seen = Vec::new();
            for _ in 0..1000 {
                seen.push(faults.on_api_call().await == Injected::ServerError);
            }
            seen
        };
        let first = draw(Faults::new(&settings)).await;
        let failures = first.iter().filter(|failed| **failed).count();
        assert!((250..=350).contains(&failures), "{failures} of 1000");
        assert_eq!(first, draw(Faults::new(&settings)).await, "the same seed, the same faults");
        let daily = Faults::new(&FaultSettings { daily_limit_exhausted: true, ..FaultSettings::default() });
        assert_eq!(daily.on_api_call().await, Injected::DailyLimit);
    }

    #[test]
    fn drifted_records_carry_the_same_digits_as_strings() {
        let faults = Faults::new(&FaultSettings { drift_percent: 100, ..FaultSettings::default() });
        let mut record = serde_json::json!({
            "Amount": 1112.5, "Quantity": 5.0, "Name": "Acme", "Closed": false,
            "Account": {"id": 7}, "Lines": [{"quantity": 2, "name": "x"}]
        });
        let serde_json::Value::Object(map) = &mut record else { unreachable!() };
        assert!(faults.drift(map));
        assert_eq!(
            record,
            serde_json::json!({
                "Amount": "1112.5", "Quantity": "5.0", "Name": "Acme", "Closed": false,
                "Account": {"id": 7}, "Lines": [{"quantity": "2", "name": "x"}]
            })
        );
        let calm = Faults::new(&FaultSettings::default());
        assert!(!calm.drift(&mut serde_json::Map::new()));
    }

    #[test]
    fn truncation_counts_down() {
        let faults = Faults::new(&FaultSettings { truncate_next: 1, ..FaultSettings::default() });
        assert!(faults.take_truncation());
        assert!(!faults.take_truncation());
    }
}
