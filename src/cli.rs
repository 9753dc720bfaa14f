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

/// How an operator command reaches a running daemon. While a daemon holds the store, `orders`,
/// `conflicts`, `dlq`, `identity`, `metrics`, `export` and `status` ask its REST API instead of
/// opening the store; the output is the same.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientArgs {
    /// The daemon's API, e.g. http://127.0.0.1:8080 (default: `daemon.listen` of the configuration,
    /// on loopback when it is a wildcard address). When given, the API is used even if the store is free.
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,
    /// The API token (default: `api.token` of the configuration).
    #[arg(long, env = "CRMSYNC_API_TOKEN", value_name = "TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
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
    /// Sales orders: list, show, create, move through their statuses, delete. Every change goes to
    /// the CRMs the order routes name (with the daemon running at once, otherwise with the next sync).
    Orders(OrdersArgs),
    /// Inspect and operate on the dead-letter queue (records a vendor rejected or that could not be mapped).
    Dlq(DlqArgs),
    /// List and resolve merge conflicts (the same field changed in two CRMs).
    Conflicts(ConflictsArgs),
    /// Undo a wrong identity match (`split`) or join two records that are one customer (`merge`).
    ///
    /// `crmsync export` shows every record's links and why each was joined. While the daemon runs,
    /// the change goes through its API; otherwise the store is changed directly.
    Identity(IdentityArgs),
    /// The embedded default: start the three CRM simulators on loopback with overlapping seeded data,
    /// sync them, and serve the dashboard; with `--once`, sync, print the summary and metrics, and exit.
    Demo(DemoArgs),
    /// Run one vendor simulator alone (for trying a configuration without a real CRM).
    Simulate(SimulateArgs),
    /// Measure crmsync against the three built-in simulators: pull + reconcile + commit throughput,
    /// API calls next to the vendor minimum, resident memory through the sync and each phase's peak,
    /// the calls of an incremental pass with nothing changed, the time of the sales-metrics scan over the result,
    /// and webhook → durable store latency at 1,000 deliveries/s (the README's "Performance"
    /// section lists the targets and the last figures).
    ///
    /// The webhook deliveries come from a load generator in a process of its own, over at most 64
    /// kept-alive connections; its CPU time is reported beside this process's.
    ///
    /// The simulators run as child processes (their memory is not the daemon's); the store is a fresh
    /// sled store in a temporary directory, removed afterwards. The connections' clients may send
    /// 100,000 requests/s (not their default 10), so the pass measures crmsync's engine, not the
    /// vendors' limits; the report says what bound it (the connection it ended with, its time
    /// reading pages and waiting for the writer, and how busy the single writer was). Build with
    /// `--release` for figures that mean anything.
    Bench(BenchArgs),
    /// The load generator of `bench`'s webhook phase, which starts it as a process of its own so
    /// that it does not share the measured process's memory and threads. Reads the endpoint's key
    /// and the deliveries from stdin (a secret never goes on a command line), posts them at `--rate`
    /// per second over at most `--connections` kept-alive connections, and prints each delivery's
    /// status and latency and its own CPU time on stdout, as one line of JSON.
    #[command(hide = true)]
    BenchWebhooks(BenchWebhooksArgs),
    /// The warm-up of `bench`, which starts it as a process of its own so that the memory it frees
    /// is not counted as the measured pass's: reads every connection × entity of `--config` (a
    /// configuration `bench` wrote, over the simulators' demo credentials) to the end with a
    /// throwaway store in `--store`, discarding the pages, while the simulators record their answers.
    #[command(hide = true)]
    BenchWarmUp(BenchWarmUpArgs),
    /// Write a consistent backup of the store to a file (through the running daemon's API while it
    /// holds the store, else from the store directly). The file is checked before it is kept.
    Backup(BackupArgs),
    /// Restore a backup into `daemon.data_dir`, which must hold no store (stop crmsync and move the
    /// old store aside first). The next start resumes from the backup's cursors.
    Restore(RestoreArgs),
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
    /// The store's page cache in MiB for the measured pass (default: `daemon.store_cache_mib`'s
    /// default, 16).
    #[arg(long)]
    pub store_cache_mib: Option<u64>,
    /// Print the measurements as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `crmsync bench-webhooks` (started by `bench`).
#[derive(Debug, Clone, Args)]
pub struct BenchWebhooksArgs {
    /// The webhook endpoint (`http://127.0.0.1:PORT/webhooks/CONNECTION`).
    #[arg(long)]
    pub url: String,
    /// Deliveries per second.
    #[arg(long)]
    pub rate: u64,
    /// The most connections open at once (each kept alive for the next delivery).
    #[arg(long)]
    pub connections: usize,
}

