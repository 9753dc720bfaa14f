//! The command line: every subcommand, its flags and the help text that explains them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// crmsync keeps accounts, leads, opportunities and orders consistent across Salesforce, Zoho CRM and
/// Microsoft Dynamics 365, and computes one set of sales metrics over all of them.
///
/// Configuration: the embedded defaults (`config/default.toml`, the reference for every key), then the
/// file given with `--config` (else `CRMSYNC_CONFIG`, else /etc/crmsync/crmsync.toml; with none of them
/// the command stops with an error), then `CRMSYNC__SECTION__KEY` environment variables
/// (e.g. `CRMSYNC__DAEMON__DATA_DIR=/srv/crmsync`; they reach tables, not `[[jobs]]` or `[[routes]]`). Secrets are read from the environment or files,
/// never written in the config file. Logs go to stderr (JSON when not a terminal); filter with `RUST_LOG`.
///
/// Start with `crmsync demo`: three simulated CRMs on loopback, synced, with the dashboard.
#[derive(Debug, Parser)]
#[command(name = "crmsync", version = VERSION, about, long_about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `crmsync --version`: the release, the git commit and the date it was built from, and the target.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CRMSYNC_GIT_COMMIT"),
    ", built ",
    env!("CRMSYNC_BUILD_DATE"),
    ", ",
    env!("CRMSYNC_TARGET"),
    ")"
);

/// Options every command that reads configuration takes.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML). Default: the file named by CRMSYNC_CONFIG, else
    /// /etc/crmsync/crmsync.toml; without any, the command stops with an error.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: pull schedulers, push loops, webhooks, REST API, dashboard and Prometheus metrics.
    ///
    /// Stops cleanly on SIGTERM/SIGINT within `daemon.shutdown_grace` (a second signal exits at once).
    /// Under systemd (`Type=notify`) it reports READY, WATCHDOG and STOPPING.
    Run(ConfigArgs),
    /// Run one sync pass now (pull everything pending, then push everything pending) and print a summary.
    ///
    /// Exits non-zero if any connection × entity failed.
    Sync(SyncArgs),
    /// Validate the configuration and report every problem at once (exit 1 on any).
    Check(CheckArgs),
    /// Show per connection × entity: last success, cursor, lag, records, outbox depth, dead letters,
    /// last error and API budget used.
    Status(StatusArgs),
    /// Dump canonical records of one entity.
    Export(ExportArgs),
    /// Print the unified sales KPIs (efficiency, coverage, satisfaction), funnel and channel mix.
    Metrics(MetricsArgs),
    /// Inspect and operate on the dead-letter queue (records a vendor rejected or that could not be mapped).
    Dlq(DlqArgs),
    /// List and resolve merge conflicts (the same field changed in two CRMs).
    Conflicts(ConflictsArgs),
    /// Undo a wrong identity match (`split`) or join two records that are one customer (`merge`).
    ///
    /// `crmsync export` shows every record's links and why each was joined. Run these with the daemon
    /// stopped (they write the store directly).
    Identity(IdentityArgs),
    /// The embedded default: start the three CRM simulators on loopback with overlapping seeded data,
    /// sync them, and serve the dashboard; with `--once`, sync, print the summary and metrics, and exit.
    Demo(DemoArgs),
    /// Run one vendor simulator alone (for trying a configuration without a real CRM).
    Simulate(SimulateArgs),
    /// Measure crmsync against the three built-in simulators: pull + reconcile + commit throughput,
    /// API calls next to the vendor minimum, resident memory through the sync, the calls of an
    /// incremental pass with nothing changed, and the time of the sales-metrics scan over the result
    /// (the README's "Performance" section lists the targets and the last figures).
    ///
    /// The simulators run as child processes (their memory is not the daemon's); the store is a fresh
    /// sled store in a temporary directory, removed afterwards. Build with `--release` for figures
    /// that mean anything.
    Bench(BenchArgs),
    /// Print a shell completion script: `crmsync completions bash > /usr/share/bash-completion/completions/crmsync`
    /// (zsh: a `_crmsync` file in `$fpath`; fish: `~/.config/fish/completions/crmsync.fish`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `crmsync man > /usr/share/man/man1/crmsync.1`.
    Man,
}

/// `crmsync bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Records in the generated world, split across accounts, leads, deals and orders and across the
    /// three CRMs as in the demo (a record may live in one, two or three of them).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to put the store (default: a temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the measurements as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `crmsync sync`.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only this job (its connections, entities and direction).
    #[arg(long)]
    pub job: Option<String>,
    /// Only this connection.
    #[arg(long)]
    pub connection: Option<String>,
    /// Only this entity (account, lead, opportunity, order).
    #[arg(long)]
    pub entity: Option<String>,
    /// Ignore saved cursors and read everything again (records are matched, not duplicated).
    #[arg(long)]
    pub full: bool,
}

/// `crmsync check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Also log in to each CRM and check objects, fields and permissions.
    #[arg(long)]
    pub connectivity: bool,
}

