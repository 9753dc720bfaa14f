//! Pull: read a connection × entity page by page from its committed cursor and submit each page to
//! the ingest writer, which commits the changes and the cursor together.

use std::sync::Arc;
use std::time::Duration;

use crmsync_connectors::canonical::Entity;
use crmsync_connectors::{Connector, ConnectorError, RetryAdvice};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::progress::Progress;
use super::{Backoff, Cadence, advice_label, error_chain, jittered};
use crate::ingest::{Batch, IngestError, IngestHandle, IngestStats};
use crate::store::Store;
use crate::telemetry;

/// Why a catch-up stopped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The vendor call failed (after the connector's own retries, bounded by time per call). Every page
    /// before it is committed with its cursor, so the next pass resumes where this one stopped.
    #[error("pull of {entity} stopped at the committed cursor")]
    Connector {
        /// Entity.
        entity: Entity,
        /// The error.
        #[source]
        source: ConnectorError,
    },
    /// The store or the writer failed.
    #[error("ingest of {entity} failed")]
    Ingest {
        /// Entity.
        entity: Entity,
        /// The error.
        #[source]
        source: IngestError,
    },
    /// Cancelled (shutdown) between pages.
    #[error("cancelled")]
    Cancelled,
}

/// Counts of one catch-up.
#[derive(Debug, Clone, Default)]
pub struct PullSummary {
    /// Pages read.
    pub pages: u64,
    /// What ingest did.
    pub stats: IngestStats,
    /// The vendor's total for the read, as last said by a page ([`crmsync_connectors::Page::total`]).
    pub total: Option<u64>,
    /// Time spent in the connector's calls for pages (HTTP, decoding, rate-limit waits, retries).
    pub reading: Duration,
    /// Time spent waiting for the writer to commit the pages (queue and commit).
    pub committing: Duration,
}

impl PullSummary {
    /// Where the catch-up stands, `elapsed` after it started.
    pub fn progress(&self, elapsed: Duration) -> Progress {
        Progress { records: self.stats.records_in(), pages: self.pages, total: self.total, elapsed }
    }
}

/// Pulls pages of `entity` until the connector is caught up. With `full`, starts from the origin
/// instead of the saved cursor. A `Resync` error (expired cursor) restarts once from the origin.
pub async fn catch_up<C: Connector>(
    connector: &C,
    store: &Store,
    ingest: &IngestHandle,
    entity: Entity,
    full: bool,
    cancel: &CancellationToken,
    mut on_page: impl FnMut(&PullSummary),
) -> Result<PullSummary, PullError> {
    let connection = connector.id().clone();
    let mut cursor = if full {
        None
    } else {
        store
            .cursor(&connection, entity)
            .map_err(|error| PullError::Ingest { entity, source: IngestError::Store(error) })?
    };
    let mut summary = PullSummary::default();
    let mut resynced = false;
    loop {
        if cancel.is_cancelled() {
            return Err(PullError::Cancelled);
        }
        // The connector's retry and throttling logs carry the connection and entity from this span.
        let span = tracing::info_span!("pull", connection = %connection, entity = %entity);
        let reading = tokio::time::Instant::now();
        let pulled = connector.pull(entity, cursor.as_ref()).instrument(span).await;
        summary.reading += reading.elapsed();
        let page = match pulled {
            Ok(page) => page,
            Err(error) if error.retry_advice() == RetryAdvice::Resync && !resynced => {
                tracing::warn!(connection = %connection, entity = %entity, error = %error_chain(&error), "cursor expired, resynchronising from the start");
                resynced = true;
                cursor = None;
                summary.total = None;
                continue;
            }
            Err(source) => return Err(PullError::Connector { entity, source }),
        };
        let caught_up = !page.has_more;
        let next = page.cursor.clone();
        let total = page.total;
        let full_read = page.full_read;
        for record in &page.undecodable {
            tracing::warn!(connection = %connection, entity = %entity, id = %record.external_id, reason = %record.reason, "record could not be decoded: dead-lettered, the pull goes on");
        }
        let committing = tokio::time::Instant::now();
        let stats = ingest
            .submit(Batch::Pulled {
                connection: connection.clone(),
                entity,
                changes: page.changes,
                cursor: Some(next.clone()),
                caught_up,
                undecodable: page.undecodable,
                full_read,
            })
            .await
            .map_err(|source| PullError::Ingest { entity, source })?;
        summary.committing += committing.elapsed();
        summary.pages += 1;
        summary.stats.add(&stats);
        if total.is_some() {
            summary.total = total;
        }
        on_page(&summary);
        cursor = Some(next);
        if caught_up {
            return Ok(summary);
        }
    }
}

/// How often a long catch-up logs its progress at INFO.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The daemon's log of a catch-up in progress: a DEBUG line per page, and an INFO line every
/// [`PROGRESS_EVERY`] while the pass goes on (records so far and the rate, and where the vendor
/// said the read's total: the total, the share read and the seconds left), inside the pass's span.
struct CatchUpProgress {
    started: tokio::time::Instant,
    last_report: tokio::time::Instant,
    every: Duration,
}

impl CatchUpProgress {
    fn new(every: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self { started: now, last_report: now, every }
    }

    /// Logs one committed page; returns the INFO progress line when it also logged one.
    fn page(&mut self, summary: &PullSummary) -> Option<String> {
        let now = tokio::time::Instant::now();
        let progress = summary.progress(now.duration_since(self.started));
        tracing::debug!(pages = progress.pages, records = progress.records, total = progress.total, "page committed");
        if now.duration_since(self.last_report) < self.every {
            return None;
        }
        self.last_report = now;
        let line = format!("catching up: {progress}");
        tracing::info!(
            pages = progress.pages,
            records = progress.records,
            total = progress.total,
            percent = progress.percent(),
            records_per_second = progress.rate().round(),
            eta_seconds = progress.eta().map(|eta| eta.as_secs()),
            elapsed_seconds = progress.elapsed.as_secs(),
            "{line}"
        );
        Some(line)
    }
}

