//! `crmsync status` and `GET /api/v1/status`: what the store knows about every connection × entity
//! and every job, read without touching any vendor.

use std::collections::BTreeMap;

use crmsync_connectors::Throttling;
use crmsync_connectors::canonical::{ConnectionId, Entity, Timestamp};
use serde::Serialize;

use crate::config::Config;
use crate::store::{Store, StoreError};

/// The parts of the configuration status needs.
#[derive(Debug, Clone, Default)]
pub struct StatusConfig {
    /// Connection → (kind, entities, daily budget).
    pub connections: BTreeMap<ConnectionId, (String, Vec<Entity>, Option<u64>)>,
    /// Job name → (connections, entities).
    pub jobs: Vec<(String, Vec<ConnectionId>, Vec<Entity>)>,
}

impl StatusConfig {
    /// Extracts what status needs from the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            connections: config
                .connections
                .iter()
                .map(|(id, connection)| {
                    (
                        id.clone(),
                        (
                            connection.vendor.kind().to_string(),
                            connection.settings.entities.clone(),
                            connection.settings.http.daily_budget,
                        ),
                    )
                })
                .collect(),
            jobs: config
                .jobs
                .iter()
                .map(|job| (job.name.clone(), job.connections.clone(), job.entities.clone()))
                .collect(),
        }
    }
}

/// One connection × entity.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EntityStatus {
    /// Entity.
    pub entity: Entity,
    /// Last successful pull.
    pub last_success: Option<Timestamp>,
    /// Seconds since then.
    pub lag_seconds: Option<i64>,
    /// Whether the last pull caught up.
    pub caught_up: bool,
    /// The saved cursor (opaque; shortened).
    pub cursor: Option<String>,
    /// Records of this entity linked to this connection.
    pub records: u64,
    /// Records read in total.
    pub records_pulled: u64,
    /// The last error since the last success.
    pub last_error: Option<String>,
}

/// One connection.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ConnectionStatus {
    /// Name.
    pub connection: String,
    /// Vendor.
    pub kind: String,
    /// Per entity.
    pub entities: Vec<EntityStatus>,
    /// Changes waiting to be pushed.
    pub outbox_depth: u64,
    /// Calls counted against the daily budget in the current window.
    pub budget_used: Option<u64>,
    /// The daily budget.
    pub budget_limit: Option<u64>,
    /// How the vendor has been throttling this connection (rate in force, throttled answers, waits,
    /// the last throttled answer, a daily-limit pause); absent until the connection first ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling: Option<Throttling>,
}

/// One job.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JobStatus {
    /// Name.
    pub job: String,
    /// The oldest last success among its connection × entities (`None` until every one succeeded once).
    pub last_success: Option<Timestamp>,
    /// Whether any of its connection × entities has an error.
    pub failing: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// When it was taken.
    pub at: Timestamp,
    /// Per connection.
    pub connections: Vec<ConnectionStatus>,
    /// Per job.
    pub jobs: Vec<JobStatus>,
    /// Records per entity (live, not deleted).
    pub records: BTreeMap<Entity, u64>,
    /// Dead letters waiting.
    pub dead_letters: u64,
    /// Conflicts not yet resolved.
    pub open_conflicts: u64,
    /// The last storage failure (disk full, I/O error, damaged data) while the last write has not
    /// succeeded since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
}

/// Collects the report.
pub fn collect(store: &Store, config: &StatusConfig) -> Result<StatusReport, StoreError> {
    let now = Timestamp::now();
    let mut connections = Vec::new();
    for (id, (kind, entities, budget_limit)) in &config.connections {
        let mut rows = Vec::new();
        for entity in entities {
            let status = store.sync_status(id, *entity)?;
            let cursor = store.cursor(id, *entity)?.map(|cursor| shorten(cursor.as_str()));
            let last_success = status.as_ref().and_then(|status| status.last_success);
            rows.push(EntityStatus {
                entity: *entity,
                last_success,
                lag_seconds: last_success.map(|at| (now.unix_millis() - at.unix_millis()) / 1000),
                caught_up: status.as_ref().is_some_and(|status| status.caught_up),
                cursor,
                records: store.link_count(id, *entity)?,
                records_pulled: status.as_ref().map_or(0, |status| status.records_pulled),
                last_error: status.and_then(|status| status.last_error),
            });
        }
        let budget_used = store
            .load_state(id, "api_budget")?
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|value| value.get("used").and_then(serde_json::Value::as_u64));
        let throttling = store
            .load_state(id, Throttling::STATE_KEY)?
            .and_then(|text| serde_json::from_str::<Throttling>(&text).ok());
        connections.push(ConnectionStatus {
            connection: id.to_string(),
            kind: kind.clone(),
            entities: rows,
            outbox_depth: store.outbox_depth(id)?,
            budget_used,
            budget_limit: *budget_limit,
            throttling,
        });
    }
    let jobs = config
        .jobs
        .iter()
        .map(|(name, job_connections, job_entities)| {
            let covered: Vec<&EntityStatus> = connections
                .iter()
                .filter(|status| job_connections.iter().any(|id| id.as_str() == status.connection))
                .flat_map(|status| status.entities.iter())
                .filter(|status| job_entities.contains(&status.entity))
                .collect();
            let last_success = if covered.iter().all(|status| status.last_success.is_some()) {
                covered.iter().filter_map(|status| status.last_success).min()
            } else {
                None
            };
            JobStatus {
                job: name.clone(),
                last_success,
                failing: covered.iter().any(|status| status.last_error.is_some()),
            }
        })
        .collect();
    Ok(StatusReport {
        at: now,
        connections,
        jobs,
        records: store.counts()?,
        dead_letters: store.dead_letter_count()?,
        open_conflicts: store.conflicts(true)?.len() as u64,
        storage_error: store.storage_error(),
    })
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= 60 {
        text.to_owned()
    } else {
        let head: String = text.chars().take(57).collect();
        format!("{head}…")
    }
}

