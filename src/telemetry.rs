#![allow(clippy::disallowed_macros)] // the one module allowed to use the metrics macros
//! Logs and operational metrics: the tracing subscriber, the Prometheus recorder, every metric name
//! as a constant, and `record_*` helpers (the only place metric macros are used).
//!
//! Labels are only `connection`, `entity` and `outcome` (plus `scope`/`stage`/`channel` on the sales
//! KPIs): never record ids, so cardinality stays bounded.

use std::io::IsTerminal;
use std::time::Duration;

use crmsync_connectors::canonical::{ConnectionId, Entity};
use crmsync_connectors::{ApiEvent, ConnectorHost};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Records read from vendors, by outcome ([`PULL_OUTCOMES`]).
pub const PULL_RECORDS: &str = "crmsync_pull_records_total";
/// Records sent to vendors, by outcome ([`PUSH_OUTCOMES`]).
pub const PUSH_RECORDS: &str = "crmsync_push_records_total";
/// Vendor API calls, by outcome ([`API_OUTCOMES`]: the status class, or `transport`).
pub const API_CALLS: &str = "crmsync_api_calls_total";
/// Requests that waited for the rate limiter or a delay the vendor asked for.
pub const RATE_LIMIT_WAITS: &str = "crmsync_rate_limit_waits_total";
/// How long requests waited for the rate limiter or a delay the vendor asked for (seconds; `_sum`
/// is the total time spent waiting).
pub const RATE_LIMIT_WAIT_SECONDS: &str = "crmsync_rate_limit_wait_seconds";
/// Throttled answers from the vendor (429, Salesforce `REQUEST_LIMIT_EXCEEDED`).
pub const THROTTLED: &str = "crmsync_vendor_throttled_total";
/// The request rate in force per connection (requests per second): the configured rate, lower
/// while the vendor throttles or its daily limit runs low.
pub const REQUEST_RATE: &str = "crmsync_request_rate_per_second";
/// 1 while calls to a connection are paused because the vendor's daily API limit is reached.
pub const QUOTA_PAUSED: &str = "crmsync_vendor_quota_paused";
/// Vendor calls retried.
pub const RETRIES: &str = "crmsync_retries_total";
/// Access-token fetches, by outcome ([`TOKEN_OUTCOMES`]).
pub const TOKEN_REFRESHES: &str = "crmsync_token_refreshes_total";
/// Calls counted against the daily budget in the current window.
pub const BUDGET_USED: &str = "crmsync_api_budget_used";
/// The configured daily budget (absent for a connection without `rate_limit.daily_budget`).
pub const BUDGET_LIMIT: &str = "crmsync_api_budget_limit";
/// The vendor's own usage report (`Sforce-Limit-Info`, Zoho credits, Dataverse's burst headers);
/// present once the vendor has reported it.
pub const VENDOR_USAGE: &str = "crmsync_vendor_api_usage";
/// The vendor's own limit from the same report.
pub const VENDOR_LIMIT: &str = "crmsync_vendor_api_limit";
/// Seconds since the last successful pull of a connection × entity, computed when scraped (so it
/// keeps growing while pulls fail); before the first success, seconds since the daemon started.
pub const SYNC_LAG: &str = "crmsync_sync_lag_seconds";
/// Changes waiting to be pushed to a connection.
pub const OUTBOX_DEPTH: &str = "crmsync_outbox_depth";
/// Records in the dead-letter queue.
pub const DEAD_LETTERS: &str = "crmsync_dead_letters";
/// Conflicts recorded, by entity.
pub const CONFLICTS: &str = "crmsync_conflicts_total";
/// Webhook deliveries, by outcome ([`WEBHOOK_OUTCOMES`]; a path naming no connection is counted as
/// `connection="unknown", outcome="unknown_connection"`, so a scanner cannot grow the label set).
pub const WEBHOOK_DELIVERIES: &str = "crmsync_webhook_deliveries_total";
/// Batches waiting for the ingest writer.
pub const INGEST_QUEUE_DEPTH: &str = "crmsync_ingest_queue_depth";
/// Store commit latency (seconds).
pub const COMMIT_SECONDS: &str = "crmsync_commit_seconds";
/// Store size on disk (bytes).
pub const STORE_SIZE: &str = "crmsync_store_size_bytes";
/// Vendor values no mapping table covers (SPEC §2: counted, never blocking).
pub const UNMAPPED_VALUES: &str = "crmsync_unmapped_values_total";
/// Sync errors by connection × entity (`outcome` = the retry advice, [`SYNC_ERROR_OUTCOMES`]).
pub const SYNC_ERRORS: &str = "crmsync_sync_errors_total";
/// Vendor modification times further in the future than ingest allows, clamped (issue 17 §7).
pub const CLAMPED_TIMES: &str = "crmsync_clamped_times_total";

