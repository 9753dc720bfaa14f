//! One sync pass (`crmsync sync`, `demo --once`): pull everything pending, then push everything pending,
//! for a selection of connections × entities, with a summary row per connection × entity.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use crmsync_connectors::canonical::{ConnectionId, Entity};
use crmsync_connectors::settings::FieldPolicy;
use crmsync_connectors::{ApiUsage, Connector};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{error_chain, pull, push};
use crate::ingest::{Batch, IngestHandle};
use crate::store::Store;

/// What a pass covers.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Connection → entities to sync.
    pub targets: BTreeMap<ConnectionId, Vec<Entity>>,
    /// Pull.
    pub pull: bool,
    /// Push.
    pub push: bool,
    /// Ignore saved cursors.
    pub full: bool,
}

/// One summary row.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassRow {
    /// Connection.
    pub connection: String,
    /// Entity.
    pub entity: String,
    /// Records read.
    pub records_in: u64,
    /// Records created or updated in the store.
    pub applied: u64,
    /// Records pushed.
    pub records_out: u64,
    /// Records the vendor rejected (now in the dead-letter queue).
    pub rejected: u64,
    /// Records read this pass and set aside in the dead-letter queue instead of applied (undecodable,
    /// or a change the store could not apply, such as an unresolvable reference).
    pub dead_lettered: u64,
    /// Vendor API calls made.
    pub api_calls: u64,
    /// Calls retried (throttling, 5xx, timeouts, truncated bodies).
    pub retries: u64,
    /// Throttled answers from the vendor.
    pub throttled: u64,
    /// Time requests spent waiting for the rate limit or a delay the vendor asked for (ms).
    pub waited_ms: u64,
    /// Wall time spent (pull + push).
    pub duration_ms: u64,
    /// Of the pull's wall time: in the connector's calls for pages (HTTP, decoding, rate-limit
    /// waits, retries), ms.
    pub reading_ms: u64,
    /// Of the pull's wall time: waiting for the writer to commit the pages, ms.
    pub committing_ms: u64,
    /// What failed, if anything.
    pub error: Option<String>,
}

/// The result of a pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// One row per connection × entity.
    pub rows: Vec<PassRow>,
}

impl PassReport {
    /// Returns whether any part failed.
    pub fn failed(&self) -> bool {
        self.rows.iter().any(|row| row.error.is_some())
    }

    /// Renders the summary table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<16} {:<12} {:>10} {:>9} {:>10} {:>9} {:>13} {:>9} {:>8} {:>9} {:>10}  {}\n",
            "connection",
            "entity",
            "in",
            "applied",
            "out",
            "rejected",
            "dead-lettered",
            "api calls",
            "retries",
            "waited",
            "duration",
            "result"
        );
        for row in &self.rows {
            out.push_str(&format!(
                "{:<16} {:<12} {:>10} {:>9} {:>10} {:>9} {:>13} {:>9} {:>8} {:>8.1}s {:>9.1}s  {}\n",
                row.connection,
                row.entity,
                row.records_in,
                row.applied,
                row.records_out,
                row.rejected,
                row.dead_lettered,
                row.api_calls,
                row.retries,
                row.waited_ms as f64 / 1000.0,
                row.duration_ms as f64 / 1000.0,
                row.error.as_deref().unwrap_or("ok")
            ));
        }
        out
    }
}

/// What a stretch of work cost one connection: calls, retries, throttling.
#[derive(Debug, Clone, Copy)]
struct Cost {
    calls: u64,
    retries: u64,
    throttled: u64,
    waited_ms: u64,
}

impl Cost {
    fn since(before: &ApiUsage, after: &ApiUsage) -> Self {
        let (was, is) = (&before.throttling, &after.throttling);
        Self {
            calls: after.calls.saturating_sub(before.calls),
            retries: is.retries.saturating_sub(was.retries),
            throttled: is.throttled.saturating_sub(was.throttled),
            waited_ms: is.waited_ms.saturating_sub(was.waited_ms),
        }
    }

    fn add_to(&self, row: &mut PassRow) {
        row.api_calls += self.calls;
        row.retries += self.retries;
        row.throttled += self.throttled;
        row.waited_ms += self.waited_ms;
    }
}

