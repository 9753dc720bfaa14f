//! Wiring and lifecycle only: builds the connectors (the one `match` over vendor configs), opens the
//! store, starts the ingest writer, and runs either one sync pass or the daemon's loops.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use crmsync_connectors::canonical::{ConnectionId, Entity, EntityData, ExternalId, Timestamp, VendorKind};
use crmsync_connectors::dynamics365::Dynamics365Connector;
use crmsync_connectors::salesforce::{SalesforceAuth, SalesforceConnector};
use crmsync_connectors::zoho::ZohoConnector;
use crmsync_connectors::{
    ApiEvent, ApiUsage, CheckReport, Connector, ConnectorError, ConnectorHost, Cursor, Fetched, IdPage, Outgoing, Page,
    PushReport, SharedHost, WebhookDelivery, WebhookError, WebhookParser, WebhookReply,
};
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;

use crate::config::{Config, VendorConfig};
use crate::ingest::{IngestHandle, IngestRules, Ingestor};
use crate::store::sealed::StateKey;
use crate::store::{Store, StoreError, StoreOptions};
use crate::telemetry;

/// One configured connection, whatever its vendor.
pub enum AnyConnector {
    /// Salesforce.
    Salesforce(SalesforceConnector),
    /// Zoho CRM.
    Zoho(ZohoConnector),
    /// Microsoft Dynamics 365 (Dataverse).
    Dynamics365(Dynamics365Connector),
}

macro_rules! dispatch {
    ($self:ident, $connector:ident => $call:expr) => {
        match $self {
            AnyConnector::Salesforce($connector) => $call,
            AnyConnector::Zoho($connector) => $call,
            AnyConnector::Dynamics365($connector) => $call,
        }
    };
}

impl AnyConnector {
    /// Periodic vendor upkeep: renews Zoho's notification channel before it expires.
    pub async fn maintain(&self) -> Result<(), ConnectorError> {
        match self {
            Self::Salesforce(_) | Self::Dynamics365(_) => Ok(()),
            Self::Zoho(connector) => connector.ensure_watch_channel().await.map(|_| ()),
        }
    }
}

impl WebhookParser for AnyConnector {
    fn parse_webhook(&self, delivery: &WebhookDelivery<'_>) -> Result<WebhookReply, WebhookError> {
        dispatch!(self, connector => connector.parse_webhook(delivery))
    }
}

impl Connector for AnyConnector {
    fn id(&self) -> &ConnectionId {
        dispatch!(self, connector => connector.id())
    }

    fn kind(&self) -> VendorKind {
        dispatch!(self, connector => connector.kind())
    }

    fn entities(&self) -> &[Entity] {
        dispatch!(self, connector => connector.entities())
    }

    fn push_batch_size(&self) -> usize {
        dispatch!(self, connector => connector.push_batch_size())
    }

    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        dispatch!(self, connector => connector.check().await)
    }

    async fn pull(&self, entity: Entity, cursor: Option<&Cursor>) -> Result<Page, ConnectorError> {
        dispatch!(self, connector => connector.pull(entity, cursor).await)
    }

    async fn fetch(&self, entity: Entity, ids: &[ExternalId]) -> Result<Fetched, ConnectorError> {
        dispatch!(self, connector => connector.fetch(entity, ids).await)
    }

    async fn list_ids(&self, entity: Entity, cursor: Option<&Cursor>) -> Result<IdPage, ConnectorError> {
        dispatch!(self, connector => connector.list_ids(entity, cursor).await)
    }

    async fn push(&self, entity: Entity, batch: &[Outgoing]) -> Result<PushReport, ConnectorError> {
        dispatch!(self, connector => connector.push(entity, batch).await)
    }

    fn usage(&self) -> ApiUsage {
        dispatch!(self, connector => connector.usage())
    }

    fn representable(&self, data: &EntityData) -> EntityData {
        dispatch!(self, connector => connector.representable(data))
    }
}

/// The daemon's [`ConnectorHost`]: connector state in the store (durable on save), telemetry to Prometheus.
/// State that is a credential ([`SECRET_STATE`]) is sealed with the connection's key
/// ([`crate::store::sealed`]).
pub struct StoreHost {
    store: Store,
    keys: BTreeMap<ConnectionId, StateKey>,
}

/// Connector state names that hold credentials (the rotated Salesforce refresh token).
pub const SECRET_STATE: &[&str] = &["refresh_token"];