/// The daemon's pull loop for one connection × entity: catch up, wait for the next tick (or a
/// webhook's nudge), repeat; errors back off per the connector's advice and keep the cursor.
#[allow(clippy::too_many_arguments)]
pub async fn run<C: Connector>(
    connector: Arc<C>,
    store: Store,
    ingest: IngestHandle,
    entity: Entity,
    cadence: Cadence,
    nudge: Arc<Notify>,
    cancel: CancellationToken,
    backoff: Backoff,
) {
    let connection = connector.id().clone();
    let mut attempt = 0u32;
    loop {
        // One span per pass: every log line of the pass (pages, retries, throttling) carries it.
        let pass = tracing::info_span!("pull_pass", connection = %connection, entity = %entity);
        let mut progress = CatchUpProgress::new(PROGRESS_EVERY);
        let caught_up = catch_up(connector.as_ref(), &store, &ingest, entity, false, &cancel, |summary| {
            progress.page(summary);
        });
        let wait = match caught_up.instrument(pass).await {
            Ok(summary) => {
                attempt = 0;
                if summary.stats.records_in() > 0 {
                    tracing::info!(connection = %connection, entity = %entity, pages = summary.pages, created = summary.stats.created, updated = summary.stats.updated, deleted = summary.stats.deleted, "pull pass");
                } else {
                    tracing::debug!(connection = %connection, entity = %entity, pages = summary.pages, "pull pass: nothing new");
                }
                cadence.next_wait()
            }
            Err(PullError::Cancelled) => return,
            Err(PullError::Connector { source, .. }) => {
                attempt += 1;
                let advice = source.retry_advice();
                telemetry::record_sync_error(&connection, entity, advice_label(advice));
                let message = error_chain(&source);
                tracing::warn!(connection = %connection, entity = %entity, error = %message, advice = advice_label(advice), "pull failed");
                let _ = ingest.submit(Batch::Failed { connection: connection.clone(), entity, message }).await;
                if advice == RetryAdvice::GiveUp {
                    // A person must fix this (credentials, schema): check again only at the poll interval.
                    cadence.next_wait().max(jittered(Duration::from_secs(60)))
                } else {
                    backoff.delay(attempt, &source)
                }
            }
            Err(PullError::Ingest { source, .. }) => {
                if matches!(source, IngestError::Stopped) {
                    return;
                }
                attempt += 1;
                tracing::error!(connection = %connection, entity = %entity, error = %error_chain(&source), "ingest failed");
                backoff.jitter(attempt)
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = nudge.notified() => {}
        }
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_long_catch_up_reports_progress_every_few_seconds_not_every_page() {
        let mut progress = CatchUpProgress::new(PROGRESS_EVERY);
        let mut summary = PullSummary::default();
        let mut reported = Vec::new();
        // A page of 200 every second for 25 seconds; the vendor said 10,000 on the first page only.
        for page in 0..25 {
            tokio::time::advance(Duration::from_secs(1)).await;
            summary.pages += 1;
            summary.stats.created += 200;
            if page == 0 {
                summary.total = Some(10_000);
            }
            reported.push(progress.page(&summary));
        }
        let at: Vec<(usize, String)> =
            reported.into_iter().enumerate().filter_map(|(page, line)| Some((page + 1, line?))).collect();
        assert_eq!(
            at,
            [
                (10, "catching up: 2000 of 10000 records (20%), 10 pages, 200 records/s, 40s left".to_owned()),
                (20, "catching up: 4000 of 10000 records (40%), 20 pages, 200 records/s, 30s left".to_owned()),
            ],
            "one INFO line per {PROGRESS_EVERY:?} of catch-up, with the total kept from the first page"
        );
    }

    /// The vendor's total travels from the simulator's answer through the connector's page into the
    /// catch-up's progress (real HTTP over loopback, a real store).
    #[tokio::test]
    async fn the_total_a_simulator_says_reaches_the_catch_ups_progress() {
        let dir = tempfile::tempdir().unwrap();
        // The simulators answer while `_simulators` lives.
        let (_simulators, app) = crate::commands::demo::test_app(11, dir.path()).await;
        let cancel = CancellationToken::new();
        // Salesforce says `totalSize` on every query page; Zoho's `info.count` is the page's, so no total.
        for (connection, says_total) in [("salesforce", true), ("zoho", false)] {
            let connector = app.connectors[&crmsync_connectors::canonical::ConnectionId::new(connection)].clone();
            let mut seen = Vec::new();
            let summary =
                catch_up(connector.as_ref(), &app.store, &app.ingest, Entity::Account, true, &cancel, |summary| {
                    seen.push(summary.total);
                })
                .await
                .unwrap();
            let read = summary.stats.records_in();
            assert!(read > 0, "{connection}");
            let expected = says_total.then_some(read);
            assert!(seen.iter().all(|total| *total == expected), "{connection}: {seen:?}, {read} read");
            let shown = summary.progress(Duration::from_secs(2)).to_string();
            let start =
                if says_total { format!("{read} of {read} records (100%), ") } else { format!("{read} records, ") };
            assert!(shown.starts_with(&start), "{connection}: {shown}");
        }
        app.shutdown().await.unwrap();
    }
}
