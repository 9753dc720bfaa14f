//! Configuration: embedded `config/default.toml`, then the `--config` file, then `CRMSYNC__SECTION__KEY`
//! environment overrides; validated into a [`Config`] that reports every problem at once.
//!
//! Validation ([`Config::from_table`]) is pure and collects every problem with its key path; unknown
//! keys are reported with the closest valid key. `config/default.toml` documents every key.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crmsync_connectors::canonical::{ConnectionId, Currency, Entity, VendorKind};
use crmsync_connectors::dynamics365::Dynamics365Config;
use crmsync_connectors::salesforce::SalesforceConfig;
use crmsync_connectors::settings::{ConfigProblem, ConnectionSettings};
use crmsync_connectors::zoho::ZohoConfig;
use rust_decimal::Decimal;
use secrecy::SecretString;

/// The validated configuration. Only this type travels inward.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[api]`.
    pub api: ApiConfig,
    /// `[connections.NAME]`, by name.
    pub connections: BTreeMap<ConnectionId, ConnectionConfig>,
    /// `[[jobs]]`; when the file defines none, one implicit job per connection (pull + push, every `poll_interval`).
    pub jobs: Vec<JobConfig>,
    /// `[[routes]]`.
    pub routes: Vec<RouteConfig>,
    /// `[reconcile]`.
    pub reconcile: ReconcileConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// The file this configuration was read from (`None`: embedded defaults and environment only).
    pub source: Option<PathBuf>,
    /// Things that are valid but probably not what the operator wants (`check` prints them, `run`
    /// logs them at WARN): a public admin listener, a `poll_interval` no job uses, a connection no job
    /// covers, a secret file other users can read.
    pub warnings: Vec<ConfigProblem>,
}

/// Shortest `poll_interval` and job `every`: a shorter one spends the vendor's daily API allowance on
/// empty polls (4 entities every 10 s are already ~35,000 calls a day against Salesforce's typical
/// 100,000); webhooks give near-real-time changes.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest `drift_sweep_interval`: a sweep lists every id of every entity.
pub const MIN_DRIFT_SWEEP_INTERVAL: Duration = Duration::from_secs(300);
/// Longest interval of any kind (30 days): longer values are typos (`"2000h"`) and overflow timers.
pub const MAX_INTERVAL: Duration = Duration::from_secs(30 * 86_400);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, pretty otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// `[daemon]`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Public listener (webhooks, REST API, dashboard).
    pub listen: SocketAddr,
    /// Admin listener (Prometheus, health); loopback by default.
    pub admin_listen: SocketAddr,
    /// How long shutdown may take before the process exits anyway.
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Capacity of the ingest queue (batches); webhooks get 503 when it is full.
    pub ingest_queue: usize,
    /// The store's page cache in MiB (sled's `cache_capacity`).
    pub store_cache_mib: u64,
    /// How often the drift sweep compares id sets (`None`: never).
    pub drift_sweep_interval: Option<Duration>,
    /// `/readyz` fails once a connection × entity has been failing (no successful pull) this long.
    pub unready_after: Duration,
}

/// `[api]`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bearer token for `/api/v1` (`None`: the API is disabled).
    pub token: Option<SecretString>,
}

/// One `[connections.NAME]` table.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// What every connection has.
    pub settings: ConnectionSettings,
    /// The vendor part.
    pub vendor: VendorConfig,
}

/// The vendor part of a connection, by `kind`.
#[derive(Debug, Clone)]
pub enum VendorConfig {
    /// `kind = "salesforce"`.
    Salesforce(SalesforceConfig),
    /// `kind = "zoho"`.
    Zoho(ZohoConfig),
    /// `kind = "dynamics365"`.
    Dynamics365(Dynamics365Config),
}

impl VendorConfig {
    /// Returns the vendor family.
    pub fn kind(&self) -> VendorKind {
        match self {
            Self::Salesforce(_) => VendorKind::Salesforce,
            Self::Zoho(_) => VendorKind::Zoho,
            Self::Dynamics365(_) => VendorKind::Dynamics365,
        }
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Read from the CRMs only.
    Pull,
    /// Send queued changes only.
    Push,
    /// Both.
    Both,
}

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// At a fixed interval.
    Every(Duration),
    /// On a cron expression (validated; `sec min hour day month weekday` or the 5-field form).
    Cron(String),
}

/// One `[[jobs]]` entry.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Unique name.
    pub name: String,
    /// Connections covered (every one must exist).
    pub connections: Vec<ConnectionId>,
    /// Entities covered.
    pub entities: Vec<Entity>,
    /// Pull, push or both.
    pub direction: Direction,
    /// When it runs.
    pub schedule: Schedule,
    /// `true` for the implicit per-connection jobs.
    pub implicit: bool,
}

/// What a route does with deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletePolicy {
    /// Delete the target's copy.
    Delete,
    /// Leave the target's copy alone.
    Ignore,
    /// Mark instead of deleting (orders: set status cancelled).
    Mark,
}