impl StoreHost {
    /// Wraps a store, with each connection's key for its sealed state derived from its configured
    /// credentials (those of a Salesforce refresh-token flow: the only state credential today).
    pub fn new(store: Store, config: &Config) -> Self {
        let mut keys = BTreeMap::new();
        for (id, connection) in &config.connections {
            if let VendorConfig::Salesforce(vendor) = &connection.vendor
                && let SalesforceAuth::RefreshToken { client_id, client_secret, refresh_token } = &vendor.auth
            {
                let mut credentials = vec![client_id.as_str(), refresh_token.expose_secret()];
                credentials.extend(client_secret.as_ref().map(|secret| secret.expose_secret()));
                keys.insert(id.clone(), StateKey::derive(id, &credentials));
            }
        }
        Self { store, keys }
    }

    fn key(&self, connection: &ConnectionId, name: &str) -> Option<&StateKey> {
        SECRET_STATE.contains(&name).then(|| self.keys.get(connection)).flatten()
    }
}

impl ConnectorHost for StoreHost {
    fn load_state(&self, connection: &ConnectionId, key: &str) -> Result<Option<String>, String> {
        let loaded = match self.key(connection, key) {
            Some(state_key) => self.store.load_secret_state(connection, key, state_key),
            None => self.store.load_state(connection, key),
        };
        loaded.map_err(|error| error.to_string())
    }

    fn save_state(&self, connection: &ConnectionId, key: &str, value: &str) -> Result<(), String> {
        let saved = match self.key(connection, key) {
            Some(state_key) => self.store.save_secret_state(connection, key, value, state_key),
            None => self.store.save_state(connection, key, value),
        };
        saved.map_err(|error| error.to_string())
    }

    fn observe(&self, event: ApiEvent<'_>) {
        telemetry::observe_api_event(event);
    }
}

/// Builds every configured connector. Pure: no network IO (that is `check`).
pub fn build_connectors(
    config: &Config,
    host: SharedHost,
) -> anyhow::Result<BTreeMap<ConnectionId, Arc<AnyConnector>>> {
    let mut connectors = BTreeMap::new();
    for (id, connection) in &config.connections {
        let mut settings = connection.settings.clone();
        // Connectors writing to a single-currency CRM convert amounts with the metrics FX table.
        settings.fx = Some(crmsync_connectors::canonical::FxTable::new(
            config.metrics.reporting_currency.clone(),
            config.metrics.fx.clone(),
        ));
        let connector = match &connection.vendor {
            VendorConfig::Salesforce(vendor) => {
                AnyConnector::Salesforce(SalesforceConnector::new(settings, vendor.clone(), host.clone())?)
            }
            VendorConfig::Zoho(vendor) => {
                AnyConnector::Zoho(ZohoConnector::new(settings, vendor.clone(), host.clone())?)
            }
            VendorConfig::Dynamics365(vendor) => {
                AnyConnector::Dynamics365(Dynamics365Connector::new(settings, vendor.clone(), host.clone())?)
            }
        };
        connectors.insert(id.clone(), Arc::new(connector));
    }
    Ok(connectors)
}

/// An opened store with its writer and connectors.
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// Every connector, by connection.
    pub connectors: BTreeMap<ConnectionId, Arc<AnyConnector>>,
    /// The writer's handle.
    pub ingest: IngestHandle,
    /// The writer's rules.
    pub rules: IngestRules,
    writer: JoinHandle<()>,
}

impl App {
    /// Opens the store, builds the connectors and starts the ingest writer.
    pub fn build(config: Config) -> anyhow::Result<Self> {
        let store = open_store(&config).map_err(|error| open_error(&config, error))?;
        // The index-key filter is built off the request path: no webhook delivery or page waits
        // for its pass over every index key after a restart.
        store.build_key_filter_in_background();
        let host: SharedHost = Arc::new(StoreHost::new(store.clone(), &config));
        let connectors = build_connectors(&config, host)?;
        let rules = IngestRules::from_config(&config);
        let (writer, ingest) = Ingestor::new(store.clone(), rules.clone(), config.daemon.ingest_queue);
        release_held_pushes(&config, &store, &writer)?;
        let writer = tokio::spawn(writer.run());
        Ok(Self { config, store, connectors, ingest, rules, writer })
    }