/// Runs one pass: every selected connection × entity is pulled until caught up (connections in
/// parallel, entities in dependency order), then every selected outbox is drained.
pub async fn run_pass<C: Connector>(
    connectors: &BTreeMap<ConnectionId, Arc<C>>,
    store: &Store,
    ingest: &IngestHandle,
    policies: &BTreeMap<ConnectionId, FieldPolicy>,
    selection: &Selection,
    cancel: &CancellationToken,
) -> PassReport {
    let progress = std::io::stderr().is_terminal().then(MultiProgress::new);
    let mut rows: BTreeMap<(ConnectionId, Entity), PassRow> = BTreeMap::new();
    for (connection, entities) in &selection.targets {
        for entity in entities {
            rows.insert(
                (connection.clone(), *entity),
                PassRow { connection: connection.to_string(), entity: entity.to_string(), ..PassRow::default() },
            );
        }
    }
    if selection.pull {
        let pulls = selection.targets.iter().filter_map(|(connection, entities)| {
            let connector = connectors.get(connection)?.clone();
            let progress = progress.clone();
            Some(async move {
                let mut results = Vec::new();
                for entity in Entity::ALL.iter().filter(|entity| entities.contains(entity)) {
                    let bar = progress.as_ref().map(|multi| {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {prefix:<28} {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.set_prefix(format!("pull {connection} {entity}"));
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bar
                    });
                    let before = connector.usage();
                    let started = tokio::time::Instant::now();
                    let result =
                        pull::catch_up(connector.as_ref(), store, ingest, *entity, selection.full, cancel, |summary| {
                            if let Some(bar) = &bar {
                                // With the vendor's total: the share read and the time left.
                                bar.set_message(summary.progress(started.elapsed()).to_string());
                            }
                        })
                        .await;
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                    }
                    let cost = Cost::since(&before, &connector.usage());
                    results.push((*entity, result, cost, started.elapsed()));
                }
                (connection.clone(), results)
            })
        });
        for (connection, results) in futures::future::join_all(pulls).await {
            for (entity, result, cost, elapsed) in results {
                let Some(row) = rows.get_mut(&(connection.clone(), entity)) else { continue };
                cost.add_to(row);
                row.duration_ms += millis(elapsed);
                match result {
                    Ok(summary) => {
                        row.reading_ms += millis(summary.reading);
                        row.committing_ms += millis(summary.committing);
                        row.records_in += summary.stats.records_in();
                        row.applied += summary.stats.created + summary.stats.updated + summary.stats.deleted;
                        row.dead_lettered += summary.stats.dead_lettered;
                        tracing::info!(connection = %connection, entity = %entity, records = summary.stats.records_in(), pages = summary.pages, "pulled");
                    }
                    Err(error) => {
                        let message = error_chain(&error);
                        tracing::warn!(connection = %connection, entity = %entity, error = %message, "pull failed");
                        if !matches!(error, pull::PullError::Cancelled) {
                            // `status` shows it as the entity's last error, as for the daemon's pulls.
                            let failed =
                                Batch::Failed { connection: connection.clone(), entity, message: message.clone() };
                            let _ = ingest.submit(failed).await;
                        }
                        row.error = Some(message);
                    }
                }
            }
        }
    }
    if selection.push {
        for (connection, entities) in &selection.targets {
            let Some(connector) = connectors.get(connection) else { continue };
            let before = connector.usage();
            let started = tokio::time::Instant::now();
            // The push phase: how much is queued for this connection, and how long it has taken.
            let bar = progress.as_ref().map(|multi| {
                let queued = store.outbox_depth(connection).unwrap_or_default();
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:<28} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(format!("push {connection}"));
                bar.set_message(format!("{queued} changes queued"));
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            });
            let result = push::drain(connector, store, ingest, policies.get(connection), Some(entities), cancel).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let cost = Cost::since(&before, &connector.usage());
            let elapsed = millis(started.elapsed());
            match result {
                Ok(summary) => {
                    let mut first = true;
                    for entity in entities {
                        let Some(row) = rows.get_mut(&(connection.clone(), *entity)) else { continue };
                        if let Some(stats) = summary.per_entity.get(entity) {
                            row.records_out += stats.pushed;
                            row.rejected += stats.rejected;
                        }
                        if first {
                            // Push calls are counted per connection; they are shown on its first row.
                            cost.add_to(row);
                            row.duration_ms += elapsed;
                            first = false;
                        }
                    }
                    tracing::info!(connection = %connection, api_calls = cost.calls, "pushed");
                }
                Err(error) => {
                    let message = error_chain(&error);
                    tracing::warn!(connection = %connection, error = %message, "push failed");
                    for entity in entities {
                        if let Some(row) = rows.get_mut(&(connection.clone(), *entity)) {
                            row.error.get_or_insert_with(|| message.clone());
                        }
                    }
                }
            }
        }
    }
    PassReport { rows: rows.into_values().collect() }
}

/// A duration in whole milliseconds (saturating), as the report's `_ms` columns count.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