/// One line on throttling, when there is anything to say (a lowered rate, throttled answers, waits
/// or a pause).
fn throttling_line(throttling: &Throttling, now: Timestamp) -> Option<String> {
    let quiet = throttling.throttled == 0
        && throttling.waits == 0
        && throttling.paused_until.is_none()
        && throttling.current_per_second >= throttling.configured_per_second;
    if quiet {
        return None;
    }
    let mut line = format!(
        "  throttling: rate {:.2}/{:.0} req/s, {} throttled answers, {} waits ({:.1}s)",
        throttling.current_per_second,
        throttling.configured_per_second,
        throttling.throttled,
        throttling.waits,
        throttling.waited_ms as f64 / 1000.0
    );
    if let (Some(at), Some(said)) = (throttling.last_throttled_at, &throttling.last_throttled) {
        line.push_str(&format!(", last at {at}: {said}"));
    }
    if let Some(until) = throttling.paused_until.filter(|until| *until > now) {
        let reason = throttling.paused_reason.as_deref().unwrap_or("daily API limit reached");
        line.push_str(&format!("\n  PAUSED until {until}: {reason}"));
    }
    line.push('\n');
    Some(line)
}

/// Renders the report as tables.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    if report.connections.is_empty() {
        out.push_str("no connections configured\n");
    }
    for connection in &report.connections {
        let budget = match (connection.budget_used, connection.budget_limit) {
            (Some(used), Some(limit)) => format!("{used}/{limit}"),
            (Some(used), None) => format!("{used}/unlimited"),
            (None, Some(limit)) => format!("0/{limit}"),
            (None, None) => "unlimited".to_owned(),
        };
        out.push_str(&format!(
            "{} ({})  outbox: {}  api budget: {}\n",
            connection.connection, connection.kind, connection.outbox_depth, budget
        ));
        if let Some(line) = connection.throttling.as_ref().and_then(|throttling| throttling_line(throttling, report.at))
        {
            out.push_str(&line);
        }
        out.push_str(&format!(
            "  {:<12} {:<22} {:>8} {:>9} {:>10}  {}\n",
            "entity", "last success", "lag", "records", "pulled", "last error"
        ));
        for entity in &connection.entities {
            out.push_str(&format!(
                "  {:<12} {:<22} {:>8} {:>9} {:>10}  {}\n",
                entity.entity.as_str(),
                entity.last_success.map_or_else(|| "never".to_owned(), |at| at.to_string().chars().take(20).collect()),
                entity.lag_seconds.map_or_else(|| "-".to_owned(), |lag| format!("{lag}s")),
                entity.records,
                entity.records_pulled,
                entity.last_error.as_deref().unwrap_or("-"),
            ));
        }
    }
    if !report.jobs.is_empty() {
        out.push_str("jobs:\n");
        for job in &report.jobs {
            out.push_str(&format!(
                "  {:<24} last complete pass: {:<22} {}\n",
                job.job,
                job.last_success.map_or_else(|| "never".to_owned(), |at| at.to_string()),
                if job.failing { "FAILING" } else { "ok" }
            ));
        }
    }
    let records: Vec<String> = report.records.iter().map(|(entity, count)| format!("{entity}: {count}")).collect();
    out.push_str(&format!(
        "store: {}  dead letters: {}  open conflicts: {}\n",
        if records.is_empty() { "empty".to_owned() } else { records.join(", ") },
        report.dead_letters,
        report.open_conflicts
    ));
    if let Some(error) = &report.storage_error {
        out.push_str(&format!("STORAGE ERROR: {error}\n"));
    }
    out
}