    /// Stops the writer after the batches already queued, then flushes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let Self { ingest, writer, store, connectors, .. } = self;
        drop(ingest);
        drop(connectors);
        writer.await.context("ingest writer panicked")?;
        store.flush().context("final flush failed")?;
        Ok(())
    }

    /// [`App::shutdown`] within one deadline: the writer may finish its queue until `drain_by`
    /// (tasks abandoned at the deadline may still hold a handle to it, so it is not awaited past
    /// that), and the store is flushed by `flush_by` whatever the writer did: every page the writer
    /// committed is durable, and an uncommitted one is pulled again from its cursor on the next start.
    pub async fn shutdown_by(
        self,
        drain_by: tokio::time::Instant,
        flush_by: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        let Self { ingest, writer, store, connectors, .. } = self;
        drop(ingest);
        drop(connectors);
        match tokio::time::timeout_at(drain_by, writer).await {
            Ok(joined) => joined.context("ingest writer panicked")?,
            Err(_) => tracing::warn!("the ingest writer did not finish its queue before the shutdown deadline"),
        }
        let flush = tokio::task::spawn_blocking(move || store.flush());
        match tokio::time::timeout_at(flush_by, flush).await {
            Ok(flushed) => flushed.context("final flush panicked")?.context("final flush failed")?,
            Err(_) => anyhow::bail!("the store did not finish flushing before the shutdown deadline"),
        }
        Ok(())
    }
}

/// Retries the dead-lettered pushes of every connection whose configuration changed since the last
/// start (a vendor's rejection may not hold under the new settings; see [`crate::scheduler::push`]),
/// and records each connection's configuration fingerprint.
/// Opens the store in `daemon.data_dir` with the configured page cache (`daemon.store_cache_mib`).
pub fn open_store(config: &Config) -> Result<Store, StoreError> {
    Store::open_with(&config.daemon.data_dir, &StoreOptions::with_cache_mib(config.daemon.store_cache_mib))
}

/// An error of [`open_store`] for the user: it names the store directory once (the opening errors
/// name it already; the others get it as context).
pub fn open_error(config: &Config, error: StoreError) -> anyhow::Error {
    if error.names_the_store() {
        error.into()
    } else {
        anyhow::Error::new(error).context(format!("cannot open the store in {}", config.daemon.data_dir.display()))
    }
}

fn release_held_pushes(config: &Config, store: &Store, writer: &Ingestor) -> anyhow::Result<()> {
    use sha2::{Digest, Sha256};
    const KEY: &str = "config_fingerprint";
    for (id, connection) in &config.connections {
        // Debug output is deterministic here (no hash maps) and redacts every secret.
        let digest = Sha256::digest(format!("{connection:?}").as_bytes());
        let fingerprint: String = digest.iter().take(16).map(|byte| format!("{byte:02x}")).collect();
        if store.load_state(id, KEY)?.as_deref() == Some(fingerprint.as_str()) {
            continue;
        }
        if store
            .dead_letters(usize::MAX)?
            .iter()
            .any(|letter| &letter.connection == id && letter.canonical_id.is_some())
        {
            let outcome = writer
                .apply_at_start(crate::ingest::operator::OperatorAction::ReleaseHeldPushes { connection: id.clone() })
                .with_context(|| format!("cannot retry the dead letters of {id}"))?;
            tracing::info!(connection = %id, outcome = ?outcome, "configuration changed: dead-lettered pushes retried");
        }
        store.save_state(id, KEY, &fingerprint)?;
    }
    Ok(())
}

/// The daemon's two bound listeners: the public one (`daemon.listen`: webhooks, API, dashboard) and
/// the admin one (`daemon.admin_listen`). Bound before any work begins, so a busy port fails the
/// start at once, and so that a port 0 in the configuration is known (and can be printed) before
/// the daemon serves.
pub struct Listeners {
    public: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds `daemon.listen` and `daemon.admin_listen`.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Self::bind_at(config.daemon.listen, config.daemon.admin_listen).await
    }

    /// Binds the public listener at `public` and the admin one at `admin` (port 0: one the system picks).
    pub async fn bind_at(public: std::net::SocketAddr, admin: std::net::SocketAddr) -> anyhow::Result<Self> {
        let public = tokio::net::TcpListener::bind(public)
            .await
            .with_context(|| format!("cannot listen on {public} (daemon.listen)"))?;
        let admin = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin} (daemon.admin_listen)"))?;
        Ok(Self { public, admin })
    }

    /// The addresses bound: (public, admin).
    pub fn addresses(&self) -> std::io::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
        Ok((self.public.local_addr()?, self.admin.local_addr()?))
    }
}