/// `crmsync bench-warm-up` (started by `bench`).
#[derive(Debug, Clone, Args)]
pub struct BenchWarmUpArgs {
    /// The configuration `bench` wrote (its connections point at the simulators).
    #[arg(long)]
    pub config: PathBuf,
    /// The throwaway store's directory (removed at the end).
    #[arg(long)]
    pub store: PathBuf,
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
    /// After the pass, run the drift sweep of each selected connection × entity now (as the daemon
    /// does every `drift_sweep_interval`): list the CRM's ids, tombstone records it no longer has,
    /// fetch ones missing or newer. What it repairs is pushed by the next pass.
    #[arg(long)]
    pub sweep: bool,
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

/// `crmsync backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The running daemon's API (used while it holds the store).
    #[command(flatten)]
    pub client: ClientArgs,
    /// The backup file to write (created 0600; it holds customer data).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `crmsync restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Configuration (its `daemon.data_dir` receives the store).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The backup file to restore.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

/// Output format of `status` and friends.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The running daemon's API (used while it holds the store).
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// The running daemon's API (used while it holds the store).
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// The running daemon's API (used while it holds the store).
    #[command(flatten)]
    pub client: ClientArgs,
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

/// `crmsync orders`.
#[derive(Debug, Clone, Args)]
pub struct OrdersArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The running daemon's API (used while it holds the store).
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: OrdersAction,
}

/// Order operations.
#[derive(Debug, Clone, Subcommand)]
pub enum OrdersAction {
    /// List orders, oldest first (filters combine; `--cursor` continues where a page stopped).
    List {
        /// Only this status (draft, confirmed, shipped, delivered, invoiced, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this channel (direct, agent, ecommerce, other).
        #[arg(long)]
        channel: Option<String>,
        /// Only this customer (canonical account id).
        #[arg(long)]
        account: Option<String>,
        /// Only orders with a copy in this connection.
        #[arg(long)]
        connection: Option<String>,
        /// Order date on or after this (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Order date before this (exclusive).
        #[arg(long)]
        until: Option<String>,
        /// Orders per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this cursor (printed under a full page).
        #[arg(long)]
        cursor: Option<String>,
        /// Newest first.
        #[arg(long)]
        newest_first: bool,
        /// Include deleted orders.
        #[arg(long)]
        include_deleted: bool,
        /// Print JSON (the body of `GET /api/v1/orders`).
        #[arg(long)]
        json: bool,
    },
    /// Show one order: status, customer, lines, total, its copy in each CRM and its version.
    Get {
        /// The order's canonical id.
        id: String,
        /// Print JSON (the body of `GET /api/v1/orders/{id}`).
        #[arg(long)]
        json: bool,
    },
    /// Create an order (draft unless `--status confirmed`); it is queued for every routed CRM.
    Create {
        /// The customer: a canonical account id, or a vendor id with `--account-connection`.
        #[arg(long)]
        account: String,
        /// The connection whose id `--account` is.
        #[arg(long)]
        account_connection: Option<String>,
        /// direct, agent, ecommerce or other.
        #[arg(long)]
        channel: String,
        /// ISO 4217 currency code of every amount.
        #[arg(long)]
        currency: String,
        /// A line, PRODUCT:QUANTITY:UNIT_PRICE or PRODUCT:QUANTITY:UNIT_PRICE:SKU (repeat for more).
        #[arg(long = "line", value_name = "LINE", required = true)]
        lines: Vec<String>,
        /// Order number (default: generated, SO-YYYYMMDD-xxxxxxxx); unique among orders.
        #[arg(long)]
        number: Option<String>,
        /// draft (default) or confirmed.
        #[arg(long)]
        status: Option<String>,
        /// Order date, YYYY-MM-DD (default: today, UTC).
        #[arg(long)]
        order_date: Option<String>,
        /// The opportunity it came from (canonical id).
        #[arg(long)]
        opportunity: Option<String>,
        /// Free-text details.
        #[arg(long)]
        details: Option<String>,
        /// Print JSON (the body `POST /api/v1/orders` answers).
        #[arg(long)]
        json: bool,
    },
    /// Move an order to another status: draft → confirmed → shipped → delivered → invoiced, or
    /// cancelled from any status before invoiced. The CRMs get it in their own form.
    SetStatus {
        /// The order's canonical id.
        id: String,
        /// The new status.
        status: String,
        /// Refuse the change if the order is no longer at this version (as `orders get` shows it).
        #[arg(long)]
        if_version: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an order: each routed CRM follows its route's `on_delete` (delete its copy, cancel it
    /// with `mark`, or leave it with `ignore`).
    Delete {
        /// The order's canonical id.
        id: String,
        /// Refuse if the order is no longer at this version.
        #[arg(long)]
        if_version: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `crmsync dlq`.
#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The running daemon's API (used while it holds the store).
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// Queue dead-lettered pushes again and apply set-aside pulled changes again (after fixing the
    /// cause). Records a pull could not decode stay: they wait until they change in the vendor.
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
    /// The running daemon's API (used while it holds the store).
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// The running daemon's API (used while it holds the store).
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// Dashboard / API listener (port 0: one the system picks; the URLs printed name it).
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