/// One `[[routes]]` entry: changes of `entity` from any of `from` go to every one of `to`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Entity (`None` = `"*"`, every entity).
    pub entity: Option<Entity>,
    /// Source connections (`["*"]` expands to every connection).
    pub from: Vec<ConnectionId>,
    /// Target connections (`["*"]` expands to every connection).
    pub to: Vec<ConnectionId>,
    /// What deletes do.
    pub on_delete: DeletePolicy,
}

/// How a field changed on two sides is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The newest vendor modification wins; ties go to `source_priority`.
    Newest,
    /// The first connection in `source_priority` wins.
    Priority,
    /// Held until a person resolves it.
    Manual,
}

/// Per-entity (and optionally per-field) merge rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPolicy {
    /// Newest wins (ties: `source_priority`).
    Newest,
    /// This ordered list of connections decides.
    Priority(Vec<ConnectionId>),
    /// This connection owns the field.
    Authoritative(ConnectionId),
    /// A person decides.
    Manual,
}

/// `[reconcile]`.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Tie-break order of connections.
    pub source_priority: Vec<ConnectionId>,
    /// Default conflict policy.
    pub conflict: ConflictPolicy,
    /// Per-entity policy overrides (`[reconcile.policies.order] default = "newest", status = { authoritative = "sf_prod" }`):
    /// entity → (field or `"*"`) → policy.
    pub policies: BTreeMap<Entity, BTreeMap<String, FieldPolicy>>,
    /// Match keys per entity, each a list of canonical fields that must all match
    /// (defaults: account `[["name","domain"],["number"]]`, lead `[["email"]]`, order `[["number"]]`,
    /// opportunity `[["name","account"]]`).
    pub match_keys: BTreeMap<Entity, Vec<Vec<String>>>,
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Currency KPIs are reported in.
    pub reporting_currency: Currency,
    /// Exchange rates: 1 unit of the key currency = this many units of the reporting currency.
    pub fx: BTreeMap<Currency, Decimal>,
    /// Default window.
    pub window: Duration,
}

/// Configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed as TOML.
    #[error("cannot read configuration {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// One or more values are invalid; every problem is listed.
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(|problem| format!("  {problem}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

/// The embedded defaults (also the configuration reference).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

const COMMON_CONNECTION_KEYS: &[&str] =
    &["kind", "entities", "poll_interval", "start", "overlap", "rate_limit", "timeout", "retry", "fields", "mapping"];

impl Config {
    /// Loads the embedded defaults, then `path`, then `CRMSYNC__SECTION__KEY` variables (`env: None`
    /// reads the process environment; tests pass a map), and validates the result.
    pub fn load(
        path: Option<&std::path::Path>,
        env: Option<std::collections::HashMap<String, String>>,
        secrets: &dyn SecretSource,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|error| ConfigError::Read { path: path.display().to_string(), message: error.to_string() })?;
            // Parse first with toml for a precise line/column on syntax errors.
            toml::from_str::<toml::Table>(&text)
                .map_err(|error| ConfigError::Read { path: path.display().to_string(), message: error.to_string() })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let environment = config::Environment::with_prefix("CRMSYNC")
            .separator("__")
            .source(env.map(|map| map.into_iter().collect()));
        builder = builder.add_source(environment);
        let merged = builder.build().map_err(|error| ConfigError::Read {
            path: path.map_or("<defaults>".into(), |path| path.display().to_string()),
            message: error.to_string(),
        })?;
        let table: toml::Table = merged.try_deserialize().map_err(|error| ConfigError::Read {
            path: path.map_or("<defaults>".into(), |path| path.display().to_string()),
            message: error.to_string(),
        })?;
        let mut config = Self::from_table(&table, secrets)?;
        config.source = path.map(std::path::Path::to_path_buf);
        let mut file_warnings = Vec::new();
        secret_file_warnings(&toml::Value::Table(table), "", &mut file_warnings);
        config.warnings.extend(file_warnings);
        Ok(config)
    }

    /// Validates a merged configuration table. Pure apart from resolving secrets through `secrets`.
    pub fn from_table(table: &toml::Table, secrets: &dyn SecretSource) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let config = {
            let mut root = TableReader::new("", table, &mut problems, secrets);
            let daemon = root.table("daemon").map(|mut daemon| read_daemon(&mut daemon));
            let api = root.table("api").map(|mut api| {
                let token = api.opt_secret("token");
                api.finish(&[]);
                ApiConfig { token }
            });
            let connections = read_connections(&mut root);
            // Names are checked against every declared connection, valid or not, so one broken
            // connection is reported once and not again by each route or job that names it.
            let names: Vec<ConnectionId> = match table.get("connections") {
                Some(toml::Value::Table(declared)) => {
                    declared.keys().map(|name| ConnectionId::new(name.clone())).collect()
                }
                _ => Vec::new(),
            };
            let jobs = read_jobs(&mut root, &connections, &names);
            let routes = read_routes(&mut root, &names);
            let reconcile = root.table("reconcile").map(|mut reconcile| read_reconcile(&mut reconcile, &names));
            let metrics = root.table("metrics").map(|mut metrics| read_metrics(&mut metrics));
            root.finish(&[]);
            (daemon, api, connections, jobs, routes, reconcile, metrics)
        };
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        match config {
            (Some(daemon), Some(api), connections, jobs, routes, Some(reconcile), Some(metrics)) => {
                let warnings = warnings(table, &daemon, &connections, &jobs);
                Ok(Self { daemon, api, connections, jobs, routes, reconcile, metrics, source: None, warnings })
            }
            _ => Err(ConfigError::Invalid(vec![ConfigProblem {
                path: String::new(),
                message: "incomplete configuration (a section is missing)".into(),
            }])),
        }
    }

    /// A human-readable, secret-free summary (what `crmsync check` prints).
    pub fn summary(&self) -> String {
        let mut out = format!(
            "store: {}\nlisten: {} (webhooks, API), admin: {} (metrics, health)\napi: {}\n",
            self.daemon.data_dir.display(),
            self.daemon.listen,
            self.daemon.admin_listen,
            if self.api.token.is_some() { "enabled (token set)" } else { "disabled (no api.token)" }
        );
        out.push_str(&format!("connections: {}\n", self.connections.len()));
        for (id, connection) in &self.connections {
            let entities: Vec<&str> = connection.settings.entities.iter().map(Entity::as_str).collect();
            let endpoint = match &connection.vendor {
                VendorConfig::Salesforce(vendor) => format!("login {}", redact_url(&vendor.login_url)),
                VendorConfig::Zoho(vendor) => format!("accounts {}", redact_url(&vendor.accounts_url)),
                VendorConfig::Dynamics365(vendor) => format!("org {}", redact_url(&vendor.org_url)),
            };
            out.push_str(&format!(
                "  {id} ({}): {}; entities {}; every {}\n",
                connection.vendor.kind(),
                endpoint,
                entities.join(", "),
                crmsync_connectors::settings::format_duration(connection.settings.poll_interval)
            ));
        }
        out.push_str(&format!("jobs: {}\n", self.jobs.len()));
        for job in &self.jobs {
            let schedule = match &job.schedule {
                Schedule::Every(every) => format!("every {}", crmsync_connectors::settings::format_duration(*every)),
                Schedule::Cron(expression) => format!("cron {expression}"),
            };
            let connections: Vec<&str> = job.connections.iter().map(ConnectionId::as_str).collect();
            out.push_str(&format!(
                "  {}{}: {:?} {} on {}\n",
                job.name,
                if job.implicit { " (implicit)" } else { "" },
                job.direction,
                schedule,
                connections.join(", ")
            ));
        }
        out.push_str(&format!("routes: {}\n", self.routes.len()));
        for route in &self.routes {
            let from: Vec<&str> = route.from.iter().map(ConnectionId::as_str).collect();
            let to: Vec<&str> = route.to.iter().map(ConnectionId::as_str).collect();
            out.push_str(&format!(
                "  {}: {} -> {} (deletes: {:?})\n",
                route.entity.map_or("*", |entity| entity.as_str()),
                from.join(", "),
                to.join(", "),
                route.on_delete
            ));
        }
        out
    }
}

use crmsync_connectors::canonical::Vocabulary;
use crmsync_connectors::settings::{FieldPolicy as PrivacyPolicy, SecretSource, TableReader, redact_url};

/// Checks an interval against its bounds, recording a problem that says why.
fn check_interval(table: &mut TableReader<'_>, key: &str, value: Duration, minimum: Duration, why: &str) {
    let show = crmsync_connectors::settings::format_duration;
    if value < minimum {
        table.problem(key, format!("{} is too short: the minimum is {} ({why})", show(value), show(minimum)));
    } else if value > MAX_INTERVAL {
        table.problem(
            key,
            format!("too long: the maximum is {} (a longer interval is almost surely a typo)", show(MAX_INTERVAL)),
        );
    }
}

const POLL_WHY: &str =
    "shorter polls spend the vendor's daily API allowance on empty reads; webhooks bring changes in near real time";