/// Every operational metric name (the Grafana dashboard test checks against this list).
pub const OPERATIONAL_METRICS: &[&str] = &[
    PULL_RECORDS,
    PUSH_RECORDS,
    API_CALLS,
    RATE_LIMIT_WAITS,
    RATE_LIMIT_WAIT_SECONDS,
    THROTTLED,
    REQUEST_RATE,
    QUOTA_PAUSED,
    RETRIES,
    TOKEN_REFRESHES,
    BUDGET_USED,
    BUDGET_LIMIT,
    VENDOR_USAGE,
    VENDOR_LIMIT,
    SYNC_LAG,
    OUTBOX_DEPTH,
    DEAD_LETTERS,
    CONFLICTS,
    WEBHOOK_DELIVERIES,
    INGEST_QUEUE_DEPTH,
    COMMIT_SECONDS,
    STORE_SIZE,
    UNMAPPED_VALUES,
    SYNC_ERRORS,
    CLAMPED_TIMES,
];

/// `outcome` values of [`PULL_RECORDS`].
pub const PULL_OUTCOMES: &[&str] = &["created", "updated", "deleted", "echo", "unchanged", "stale", "dead_letter"];
/// `outcome` values of [`PUSH_RECORDS`].
pub const PUSH_OUTCOMES: &[&str] = &["upserted", "deleted", "rejected", "retry"];
/// `outcome` values of [`API_CALLS`].
pub const API_OUTCOMES: &[&str] = &["2xx", "3xx", "4xx", "5xx", "transport"];
/// `outcome` values of [`TOKEN_REFRESHES`].
pub const TOKEN_OUTCOMES: &[&str] = &["success", "failure"];
/// `outcome` values of [`WEBHOOK_DELIVERIES`] for a known connection.
pub const WEBHOOK_OUTCOMES: &[&str] = &["accepted", "unauthenticated", "malformed", "not_configured", "saturated"];
/// `outcome` values of [`SYNC_ERRORS`] (the connector's retry advice).
pub const SYNC_ERROR_OUTCOMES: &[&str] = &["retry_after", "backoff", "refresh_token", "resync", "give_up"];

/// Creates every counter series of a connection at zero, so `/metrics` lists them from the start:
/// `rate()` and `increase()` need a series to exist before its first event, and an alert on
/// "any retry" must not wait for the first retry to have something to evaluate.
pub fn register_connection(connection: &ConnectionId, entities: &[Entity]) {
    let name = || connection.to_string();
    for entity in entities {
        let per_entity = |metric: &'static str, outcomes: &[&'static str]| {
            for outcome in outcomes {
                metrics::counter!(metric, "connection" => name(), "entity" => entity.as_str(), "outcome" => *outcome)
                    .increment(0);
            }
        };
        per_entity(PULL_RECORDS, PULL_OUTCOMES);
        per_entity(PUSH_RECORDS, PUSH_OUTCOMES);
        per_entity(SYNC_ERRORS, SYNC_ERROR_OUTCOMES);
        metrics::counter!(UNMAPPED_VALUES, "connection" => name(), "entity" => entity.as_str()).increment(0);
        metrics::counter!(CLAMPED_TIMES, "connection" => name(), "entity" => entity.as_str()).increment(0);
    }
    for (metric, outcomes) in
        [(API_CALLS, API_OUTCOMES), (TOKEN_REFRESHES, TOKEN_OUTCOMES), (WEBHOOK_DELIVERIES, WEBHOOK_OUTCOMES)]
    {
        for outcome in outcomes {
            metrics::counter!(metric, "connection" => name(), "outcome" => *outcome).increment(0);
        }
    }
    metrics::counter!(RETRIES, "connection" => name()).increment(0);
    metrics::counter!(RATE_LIMIT_WAITS, "connection" => name()).increment(0);
    let _ = metrics::histogram!(RATE_LIMIT_WAIT_SECONDS, "connection" => name());
    metrics::counter!(THROTTLED, "connection" => name()).increment(0);
    metrics::gauge!(QUOTA_PAUSED, "connection" => name()).set(0.0);
    metrics::gauge!(OUTBOX_DEPTH, "connection" => name()).set(0.0);
}