/// Runs the daemon until `shutdown` resolves: pull loops per job × connection × entity, a push loop
/// per connection, the HTTP listeners, systemd notifications; then drains within `shutdown_grace`.
pub async fn run_daemon(
    app: App,
    listeners: Listeners,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use crate::config::{Direction, Schedule};
    use crate::http::{HttpState, WebhookEndpoint, admin_router, public_router};
    use crate::scheduler::{Backoff, pull, push};

    let Listeners { public, admin } = listeners;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(false));
    let policies = app.rules.fields.clone();

    // One nudge per connection × entity, shared by every job that pulls it (webhooks wake them).
    let mut nudges: BTreeMap<ConnectionId, BTreeMap<Entity, Arc<Notify>>> = BTreeMap::new();
    for (id, connection) in &app.config.connections {
        let per_entity = connection.settings.entities.iter().map(|entity| (*entity, Arc::new(Notify::new()))).collect();
        nudges.insert(id.clone(), per_entity);
    }
    let mut push_intervals: BTreeMap<ConnectionId, std::time::Duration> = BTreeMap::new();
    let mut pulled: std::collections::BTreeSet<(ConnectionId, Entity)> = std::collections::BTreeSet::new();
    for job in &app.config.jobs {
        let (cadence, interval) = match &job.schedule {
            Schedule::Every(interval) => (crate::scheduler::Cadence::Every(*interval), *interval),
            Schedule::Cron(expression) => {
                let cron =
                    crate::scheduler::cron::Cron::parse(expression).with_context(|| format!("job {}", job.name))?;
                (crate::scheduler::Cadence::Cron(cron), std::time::Duration::from_secs(60))
            }
        };
        for id in &job.connections {
            let Some(connector) = app.connectors.get(id) else { continue };
            if job.direction != Direction::Pull {
                let entry = push_intervals.entry(id.clone()).or_insert(interval);
                *entry = (*entry).min(interval);
            }
            if job.direction == Direction::Push {
                continue;
            }
            for entity in &job.entities {
                // Two jobs covering the same connection × entity share one loop: runs never overlap.
                if !connector.entities().contains(entity) || !pulled.insert((id.clone(), *entity)) {
                    continue;
                }
                let nudge = nudges.get(id).and_then(|map| map.get(entity)).cloned().unwrap_or_default();
                tracker.spawn(pull::run(
                    connector.clone(),
                    app.store.clone(),
                    app.ingest.clone(),
                    *entity,
                    cadence.clone(),
                    nudge,
                    cancel.clone(),
                    Backoff::default(),
                ));
            }
        }
    }
    for (id, interval) in push_intervals {
        let Some(connector) = app.connectors.get(&id) else { continue };
        // Pushes follow quickly after changes: drain at least every few seconds.
        let interval = interval.min(std::time::Duration::from_secs(5));
        tracker.spawn(push::run(
            connector.clone(),
            app.store.clone(),
            app.ingest.clone(),
            policies.get(&id).cloned(),
            interval,
            cancel.clone(),
            Backoff::default(),
        ));
    }

    // Sales KPIs for Prometheus, recomputed every minute off the async threads.
    {
        let (store, config) = (app.store.clone(), app.config.clone());
        tracker.spawn(crate::scheduler::every(std::time::Duration::from_secs(60), cancel.clone(), move || {
            let (store, config) = (store.clone(), config.clone());
            async move {
                let _ = tokio::task::spawn_blocking(move || crate::metrics::scan::publish_kpis(&store, &config)).await;
            }
        }));
    }
    // Vendor upkeep (Zoho watch-channel renewal), hourly.
    for connector in app.connectors.values() {
        let connector = connector.clone();
        tracker.spawn(crate::scheduler::every(std::time::Duration::from_secs(3600), cancel.clone(), move || {
            let connector = connector.clone();
            async move {
                if let Err(error) = connector.maintain().await {
                    tracing::warn!(connection = %connector.id(), error = %crate::scheduler::error_chain(&error), "vendor upkeep failed");
                }
            }
        }));
    }
    // Drift sweep: repair what incremental reads missed (hard deletes, late commits).
    if let Some(interval) = app.config.daemon.drift_sweep_interval {
        for connector in app.connectors.values() {
            tracker.spawn(crate::scheduler::sweep::run(
                connector.clone(),
                app.store.clone(),
                app.ingest.clone(),
                interval,
                cancel.clone(),
            ));
        }
    }

    let webhooks = app
        .connectors
        .iter()
        .map(|(id, connector)| {
            let parser: Arc<dyn WebhookParser> = connector.clone();
            (
                id.to_string(),
                WebhookEndpoint { connection: id.clone(), parser, nudges: nudges.get(id).cloned().unwrap_or_default() },
            )
        })
        .collect();
    telemetry::register_daemon();
    for (id, connector) in &app.connectors {
        telemetry::register_connection(id, connector.entities());
    }
    let (gauge_store, gauge_connectors, started) = (app.store.clone(), app.connectors.clone(), Timestamp::now());
    let readiness = Arc::new(crate::http::Readiness {
        unready_after: app.config.daemon.unready_after,
        pulled: pulled.clone(),
        started,
    });
    let refresh: Arc<dyn Fn() + Send + Sync> =
        Arc::new(move || refresh_store_gauges(&gauge_store, &gauge_connectors, &pulled, started));
    let state = HttpState {
        webhooks: Arc::new(webhooks),
        ingest: app.ingest.clone(),
        store: app.store.clone(),
        status_config: Arc::new(crate::status::StatusConfig::from_config(&app.config)),
        metrics_config: Arc::new(app.config.metrics.clone()),
        api_token: app.config.api.token.clone(),
        prometheus,
        refresh_gauges: Some(refresh),
        ready: ready.clone(),
        readiness: Some(readiness),
    };
    tracing::info!(listen = %public.local_addr()?, admin = %admin.local_addr()?, connections = app.connectors.len(), "crmsync running");
    for (listener, router) in [(public, public_router(state.clone())), (admin, admin_router(state))] {
        let stop = cancel.clone();
        tracker.spawn(async move {
            let served =
                axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            if let Err(error) = served {
                tracing::error!(error = %error, "HTTP listener failed");
            }
        });
    }
    ready.store(true, Ordering::SeqCst);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        let stop = cancel.clone();
        tracker.spawn(async move {
            let mut ticks = tokio::time::interval(period / 2);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
                }
            }
        });
    }

    shutdown.await;
    tracing::info!("shutting down: finishing pages in flight");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    ready.store(false, Ordering::SeqCst);
    cancel.cancel();
    tracker.close();
    // One deadline for everything: tasks and the writer's queue get the grace minus a reserve for
    // the final flush (a quarter, at most 5 s), and the flush ends by the deadline.
    let grace = app.config.daemon.shutdown_grace;
    let flush_by = tokio::time::Instant::now() + grace;
    let drain_by = flush_by - (grace / 4).min(std::time::Duration::from_secs(5));
    if tokio::time::timeout_at(drain_by, tracker.wait()).await.is_err() {
        tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace expired; abandoning remaining tasks");
    }
    app.shutdown_by(drain_by, flush_by).await.with_context(|| format!("within shutdown_grace ({grace:?})"))?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Sets the gauges that are read from the store and the connectors when `/metrics` is scraped: outbox