/// The warnings of a valid configuration (see [`Config::warnings`]).
fn warnings(
    table: &toml::Table,
    daemon: &DaemonConfig,
    connections: &BTreeMap<ConnectionId, ConnectionConfig>,
    jobs: &[JobConfig],
) -> Vec<ConfigProblem> {
    let mut warnings = Vec::new();
    if !daemon.admin_listen.ip().is_loopback() {
        warnings.push(ConfigProblem {
            path: "daemon.admin_listen".into(),
            message: format!(
                "{} is reachable from other hosts, and it serves /status and /metrics without authentication \
                 (keep it on 127.0.0.1, or firewall the port)",
                daemon.admin_listen
            ),
        });
    }
    if jobs.iter().all(|job| job.implicit) {
        return warnings;
    }
    let declared = |name: &ConnectionId| {
        table
            .get("connections")
            .and_then(|connections| connections.get(name.as_str()))
            .is_some_and(|connection| connection.get("poll_interval").is_some())
    };
    for id in connections.keys() {
        let covering: Vec<&str> =
            jobs.iter().filter(|job| job.connections.contains(id)).map(|job| job.name.as_str()).collect();
        if covering.is_empty() {
            warnings.push(ConfigProblem {
                path: format!("connections.{id}"),
                message: "no [[jobs]] entry names this connection, so `run` never pulls or pushes it".into(),
            });
        } else if declared(id) {
            warnings.push(ConfigProblem {
                path: format!("connections.{id}.poll_interval"),
                message: format!(
                    "unused: [[jobs]] schedule this connection ({}); poll_interval applies only without [[jobs]]",
                    covering.join(", ")
                ),
            });
        }
    }
    warnings
}

/// Warns about `{ file = "…" }` secrets other users can read.
fn secret_file_warnings(value: &toml::Value, path: &str, warnings: &mut Vec<ConfigProblem>) {
    match value {
        toml::Value::Table(table) => {
            if let (Some(toml::Value::String(file)), 1) = (table.get("file"), table.len()) {
                let expanded = crmsync_connectors::settings::expand_secret_path(
                    file,
                    &crmsync_connectors::settings::SystemSecrets,
                );
                if let Some(mode) =
                    expanded.ok().and_then(|expanded| crmsync_connectors::settings::loose_secret_file_mode(&expanded))
                {
                    warnings.push(ConfigProblem {
                        path: path.to_owned(),
                        message: format!(
                            "secret file {file:?} is readable by other users (mode {mode:04o}); `chmod 600` it"
                        ),
                    });
                }
                return;
            }
            for (key, child) in table {
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                secret_file_warnings(child, &child_path, warnings);
            }
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                secret_file_warnings(item, &format!("{path}[{index}]"), warnings);
            }
        }
        _ => {}
    }
}