/// Creates the daemon-wide series at zero (see [`register_connection`]).
pub fn register_daemon() {
    for entity in Entity::ALL {
        metrics::counter!(CONFLICTS, "entity" => entity.as_str()).increment(0);
    }
    metrics::counter!(WEBHOOK_DELIVERIES, "connection" => "unknown", "outcome" => "unknown_connection").increment(0);
    metrics::gauge!(DEAD_LETTERS).set(0.0);
    metrics::gauge!(INGEST_QUEUE_DEPTH).set(0.0);
    // Registering renders the histogram with zero counts until the first commit.
    let _ = metrics::histogram!(COMMIT_SECONDS);
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    /// JSON when stderr is not a terminal, pretty otherwise.
    Auto,
    /// JSON lines.
    Json,
    /// Human-readable.
    Pretty,
}

/// Installs the global tracing subscriber (once). Filtering follows `RUST_LOG`, default `info`.
pub fn init_logging(style: LogStyle) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match style {
        LogStyle::Json => true,
        LogStyle::Pretty => false,
        LogStyle::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` fails only when a subscriber is already installed (tests, embedded use): keep it.
    let _ = if json {
        // Event fields at the top level of each line (`"connection":"sf"`, not under `"fields"`);
        // the current span (a pass, an HTTP request) under `"span"`, all of them under `"spans"`.
        registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init()
    };
}

/// The exporter's settings: the commit-latency histogram gets buckets (everything else is a
/// counter or a gauge).
fn prometheus_builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(COMMIT_SECONDS.to_owned()),
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(RATE_LIMIT_WAIT_SECONDS.to_owned()),
            &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0],
        )
}

/// Installs the Prometheus recorder for this process and returns the handle `/metrics` renders.
/// Spawns the periodic upkeep the exporter needs (histogram buckets are drained by it).
pub fn install_prometheus() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = prometheus_builder()?.install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    describe_metrics();
    Ok(handle)
}

fn describe_metrics() {
    metrics::describe_counter!(PULL_RECORDS, "Records read from vendors, by outcome");
    metrics::describe_counter!(PUSH_RECORDS, "Records sent to vendors, by outcome");
    metrics::describe_counter!(API_CALLS, "Vendor API calls, by status class");
    metrics::describe_counter!(
        RATE_LIMIT_WAITS,
        "Requests that waited for the rate limiter or a vendor-requested delay"
    );
    metrics::describe_histogram!(
        RATE_LIMIT_WAIT_SECONDS,
        metrics::Unit::Seconds,
        "Time requests waited for the rate limiter or a vendor-requested delay"
    );
    metrics::describe_counter!(THROTTLED, "Throttled answers from the vendor (429, REQUEST_LIMIT_EXCEEDED)");
    metrics::describe_gauge!(REQUEST_RATE, "Request rate in force (per second), lowered while the vendor throttles");
    metrics::describe_gauge!(QUOTA_PAUSED, "1 while calls are paused because the vendor's daily API limit is reached");
    metrics::describe_counter!(RETRIES, "Vendor calls retried");
    metrics::describe_counter!(TOKEN_REFRESHES, "Access-token fetches");
    metrics::describe_gauge!(BUDGET_USED, "Calls counted against the daily budget");
    metrics::describe_gauge!(BUDGET_LIMIT, "Configured daily API budget");
    metrics::describe_gauge!(VENDOR_USAGE, "Vendor-reported API usage");
    metrics::describe_gauge!(VENDOR_LIMIT, "Vendor-reported API limit");
    metrics::describe_gauge!(SYNC_LAG, "Seconds since the last successful pull");
    metrics::describe_gauge!(OUTBOX_DEPTH, "Changes waiting to be pushed");
    metrics::describe_gauge!(DEAD_LETTERS, "Records in the dead-letter queue");
    metrics::describe_counter!(CONFLICTS, "Conflicts recorded");
    metrics::describe_counter!(WEBHOOK_DELIVERIES, "Webhook deliveries, by outcome");
    metrics::describe_gauge!(INGEST_QUEUE_DEPTH, "Batches waiting for the ingest writer");
    metrics::describe_histogram!(COMMIT_SECONDS, metrics::Unit::Seconds, "Store commit latency");
    metrics::describe_gauge!(STORE_SIZE, metrics::Unit::Bytes, "Store size on disk");
    metrics::describe_counter!(UNMAPPED_VALUES, "Vendor values no mapping table covers");
    metrics::describe_counter!(SYNC_ERRORS, "Sync errors by retry advice");
    metrics::describe_counter!(CLAMPED_TIMES, "Vendor modification times in the future, clamped to now + skew");
    describe_kpis();
}

/// The sales-KPI gauges (`crmsync metrics --explain` has the full definitions).
fn describe_kpis() {
    use crate::metrics::{
        KPI_CHANNEL_ORDERS, KPI_COVERAGE, KPI_EFFICIENCY, KPI_FUNNEL, KPI_PIPELINE_VALUE, KPI_SALES_AMOUNT,
        KPI_SALES_CYCLE, KPI_SATISFACTION, KPI_WIN_RATE,
    };
    metrics::describe_gauge!(
        KPI_EFFICIENCY,
        "Sales amount per day of the window, in the reporting currency (NaN: n/a)"
    );
    metrics::describe_gauge!(
        KPI_COVERAGE,
        "Customers with an order in the window per channel with an order (NaN: n/a)"
    );
    metrics::describe_gauge!(KPI_SATISFACTION, "Orders in the window per customer with an order (NaN: n/a)");
    metrics::describe_gauge!(
        KPI_SALES_CYCLE,
        "Average days from creation to close of the opportunities won in the window (NaN: n/a)"
    );
    metrics::describe_gauge!(KPI_WIN_RATE, "Won / (won + lost) among opportunities closed in the window (NaN: n/a)");
    metrics::describe_gauge!(KPI_FUNNEL, "Records created in the window that reached each stage");
    metrics::describe_gauge!(KPI_CHANNEL_ORDERS, "Orders in the window per sales channel");
    metrics::describe_gauge!(
        KPI_SALES_AMOUNT,
        "Confirmed-or-later orders dated in the window, in the reporting currency"
    );
    metrics::describe_gauge!(
        KPI_PIPELINE_VALUE,
        "Amount of open opportunities by current stage, in the reporting currency"
    );
}

/// Counts records read, by outcome.
pub fn record_pulled(connection: &ConnectionId, entity: Entity, outcome: &'static str, count: u64) {
    debug_assert!(PULL_OUTCOMES.contains(&outcome), "undocumented pull outcome {outcome}");
    metrics::counter!(PULL_RECORDS, "connection" => connection.to_string(), "entity" => entity.as_str(), "outcome" => outcome)
        .increment(count);
}

/// Counts vendor modification times that were further in the future than ingest allows.
pub fn record_clamped_times(connection: &ConnectionId, entity: Entity, count: u64) {
    metrics::counter!(CLAMPED_TIMES, "connection" => connection.to_string(), "entity" => entity.as_str())
        .increment(count);
}

/// Counts records pushed, by outcome.
pub fn record_pushed(connection: &ConnectionId, entity: Entity, outcome: &'static str, count: u64) {
    debug_assert!(PUSH_OUTCOMES.contains(&outcome), "undocumented push outcome {outcome}");
    metrics::counter!(PUSH_RECORDS, "connection" => connection.to_string(), "entity" => entity.as_str(), "outcome" => outcome)
        .increment(count);
}

/// Counts a sync error.
pub fn record_sync_error(connection: &ConnectionId, entity: Entity, outcome: &'static str) {
    debug_assert!(SYNC_ERROR_OUTCOMES.contains(&outcome), "undocumented sync-error outcome {outcome}");
    metrics::counter!(SYNC_ERRORS, "connection" => connection.to_string(), "entity" => entity.as_str(), "outcome" => outcome)
        .increment(1);
}

/// Sets the sync lag of a connection × entity.
pub fn record_lag(connection: &ConnectionId, entity: Entity, seconds: f64) {
    metrics::gauge!(SYNC_LAG, "connection" => connection.to_string(), "entity" => entity.as_str()).set(seconds);
}

/// Sets the outbox depth of a connection.
pub fn record_outbox_depth(connection: &ConnectionId, depth: u64) {
    metrics::gauge!(OUTBOX_DEPTH, "connection" => connection.to_string()).set(depth as f64);
}

/// Sets the dead-letter count.
pub fn record_dead_letters(count: u64) {
    metrics::gauge!(DEAD_LETTERS).set(count as f64);
}

/// Counts conflicts.
pub fn record_conflicts(entity: Entity, count: u64) {
    metrics::counter!(CONFLICTS, "entity" => entity.as_str()).increment(count);
}

/// Counts a webhook delivery to a configured connection.
pub fn record_webhook(connection: &ConnectionId, outcome: &'static str) {
    debug_assert!(WEBHOOK_OUTCOMES.contains(&outcome), "undocumented webhook outcome {outcome}");
    metrics::counter!(WEBHOOK_DELIVERIES, "connection" => connection.to_string(), "outcome" => outcome).increment(1);
}

/// Counts a webhook delivery to a path that names no connection.
pub fn record_webhook_unknown() {
    metrics::counter!(WEBHOOK_DELIVERIES, "connection" => "unknown", "outcome" => "unknown_connection").increment(1);
}

/// Sets the ingest queue depth.
pub fn record_ingest_queue(depth: usize) {
    metrics::gauge!(INGEST_QUEUE_DEPTH).set(depth as f64);
}

/// Observes one commit's latency.
pub fn record_commit(duration: Duration) {
    metrics::histogram!(COMMIT_SECONDS).record(duration.as_secs_f64());
}

/// Sets the store size.
pub fn record_store_size(bytes: u64) {
    metrics::gauge!(STORE_SIZE).set(bytes as f64);
}

/// Sets the budget gauges of a connection.
pub fn record_budget(connection: &ConnectionId, used: u64, limit: Option<u64>) {
    metrics::gauge!(BUDGET_USED, "connection" => connection.to_string()).set(used as f64);
    if let Some(limit) = limit {
        metrics::gauge!(BUDGET_LIMIT, "connection" => connection.to_string()).set(limit as f64);
    }
}

/// Sets the request-rate gauge of a connection (read when scraped, like the budget).
pub fn record_request_rate(connection: &ConnectionId, per_second: f64) {
    metrics::gauge!(REQUEST_RATE, "connection" => connection.to_string()).set(per_second);
}

/// Sets one sales-KPI gauge.
pub fn record_kpi(name: &'static str, labels: Vec<(&'static str, String)>, value: f64) {
    let labels: Vec<metrics::Label> = labels.into_iter().map(|(key, value)| metrics::Label::new(key, value)).collect();
    metrics::gauge!(name, labels).set(value);
}

/// Turns connector telemetry into metrics (the telemetry half of the daemon's [`ConnectorHost`]).
pub fn observe_api_event(event: ApiEvent<'_>) {
    match event {
        ApiEvent::Call { connection, status } => {
            let outcome = match status {
                Some(200..=299) => "2xx",
                Some(300..=399) => "3xx",
                Some(400..=499) => "4xx",
                Some(_) => "5xx",
                None => "transport",
            };
            metrics::counter!(API_CALLS, "connection" => connection.to_string(), "outcome" => outcome).increment(1);
        }
        ApiEvent::Retry { connection } => {
            metrics::counter!(RETRIES, "connection" => connection.to_string()).increment(1);
        }
        ApiEvent::RateLimitWait { connection, waited } => {
            metrics::counter!(RATE_LIMIT_WAITS, "connection" => connection.to_string()).increment(1);
            metrics::histogram!(RATE_LIMIT_WAIT_SECONDS, "connection" => connection.to_string())
                .record(waited.as_secs_f64());
        }
        ApiEvent::Throttled { connection } => {
            metrics::counter!(THROTTLED, "connection" => connection.to_string()).increment(1);
        }
        ApiEvent::RateChanged { connection, per_second } => {
            metrics::gauge!(REQUEST_RATE, "connection" => connection.to_string()).set(per_second);
        }
        ApiEvent::QuotaPaused { connection, paused } => {
            metrics::gauge!(QUOTA_PAUSED, "connection" => connection.to_string()).set(if paused { 1.0 } else { 0.0 });
        }
        ApiEvent::TokenRefresh { connection, success } => {
            let outcome = if success { "success" } else { "failure" };
            metrics::counter!(TOKEN_REFRESHES, "connection" => connection.to_string(), "outcome" => outcome)
                .increment(1);
        }
        ApiEvent::VendorUsage { connection, used, limit } => {
            metrics::gauge!(VENDOR_USAGE, "connection" => connection.to_string()).set(used as f64);
            metrics::gauge!(VENDOR_LIMIT, "connection" => connection.to_string()).set(limit as f64);
        }
        ApiEvent::UnmappedValue { connection, entity } => {
            metrics::counter!(UNMAPPED_VALUES, "connection" => connection.to_string(), "entity" => entity.as_str())
                .increment(1);
        }
    }
}

/// A host that forwards telemetry and keeps connector state in memory (for `simulate`/tests without a store).
pub fn memory_host() -> std::sync::Arc<dyn ConnectorHost> {
    std::sync::Arc::new(crmsync_connectors::MemoryHost::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series_names(exposition: &str) -> std::collections::BTreeSet<String> {
        exposition
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| line.split(['{', ' ']).next().unwrap_or_default())
            .map(|series| {
                series.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").to_owned()
            })
            .collect()
    }

    #[test]
    fn registered_series_exist_at_zero_before_any_event() {
        let recorder = prometheus_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        let connection = ConnectionId::new("sf");
        metrics::with_local_recorder(&recorder, || {
            register_daemon();
            register_connection(&connection, &[Entity::Account, Entity::Order]);
        });
        let exposition = handle.render();
        let names = series_names(&exposition);
        // Everything but what needs a measurement: lag, budget and vendor usage are read when scraped
        // (the daemon's refresh), and so is the store size.
        let measured = [SYNC_LAG, BUDGET_USED, BUDGET_LIMIT, VENDOR_USAGE, VENDOR_LIMIT, STORE_SIZE, REQUEST_RATE];
        for name in OPERATIONAL_METRICS.iter().filter(|name| !measured.contains(name)) {
            assert!(names.contains(*name), "{name} missing after registration:\n{exposition}");
        }
        for line in exposition.lines().filter(|line| line.starts_with("crmsync_")) {
            assert!(line.ends_with(" 0"), "a registered series starts at zero: {line}");
        }
        assert!(exposition.contains(r#"crmsync_commit_seconds_bucket{le="0.001"} 0"#), "{exposition}");
        assert!(
            exposition
                .contains(r#"crmsync_pull_records_total{connection="sf",entity="order",outcome="dead_letter"} 0"#)
        );
        assert!(exposition.contains(r#"crmsync_conflicts_total{entity="lead"} 0"#));
    }

    #[test]
    fn every_metric_has_a_help_line_in_the_exposition() {
        let recorder = prometheus_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        let connection = ConnectionId::new("sf");
        metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            register_daemon();
            register_connection(&connection, &[Entity::Account]);
            // What is set only when measured or scraped.
            record_lag(&connection, Entity::Account, 1.0);
            record_budget(&connection, 1, Some(10));
            record_request_rate(&connection, 5.0);
            record_store_size(1);
            observe_api_event(ApiEvent::VendorUsage { connection: &connection, used: 1, limit: 10 });
            let query = crate::metrics::MetricsQuery {
                scope: crate::metrics::Scope::Unified,
                since: "2026-10-01T00:00:00Z".parse().unwrap(),
                until: "2026-10-31T00:00:00Z".parse().unwrap(),
            };
            let settings = crate::metrics::MetricsSettings {
                reporting_currency: crmsync_connectors::canonical::Currency::new("EUR").unwrap(),
                fx: std::collections::BTreeMap::new(),
            };
            let report = crate::metrics::compute(std::iter::empty(), &query, &settings);
            for (name, labels, value) in crate::metrics::gauges(&report) {
                record_kpi(name, labels, value);
            }
        });
        let exposition = handle.render();
        let all = OPERATIONAL_METRICS.iter().chain(crate::metrics::KPI_METRICS);
        for name in all {
            let series = exposition.lines().any(|line| line.starts_with(name));
            assert!(series, "{name} has no series in the test exposition:\n{exposition}");
            let help = format!("# HELP {name} ");
            let described = exposition.lines().any(|line| line.starts_with(&help) && line.len() > help.len() + 10);
            assert!(described, "{name} has no # HELP line:\n{exposition}");
        }
        for line in exposition.lines().filter(|line| line.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap_or_default();
            assert!(exposition.contains(&format!("# HELP {name} ")), "{name} is exposed without # HELP");
        }
    }
}
