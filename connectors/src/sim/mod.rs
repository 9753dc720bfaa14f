//! What the vendor simulators share: runtime fault switches, call counters, the loopback server
//! and the seeded sales "world" each simulator renders in its vendor's shapes.
//!
//! Every simulator exposes two extra routes next to the vendor API:
//! - `GET /__sim/stats` → [`SimStats`] (calls by kind, so tests and `bench` can count API calls);
//! - `POST /__sim/faults` with a [`FaultSettings`] JSON body → switches faults at runtime;
//! - `GET /__sim/served` → [`Served`]: the bytes of every vendor API response body so far (what
//!   `bench` compares the store's size with: the JSON size of the vendor data).

mod world;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

pub use world::{PRODUCTS, World, WorldAccount, WorldLead, WorldOpportunity, WorldOrder, WorldOrderLine, WorldSize};

/// Fault switches, settable at start and at runtime. Zero means "off" for every counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Access tokens stop working after this many API calls (the client must refresh).
    pub token_expiry_after_calls: u64,
    /// After this many API calls in total, answer with the vendor's rate-limit error …
    pub rate_limit_after_calls: u64,
    /// … for this many calls (then the quota "resets").
    pub rate_limit_for_calls: u64,
    /// Every Nth API call fails with a 5xx.
    pub server_error_every: u64,
    /// Added latency per call, in milliseconds.
    pub latency_ms: u64,
    /// The next N data responses are cut off in the middle of the body.
    pub truncate_next: u64,
    /// Responses carry a field the connector has never seen.
    pub schema_drift_unknown_field: bool,
    /// A mapped field is renamed in responses (the connector must stop that entity with a clear error).
    pub schema_drift_renamed_field: bool,
}

/// The live fault state of one simulator.
#[derive(Default)]
pub struct Faults {
    token_expiry_after_calls: AtomicU64,
    rate_limit_after_calls: AtomicU64,
    rate_limit_for_calls: AtomicU64,
    server_error_every: AtomicU64,
    latency_ms: AtomicU64,
    truncate_next: AtomicU64,
    schema_drift_unknown_field: AtomicBool,
    schema_drift_renamed_field: AtomicBool,
    calls: AtomicU64,
    calls_since_token: AtomicU64,
    rate_limited_calls: AtomicU64,
}

/// What a simulator decides for one API call before serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Serve normally.
    None,
    /// The token has expired: answer 401 in the vendor's shape.
    TokenExpired,
    /// Answer the vendor's rate-limit error.
    RateLimited,
    /// Answer a 5xx.
    ServerError,
}

impl Faults {
    /// Builds the fault state from settings.
    pub fn new(settings: &FaultSettings) -> Self {
        let faults = Self::default();
        faults.apply(settings);
        faults
    }

    /// Replaces every switch.
    pub fn apply(&self, settings: &FaultSettings) {
        self.token_expiry_after_calls.store(settings.token_expiry_after_calls, Ordering::SeqCst);
        self.rate_limit_after_calls.store(settings.rate_limit_after_calls, Ordering::SeqCst);
        self.rate_limit_for_calls.store(settings.rate_limit_for_calls, Ordering::SeqCst);
        self.server_error_every.store(settings.server_error_every, Ordering::SeqCst);
        self.latency_ms.store(settings.latency_ms, Ordering::SeqCst);
        self.truncate_next.store(settings.truncate_next, Ordering::SeqCst);
        self.schema_drift_unknown_field.store(settings.schema_drift_unknown_field, Ordering::SeqCst);
        self.schema_drift_renamed_field.store(settings.schema_drift_renamed_field, Ordering::SeqCst);
        self.calls.store(0, Ordering::SeqCst);
        self.rate_limited_calls.store(0, Ordering::SeqCst);
    }

    /// Returns the current switches.
    pub fn settings(&self) -> FaultSettings {
        FaultSettings {
            token_expiry_after_calls: self.token_expiry_after_calls.load(Ordering::SeqCst),
            rate_limit_after_calls: self.rate_limit_after_calls.load(Ordering::SeqCst),
            rate_limit_for_calls: self.rate_limit_for_calls.load(Ordering::SeqCst),
            server_error_every: self.server_error_every.load(Ordering::SeqCst),
            latency_ms: self.latency_ms.load(Ordering::SeqCst),
            truncate_next: self.truncate_next.load(Ordering::SeqCst),
            schema_drift_unknown_field: self.schema_drift_unknown_field.load(Ordering::SeqCst),
            schema_drift_renamed_field: self.schema_drift_renamed_field.load(Ordering::SeqCst),
        }
    }

    /// Called when a token is issued: the expiry countdown restarts.
    pub fn token_issued(&self) {
        self.calls_since_token.store(0, Ordering::SeqCst);
    }

    /// Applies latency and decides the fault for one authenticated API call.
    pub async fn on_api_call(&self) -> Injected {
        let latency = self.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let since_token = self.calls_since_token.fetch_add(1, Ordering::SeqCst) + 1;
        let expiry = self.token_expiry_after_calls.load(Ordering::SeqCst);
        if expiry > 0 && since_token > expiry {
            return Injected::TokenExpired;
        }
        let limit_after = self.rate_limit_after_calls.load(Ordering::SeqCst);
        if limit_after > 0 && call > limit_after {
            let limited = self.rate_limited_calls.fetch_add(1, Ordering::SeqCst);
            if limited < self.rate_limit_for_calls.load(Ordering::SeqCst) {
                return Injected::RateLimited;
            }
        }
        let every = self.server_error_every.load(Ordering::SeqCst);
        if every > 0 && call.is_multiple_of(every) {
            return Injected::ServerError;
        }
        Injected::None
    }

    /// Returns whether this data response should be truncated (and counts it down).
    pub fn take_truncation(&self) -> bool {
        self.truncate_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok()
    }

    /// Returns whether responses carry an unknown extra field.
    pub fn drift_unknown_field(&self) -> bool {
        self.schema_drift_unknown_field.load(Ordering::SeqCst)
    }

    /// Returns whether a mapped field is renamed in responses.
    pub fn drift_renamed_field(&self) -> bool {
        self.schema_drift_renamed_field.load(Ordering::SeqCst)
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
        let router = router
            .route(
                "/__sim/served",
                get(move || async move { Json(Served { response_bytes: reported.load(Ordering::Relaxed) }) }),
            )
            .layer(axum::middleware::from_fn_with_state(served, count_served));
        let shutdown = tokio_util_like::Shutdown::default();
        let signal = shutdown.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(async move { signal.wait().await }).await;
            if let Err(error) = served {
                tracing::warn!(error = %error, "simulator stopped with an error");
            }
        });
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
        let expiring = Faults::new(&FaultSettings { token_expiry_after_calls: 1, ..FaultSettings::default() });
        assert_eq!(expiring.on_api_call().await, None);
        assert_eq!(expiring.on_api_call().await, TokenExpired);
        expiring.token_issued();
        assert_eq!(expiring.on_api_call().await, None);
    }

    #[test]
    fn truncation_counts_down() {
        let faults = Faults::new(&FaultSettings { truncate_next: 1, ..FaultSettings::default() });
        assert!(faults.take_truncation());
        assert!(!faults.take_truncation());
    }
}