fn read_daemon(table: &mut TableReader<'_>) -> DaemonConfig {
    let data_dir = PathBuf::from(table.string_or("data_dir", "/var/lib/crmsync"));
    let mut address = |key: &str, default: &str| {
        let text = table.string_or(key, default);
        text.parse::<SocketAddr>().unwrap_or_else(|_| {
            table.problem(key, format!("invalid socket address {text:?} (expected e.g. \"127.0.0.1:9090\")"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let listen = address("listen", "0.0.0.0:8080");
    let admin_listen = address("admin_listen", "127.0.0.1:9090");
    let shutdown_grace = table.duration_or("shutdown_grace", Duration::from_secs(30));
    let log_format = match table.string_or("log_format", "auto").as_str() {
        "auto" => LogFormat::Auto,
        "json" => LogFormat::Json,
        "pretty" => LogFormat::Pretty,
        other => {
            table.problem("log_format", format!("unknown log format {other:?} (expected auto, json or pretty)"));
            LogFormat::Auto
        }
    };
    let ingest_queue = usize::try_from(table.opt_u64("ingest_queue").unwrap_or(64)).unwrap_or(64).max(1);
    let store_cache_mib = table.opt_u64("store_cache_mib").unwrap_or(crate::store::DEFAULT_CACHE_MIB);
    if store_cache_mib == 0 || store_cache_mib > 1024 * 1024 {
        table.problem("store_cache_mib", format!("{store_cache_mib} is out of range (expected 1 to 1048576 MiB)"));
    }
    let drift_sweep_interval = match table.raw("drift_sweep_interval") {
        Some(toml::Value::String(text)) if text == "off" => None,
        Some(toml::Value::String(text)) => match crmsync_connectors::settings::parse_duration(text) {
            Some(interval) => {
                check_interval(
                    table,
                    "drift_sweep_interval",
                    interval,
                    MIN_DRIFT_SWEEP_INTERVAL,
                    "a sweep lists every id of every entity; use \"off\" to disable it",
                );
                Some(interval)
            }
            None => {
                table.problem(
                    "drift_sweep_interval",
                    format!("invalid duration {text:?} (expected e.g. \"24h\" or \"off\")"),
                );
                None
            }
        },
        Some(other) => {
            table.problem(
                "drift_sweep_interval",
                format!("invalid duration {other} (expected e.g. \"24h\" or \"off\")"),
            );
            None
        }
        None => Some(Duration::from_secs(86_400)),
    };
    let unready_after = table.duration_or("unready_after", Duration::from_secs(900));
    table.finish(&[]);
    DaemonConfig {
        data_dir,
        listen,
        admin_listen,
        shutdown_grace,
        log_format,
        ingest_queue,
        store_cache_mib: store_cache_mib.clamp(1, 1024 * 1024),
        drift_sweep_interval,
        unready_after,
    }
}

fn read_connections(root: &mut TableReader<'_>) -> BTreeMap<ConnectionId, ConnectionConfig> {
    let mut connections = BTreeMap::new();
    let Some(mut table) = root.table("connections") else { return connections };
    for name in table.keys() {
        if name.is_empty()
            || !name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        {
            table.problem(
                &name,
                format!("invalid connection name {name:?} (use lower-case letters, digits and _, e.g. sf_prod)"),
            );
        }
        let Some(mut connection) = table.table(&name) else { continue };
        if let Some(parsed) = read_connection(&mut connection, &name) {
            connections.insert(ConnectionId::new(name.clone()), parsed);
        }
    }
    table.finish(&[]);
    connections
}

fn read_connection(table: &mut TableReader<'_>, name: &str) -> Option<ConnectionConfig> {
    let kind = match table.string("kind").as_deref() {
        Some("salesforce") => Some(VendorKind::Salesforce),
        Some("zoho") => Some(VendorKind::Zoho),
        Some("dynamics365") => Some(VendorKind::Dynamics365),
        Some(other) => {
            table.problem("kind", format!("unknown kind {other:?} (expected salesforce, zoho or dynamics365)"));
            None
        }
        None => None,
    };
    let mut settings = ConnectionSettings::new(name, Vocabulary::default());
    if let Some(entities) = table.opt_entities("entities") {
        settings.entities = entities;
    }
    settings.poll_interval = table.duration_or("poll_interval", Duration::from_secs(120));
    if table.has("poll_interval") {
        check_interval(table, "poll_interval", settings.poll_interval, MIN_POLL_INTERVAL, POLL_WHY);
    }
    settings.overlap = table.duration_or("overlap", Duration::from_secs(300));
    if let Some(start) = table.opt_string("start") {
        match start.parse() {
            Ok(start) => settings.start = Some(start),
            Err(_) => {
                table.problem("start", format!("invalid timestamp {start:?} (expected e.g. \"2024-01-01T00:00:00Z\")"))
            }
        }
    }
    settings.http.timeout = table.duration_or("timeout", Duration::from_secs(60));
    settings.http.per_second = std::num::NonZeroU32::new(10).unwrap_or(std::num::NonZeroU32::MIN);
    if let Some(mut rate) = table.table("rate_limit") {
        if let Some(per_second) = rate.opt_u64("per_second") {
            match u32::try_from(per_second).ok().and_then(std::num::NonZeroU32::new) {
                Some(value) => settings.http.per_second = value,
                None => rate.problem("per_second", format!("{per_second} is not a positive request rate")),
            }
        }
        settings.http.daily_budget = rate.opt_u64("daily_budget");
        if let Some(percent) = rate.opt_u64("headroom_percent") {
            if percent < 90 {
                settings.http.headroom = percent as f64 / 100.0;
            } else {
                rate.problem("headroom_percent", format!("{percent} leaves no room to call the vendor (0 to 89)"));
            }
        }
        rate.finish(&[]);
    }
    if let Some(mut retry) = table.table("retry") {
        settings.http.retry.give_up_after = retry.duration_or("give_up_after", settings.http.retry.give_up_after);
        settings.http.retry.base_delay = retry.duration_or("base_delay", settings.http.retry.base_delay);
        settings.http.retry.max_delay = retry.duration_or("max_delay", settings.http.retry.max_delay);
        retry.finish(&[]);
    }
    if let Some(mut fields) = table.table("fields") {
        settings.fields = PrivacyPolicy {
            deny: read_field_lists(&mut fields, "deny"),
            allow: read_field_lists(&mut fields, "allow"),
        };
        fields.finish(&[]);
    }
    let overrides = match table.raw("mapping") {
        Some(value) => match value.clone().try_into::<Vocabulary>() {
            Ok(overrides) => overrides,
            Err(error) => {
                table.problem("mapping", format!("invalid mapping: {}", error.message()));
                Vocabulary::default()
            }
        },
        None => Vocabulary::default(),
    };
    let vendor = match kind {
        Some(VendorKind::Salesforce) => SalesforceConfig::read(table).map(VendorConfig::Salesforce),
        Some(VendorKind::Zoho) => ZohoConfig::read(table).map(VendorConfig::Zoho),
        Some(VendorKind::Dynamics365) => Dynamics365Config::read(table).map(VendorConfig::Dynamics365),
        None => None,
    };
    let vendor_keys: &[&str] = match kind {
        Some(VendorKind::Salesforce) => SalesforceConfig::KEYS,
        Some(VendorKind::Zoho) => ZohoConfig::KEYS,
        Some(VendorKind::Dynamics365) => Dynamics365Config::KEYS,
        None => &[],
    };
    let known: Vec<&str> = COMMON_CONNECTION_KEYS.iter().chain(vendor_keys).copied().collect();
    finish_connection(table, &known);
    let vendor = vendor?;
    settings.vocabulary = Vocabulary::with_overrides(vendor.kind(), &overrides);
    Some(ConnectionConfig { settings, vendor })
}

fn finish_connection(table: &mut TableReader<'_>, known: &[&str]) {
    // Unknown keys of a connection table: reported against the common and the vendor keys.
    let keys = table.keys();
    for key in keys {
        if !known.contains(&key.as_str()) {
            let message = match crmsync_connectors::settings::closest(&key, known) {
                Some(suggestion) => format!("unknown key (did you mean `{suggestion}`?)"),
                None => "unknown key".to_owned(),
            };
            table.problem(&key, message);
        }
    }
}

fn read_field_lists(table: &mut TableReader<'_>, key: &str) -> BTreeMap<Entity, std::collections::BTreeSet<String>> {
    let mut lists = BTreeMap::new();
    if !table.has(key) {
        return lists;
    }
    let Some(mut by_entity) = table.table(key) else { return lists };
    for name in by_entity.keys() {
        match name.parse::<Entity>() {
            Ok(entity) => {
                if let Some(fields) = by_entity.opt_string_list(&name) {
                    lists.insert(entity, fields.into_iter().collect());
                }
            }
            Err(error) => {
                by_entity.raw(&name);
                by_entity.problem(&name, error.to_string());
            }
        }
    }
    by_entity.finish(&[]);
    lists
}

fn read_jobs(
    root: &mut TableReader<'_>,
    connections: &BTreeMap<ConnectionId, ConnectionConfig>,
    names: &[ConnectionId],
) -> Vec<JobConfig> {
    let mut jobs = Vec::new();
    match root.raw("jobs") {
        None => {}
        Some(toml::Value::Array(entries)) => {
            for (index, entry) in entries.iter().enumerate() {
                let path = format!("jobs[{index}]");
                let toml::Value::Table(entry) = entry else {
                    root.problem(&format!("jobs[{index}]"), "expected a table");
                    continue;
                };
                let secrets = root.secrets();
                let mut table = TableReader::new(path, entry, root.problems(), secrets);
                if let Some(job) = read_job(&mut table, names, &jobs) {
                    jobs.push(job);
                }
            }
        }
        Some(_) => root.problem("jobs", "expected a list of [[jobs]] tables"),
    }
    if jobs.is_empty() {
        for (id, connection) in connections {
            jobs.push(JobConfig {
                name: id.to_string(),
                connections: vec![id.clone()],
                entities: connection.settings.entities.clone(),
                direction: Direction::Both,
                schedule: Schedule::Every(connection.settings.poll_interval),
                implicit: true,
            });
        }
    }
    jobs
}

fn read_job(table: &mut TableReader<'_>, names: &[ConnectionId], earlier: &[JobConfig]) -> Option<JobConfig> {
    let name = table.string("name");
    if let Some(name) = &name
        && earlier.iter().any(|job| &job.name == name)
    {
        table.problem("name", format!("duplicate job name {name:?}"));
    }
    let job_connections: Vec<ConnectionId> =
        table.opt_string_list("connections").unwrap_or_default().into_iter().map(ConnectionId::new).collect();
    for id in &job_connections {
        if !names.contains(id) {
            table.problem("connections", unknown_connection(id, names.iter()));
        }
    }
    let entities = table.opt_entities("entities").unwrap_or_else(|| Entity::ALL.to_vec());
    let direction = match table.string_or("direction", "both").as_str() {
        "pull" => Direction::Pull,
        "push" => Direction::Push,
        "both" => Direction::Both,
        other => {
            table.problem("direction", format!("unknown direction {other:?} (expected pull, push or both)"));
            Direction::Both
        }
    };
    let schedule = match table.table("schedule") {
        Some(mut schedule) => {
            let every = schedule.opt_duration("every");
            let cron = schedule.opt_string("cron");
            schedule.finish(&[]);
            match (every, cron) {
                (Some(every), None) => {
                    check_interval(&mut schedule, "every", every, MIN_POLL_INTERVAL, POLL_WHY);
                    Some(Schedule::Every(every))
                }
                (None, Some(expression)) => match validate_cron(&expression) {
                    Ok(()) => Some(Schedule::Cron(expression)),
                    Err(message) => {
                        table.problem("schedule.cron", message);
                        None
                    }
                },
                (Some(_), Some(_)) => {
                    table.problem("schedule", "give either every or cron, not both");
                    None
                }
                (None, None) => {
                    if table.has("schedule") {
                        table.problem("schedule", "expected { every = \"2m\" } or { cron = \"0 */5 * * * *\" }");
                    }
                    None
                }
            }
        }
        None => None,
    };
    if job_connections.is_empty() {
        table.problem("connections", "a job needs at least one connection");
    }
    table.finish(&[]);
    Some(JobConfig {
        name: name?,
        connections: job_connections,
        entities,
        direction,
        schedule: schedule.unwrap_or(Schedule::Every(Duration::from_secs(120))),
        implicit: false,
    })
}

fn validate_cron(expression: &str) -> Result<(), String> {
    let cron = crate::scheduler::cron::Cron::parse(expression).map_err(|error| error.to_string())?;
    // The same floor as `every`: the shortest gap between consecutive firings over a sample of them.
    let mut previous: Option<crmsync_connectors::canonical::Timestamp> = None;
    let mut at: crmsync_connectors::canonical::Timestamp =
        "2027-01-01T00:00:00Z".parse().map_err(|_| "internal: bad sample instant".to_owned())?;
    for _ in 0..30 {
        let Some(next) = cron.next_after(at) else { break };
        if let Some(previous) = previous {
            let gap = Duration::from_millis(u64::try_from(next.unix_millis() - previous.unix_millis()).unwrap_or(0));
            if gap < MIN_POLL_INTERVAL {
                return Err(format!(
                    "{expression:?} fires {} apart: the minimum is {} ({POLL_WHY})",
                    crmsync_connectors::settings::format_duration(gap),
                    crmsync_connectors::settings::format_duration(MIN_POLL_INTERVAL)
                ));
            }
        }
        previous = Some(next);
        at = next;
    }
    Ok(())
}

fn unknown_connection<'a>(id: &ConnectionId, known: impl Iterator<Item = &'a ConnectionId>) -> String {
    let names: Vec<&str> = known.map(ConnectionId::as_str).collect();
    match crmsync_connectors::settings::closest(id.as_str(), &names) {
        Some(suggestion) => format!("unknown connection {:?} (did you mean {suggestion:?}?)", id.as_str()),
        None => format!("unknown connection {:?} (connections: {})", id.as_str(), names.join(", ")),
    }
}

fn read_connection_list(table: &mut TableReader<'_>, key: &str, names: &[ConnectionId]) -> Vec<ConnectionId> {
    let mut list = Vec::new();
    for name in table.opt_string_list(key).unwrap_or_default() {
        if name == "*" {
            list.extend(names.iter().cloned());
        } else {
            let id = ConnectionId::new(name);
            if names.contains(&id) {
                list.push(id);
            } else {
                let message = unknown_connection(&id, names.iter());
                table.problem(key, message);
            }
        }
    }
    list.dedup();
    list
}

fn read_routes(root: &mut TableReader<'_>, names: &[ConnectionId]) -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    match root.raw("routes") {
        None => {}
        Some(toml::Value::Array(entries)) => {
            for (index, entry) in entries.iter().enumerate() {
                let toml::Value::Table(entry) = entry else {
                    root.problem(&format!("routes[{index}]"), "expected a table");
                    continue;
                };
                let secrets = root.secrets();
                let mut table = TableReader::new(format!("routes[{index}]"), entry, root.problems(), secrets);
                let entity = match table.string_or("entity", "*").as_str() {
                    "*" => None,
                    name => match name.parse::<Entity>() {
                        Ok(entity) => Some(entity),
                        Err(error) => {
                            table.problem("entity", error.to_string());
                            None
                        }
                    },
                };
                let from = read_connection_list(&mut table, "from", names);
                let to = read_connection_list(&mut table, "to", names);
                let on_delete = match table.string_or("on_delete", "ignore").as_str() {
                    "delete" => DeletePolicy::Delete,
                    "ignore" => DeletePolicy::Ignore,
                    "mark" => DeletePolicy::Mark,
                    other => {
                        table.problem(
                            "on_delete",
                            format!("unknown delete policy {other:?} (expected delete, ignore or mark)"),
                        );
                        DeletePolicy::Ignore
                    }
                };
                table.finish(&[]);
                routes.push(RouteConfig { entity, from, to, on_delete });
            }
        }
        Some(_) => root.problem("routes", "expected a list of [[routes]] tables"),
    }
    routes
}

fn read_reconcile(table: &mut TableReader<'_>, names: &[ConnectionId]) -> ReconcileConfig {
    let source_priority = read_connection_list(table, "source_priority", names);
    let conflict = match table.string_or("conflict", "newest").as_str() {
        "newest" => ConflictPolicy::Newest,
        "priority" => ConflictPolicy::Priority,
        "manual" => ConflictPolicy::Manual,
        other => {
            table.problem(
                "conflict",
                format!("unknown conflict policy {other:?} (expected newest, priority or manual)"),
            );
            ConflictPolicy::Newest
        }
    };
    let mut policies = BTreeMap::new();
    if table.has("policies")
        && let Some(mut by_entity) = table.table("policies")
    {
        for entity_name in by_entity.keys() {
            let entity = match entity_name.parse::<Entity>() {
                Ok(entity) => entity,
                Err(error) => {
                    by_entity.raw(&entity_name);
                    by_entity.problem(&entity_name, error.to_string());
                    continue;
                }
            };
            let Some(mut fields) = by_entity.table(&entity_name) else { continue };
            let mut per_field = BTreeMap::new();
            for field in fields.keys() {
                let key = if field == "default" { "*".to_owned() } else { field.clone() };
                if key != "*" && !entity.fields().contains(&key.as_str()) {
                    let message = match crmsync_connectors::settings::closest(&key, entity.fields()) {
                        Some(suggestion) => format!("{entity} has no field {key:?} (did you mean {suggestion:?}?)"),
                        None => format!("{entity} has no field {key:?}"),
                    };
                    fields.raw(&field);
                    fields.problem(&field, message);
                    continue;
                }
                let policy = match fields.raw(&field) {
                    Some(toml::Value::String(text)) => match text.as_str() {
                        "newest" => Some(FieldPolicy::Newest),
                        "manual" => Some(FieldPolicy::Manual),
                        other => {
                            fields.problem(&field, format!("unknown policy {other:?} (expected newest, manual, {{ priority = [...] }} or {{ authoritative = \"conn\" }})"));
                            None
                        }
                    },
                    Some(toml::Value::Table(spec)) => match (spec.get("priority"), spec.get("authoritative")) {
                        (Some(toml::Value::Array(order)), None) => {
                            let order: Vec<ConnectionId> =
                                order.iter().filter_map(|name| name.as_str()).map(ConnectionId::new).collect();
                            match order.iter().find(|id| !names.contains(id)) {
                                Some(unknown) => {
                                    let message = unknown_connection(unknown, names.iter());
                                    fields.problem(&field, message);
                                    None
                                }
                                None => Some(FieldPolicy::Priority(order)),
                            }
                        }
                        (None, Some(toml::Value::String(owner))) => {
                            let owner = ConnectionId::new(owner.clone());
                            if names.contains(&owner) {
                                Some(FieldPolicy::Authoritative(owner))
                            } else {
                                let message = unknown_connection(&owner, names.iter());
                                fields.problem(&field, message);
                                None
                            }
                        }
                        _ => {
                            fields
                                .problem(&field, "expected { priority = [\"a\", \"b\"] } or { authoritative = \"a\" }");
                            None
                        }
                    },
                    _ => {
                        fields.problem(&field, "expected a policy name or table");
                        None
                    }
                };
                if let Some(policy) = policy {
                    per_field.insert(key, policy);
                }
            }
            fields.finish(&[]);
            policies.insert(entity, per_field);
        }
        by_entity.finish(&[]);
    }
    let mut match_keys = BTreeMap::new();
    if table.has("match_keys")
        && let Some(mut by_entity) = table.table("match_keys")
    {
        for entity_name in by_entity.keys() {
            let Some(value) = by_entity.raw(&entity_name) else { continue };
            let Ok(entity) = entity_name.parse::<Entity>() else {
                by_entity.problem(&entity_name, format!("unknown entity {entity_name:?}"));
                continue;
            };
            let parsed: Result<Vec<Vec<String>>, _> = value.clone().try_into();
            match parsed {
                Ok(keys) => {
                    for field in keys.iter().flatten() {
                        if !entity.fields().contains(&field.as_str()) {
                            by_entity.problem(&entity_name, format!("{entity} has no field {field:?}"));
                        }
                    }
                    match_keys.insert(entity, keys);
                }
                Err(_) => by_entity.problem(
                    &entity_name,
                    "expected a list of field lists, e.g. [[\"name\", \"domain\"], [\"number\"]]",
                ),
            }
        }
        by_entity.finish(&[]);
    }
    let defaults = crate::reconcile::default_match_keys();
    for (entity, keys) in defaults {
        match_keys.entry(entity).or_insert(keys);
    }
    table.finish(&[]);
    ReconcileConfig { source_priority, conflict, policies, match_keys }
}

fn read_metrics(table: &mut TableReader<'_>) -> MetricsConfig {
    let currency_text = table.string_or("reporting_currency", "EUR");
    let reporting_currency = Currency::new(&currency_text).unwrap_or_else(|error| {
        table.problem("reporting_currency", error.to_string());
        Currency::new("EUR").expect("EUR is a valid currency code")
    });
    let mut fx = BTreeMap::new();
    if table.has("fx")
        && let Some(mut rates) = table.table("fx")
    {
        for code in rates.keys() {
            let value = rates.raw(&code).cloned();
            let currency = match Currency::new(&code) {
                Ok(currency) => currency,
                Err(error) => {
                    rates.problem(&code, error.to_string());
                    continue;
                }
            };
            let rate = match &value {
                Some(toml::Value::String(text)) => text.parse::<Decimal>().ok(),
                Some(toml::Value::Integer(number)) => Some(Decimal::from(*number)),
                Some(toml::Value::Float(number)) => Decimal::try_from(*number).ok(),
                _ => None,
            };
            match rate {
                Some(rate) if rate > Decimal::ZERO => {
                    fx.insert(currency, rate);
                }
                _ => rates.problem(
                    &code,
                    format!(
                        "invalid exchange rate {} (expected a positive decimal, e.g. \"1.08\")",
                        value.map_or("none".into(), |value| value.to_string())
                    ),
                ),
            }
        }
        rates.finish(&[]);
    }
    let window = table.duration_or("window", Duration::from_secs(30 * 86_400));
    table.finish(&[]);
    MetricsConfig { reporting_currency, fx, window }
}