/// depth, API budget, sync lag of every pulled connection × entity (now − last success, or now −
/// daemon start before the first success, so a stalled or never-working pull keeps growing instead
/// of showing a stale value), dead letters and store size.
fn refresh_store_gauges(
    store: &Store,
    connectors: &BTreeMap<ConnectionId, Arc<AnyConnector>>,
    pulled: &std::collections::BTreeSet<(ConnectionId, Entity)>,
    started: Timestamp,
) {
    let now = Timestamp::now();
    let seconds_since = |at: Timestamp| (now.unix_millis() - at.unix_millis()).max(0) as f64 / 1000.0;
    for (id, connector) in connectors {
        if let Ok(depth) = store.outbox_depth(id) {
            telemetry::record_outbox_depth(id, depth);
        }
        let usage = connector.usage();
        telemetry::record_budget(id, usage.budget_used, usage.budget_limit);
        telemetry::record_request_rate(id, usage.throttling.current_per_second);
        for entity in connector.entities().iter().filter(|entity| pulled.contains(&(id.clone(), **entity))) {
            if let Ok(status) = store.sync_status(id, *entity) {
                let since = status.and_then(|status| status.last_success).unwrap_or(started);
                telemetry::record_lag(id, *entity, seconds_since(since));
            }
        }
    }
    if let Ok(count) = store.dead_letter_count() {
        telemetry::record_dead_letters(count);
    }
    if let Ok(size) = store.size_on_disk() {
        telemetry::record_store_size(size);
    }
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(error = %error, "systemd notification failed");
    }
}
