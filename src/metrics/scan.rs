//! The store side of the sales metrics: one scan of the records' summaries feeds the pure
//! [`Accumulator`]s of every requested scope, and the daemon publishes the result as KPI gauges.

use crmsync_connectors::canonical::Timestamp;

use super::{Accumulator, ENTITIES, MetricsQuery, MetricsReport, MetricsSettings, Scope, gauges};
use crate::config::{Config, MetricsConfig};
use crate::store::{Store, StoreError};
use crate::telemetry;

/// Computes the sales metrics over the store for a scope and window (`since`/`until` default to the
/// configured window ending now).
pub fn report(
    store: &Store,
    config: &MetricsConfig,
    scope: Scope,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Result<MetricsReport, StoreError> {
    let mut reports = reports(store, config, vec![scope], since, until)?;
    Ok(reports.remove(0))
}

/// Computes the reports of several scopes in one scan of the store (one report per scope, in order):
/// leads, opportunities and orders each on a thread of their own. Reads the records' summaries (not
/// the records), without a lock the ingest writer waits on.
pub fn reports(
    store: &Store,
    config: &MetricsConfig,
    scopes: Vec<Scope>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Result<Vec<MetricsReport>, StoreError> {
    let until = until.unwrap_or_else(Timestamp::now);
    let since = since.unwrap_or_else(|| until.saturating_add(config.window, false));
    let settings = MetricsSettings { reporting_currency: config.reporting_currency.clone(), fx: config.fx.clone() };
    let queries: Vec<MetricsQuery> = scopes.into_iter().map(|scope| MetricsQuery { scope, since, until }).collect();
    // Each entity is a range of its own in the summaries: one thread scans each, with accumulators
    // of its own, and their counts are merged (the scan is bound by reading and decoding sled's
    // pages, so the cores share it).
    let scanned: Vec<Result<Vec<Accumulator<'_>>, StoreError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = ENTITIES
            .iter()
            .map(|entity| {
                let (queries, settings) = (&queries, &settings);
                scope.spawn(move || -> Result<Vec<Accumulator<'_>>, StoreError> {
                    let mut accumulators: Vec<Accumulator<'_>> =
                        queries.iter().map(|query| Accumulator::new(query, settings)).collect();
                    for record in store.scan_summaries(*entity) {
                        let record = record?;
                        for accumulator in &mut accumulators {
                            accumulator.add(&record);
                        }
                    }
                    Ok(accumulators)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread.join().unwrap_or_else(|_| Err(StoreError::Internal("a metrics scan thread panicked".into())))
            })
            .collect()
    });
    let mut totals: Option<Vec<Accumulator<'_>>> = None;
    for part in scanned {
        let part = part?;
        match totals.as_mut() {
            None => totals = Some(part),
            Some(totals) => {
                for (total, counted) in totals.iter_mut().zip(part) {
                    total.merge(counted);
                }
            }
        }
    }
    let totals = totals.unwrap_or_else(|| queries.iter().map(|query| Accumulator::new(query, &settings)).collect());
    Ok(totals.into_iter().map(Accumulator::finish).collect())
}

/// Publishes the KPI gauges of the unified scope and of every connection (one scan of the store).
pub fn publish_kpis(store: &Store, config: &Config) {
    let mut scopes = vec![Scope::Unified];
    scopes.extend(config.connections.keys().cloned().map(Scope::Connection));
    match reports(store, &config.metrics, scopes, None, None) {
        Ok(reports) => {
            for report in &reports {
                for (name, labels, value) in gauges(report) {
                    telemetry::record_kpi(name, labels, value);
                }
            }
            tracing::debug!("KPI gauges published");
        }
        Err(error) => tracing::warn!(error = %error, "cannot compute KPI gauges"),
    }
}