/// Output format of `status` and friends.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line, with links and provenance.
    Jsonl,
    /// One row per record with the canonical fields as columns.
    Csv,
}

/// `crmsync export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Entity to export (account, lead, opportunity, order).
    #[arg(long)]
    pub entity: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: ExportFormat,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Include tombstoned (deleted) records.
    #[arg(long)]
    pub include_deleted: bool,
}

/// `crmsync metrics`.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// `unified` (deduplicated across every CRM) or a connection name.
    #[arg(long, default_value = "unified")]
    pub scope: String,
    /// Window start: an instant (RFC 3339, e.g. 2026-10-01T00:00:00Z) or a date (2026-10-01, meaning
    /// 00:00 UTC); default: `metrics.window` before `--until`.
    #[arg(long)]
    pub since: Option<String>,
    /// Window end, exclusive: an instant or a date (00:00 UTC of that day); default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// Print JSON (the same body as `GET /api/v1/metrics`).
    #[arg(long)]
    pub json: bool,
    /// Print the definition of every number instead of computing them.
    #[arg(long)]
    pub explain: bool,
}

/// `crmsync dlq`.
#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: DlqAction,
}

/// Dead-letter operations.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqAction {
    /// List dead letters (id, connection, entity, reason).
    List {
        /// Print JSON with the raw payloads.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead-lettered pushes again (after fixing the cause).
    Retry {
        /// Dead-letter ids, or `all`.
        ids: Vec<String>,
    },
    /// Drop dead letters for good.
    Drop {
        /// Dead-letter ids, or `all`.
        ids: Vec<String>,
    },
}

/// `crmsync conflicts`.
#[derive(Debug, Clone, Args)]
pub struct ConflictsArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: ConflictsAction,
}

/// `crmsync identity`.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: IdentityAction,
}

/// Identity operations.
#[derive(Debug, Clone, Subcommand)]
pub enum IdentityAction {
    /// Join OTHER into KEEP: one canonical record with the copies of both. KEEP's values win; fields it
    /// lacks come from OTHER. The result is queued for every routed CRM; OTHER's id keeps resolving to KEEP.
    Merge {
        /// The canonical id that stays.
        keep: String,
        /// The canonical id joined into it.
        other: String,
    },
    /// Detach the copy held by CONNECTION into a new canonical record (a wrong match undone). The copy
    /// is matched by its link from then on, so the wrong match is not made again.
    Split {
        /// The canonical id.
        id: String,
        /// The connection whose copy is detached.
        #[arg(long)]
        connection: String,
    },
}

/// Conflict operations.
#[derive(Debug, Clone, Subcommand)]
pub enum ConflictsAction {
    /// List conflicts (unresolved only unless `--all`).
    List {
        /// Include resolved conflicts.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resolve a held conflict by choosing a side; the value propagates to the routed CRMs.
    Resolve {
        /// Conflict id.
        id: String,
        /// Which value wins.
        #[arg(long, value_enum)]
        take: ConflictSide,
    },
}

/// Which side of a conflict wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConflictSide {
    /// The value that was in the store.
    Current,
    /// The value that arrived.
    Incoming,
}

/// `crmsync demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Sync once, print the summary and the metrics, and exit.
    #[arg(long)]
    pub once: bool,
    /// Where to keep the demo store (default: a temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Dashboard / API listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Vendors with a simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimulatedVendor {
    /// Salesforce REST / Bulk 2.0.
    Salesforce,
    /// Zoho CRM v8.
    Zoho,
    /// Dataverse Web API.
    Dynamics365,
}

/// `crmsync simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Which vendor.
    #[arg(value_enum)]
    pub vendor: SimulatedVendor,
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Records per entity to seed (with `--shared-world`: records in the whole world).
    #[arg(long, default_value_t = 1000)]
    pub records: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Serve this vendor's slice of a world shared with other simulators started with the same
    /// `--seed` and `--records`, as the demo does: each customer, lead, deal and order lives in one,
    /// two or all three CRMs, so identity resolution has work to do. `--records` then counts the
    /// whole world's records, split like the demo (13 % accounts, 32 % leads, 16 % deals, 39 % orders).
    #[arg(long)]
    pub shared_world: bool,
    /// Salesforce: serve a multi-currency org (records carry `CurrencyIsoCode`). By default the org is
    /// single-currency, as Salesforce orgs are until an admin enables multiple currencies: no
    /// `CurrencyIsoCode` field, every amount in the corporate currency.
    #[arg(long)]
    pub multi_currency: bool,
    /// Salesforce: the org's corporate currency (`SELECT DefaultCurrencyIsoCode FROM Organization`).
    #[arg(long, default_value = "EUR")]
    pub corporate_currency: String,
    /// The instant the generated dates are relative to (default: now). Simulators sharing a world
    /// must share it too; `bench` passes one.
    #[arg(long, hide = true)]
    pub anchor: Option<crmsync_connectors::canonical::Timestamp>,
}
