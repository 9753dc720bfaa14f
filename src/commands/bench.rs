//! `crmsync bench [--records N]`: the quality bars of SPEC §7, measured (never asserted by timed tests).
//!
//! 1. Starts the three simulators as child processes (`crmsync simulate <vendor> --shared-world`), so
//!    their memory is not counted as the daemon's, over one generated world of N records.
//! 2. A warm-up, in a process of its own (`crmsync bench-warm-up`, [`warm_up_process`]) so that
//!    the memory its reads freed is not held by the measured process: connectors of their own
//!    (over a throwaway store) read every connection × entity to the end while the simulators
//!    record their answers (the bench serving mode, [`crmsync_connectors::sim::replay`]). The
//!    measured pass then gets the same answers from the simulators' memory, so the simulators cost
//!    next to nothing and the figures are crmsync's; the answers the simulators had to render
//!    anyway (a request the warm-up did not make) are reported as misses.
//! 3. In this process, with the daemon's own parts (config, connectors, ingest writer, sled store on
//!    disk): a full pull of every connection × entity into a fresh store, the same pass `crmsync sync`
//!    runs, without pushes (no routes), sampling the resident set size every 100 ms. Every
//!    connection's client may send `BENCH_REQUESTS_PER_SECOND` requests a second (the default is
//!    10): the bench measures the engine, not the vendors' limits. Reported:
//!    records/s for pull + reconcile + commit, the CPU time of this process per record and of the
//!    simulators (their share of the pass), what bound the pass (the connection it ended with, how
//!    long its pulls spent reading pages and waiting for the writer, and how busy the single writer
//!    was), API calls per connection × entity next to the vendor
//!    minimum (⌈records / page maximum⌉, or a Bulk API 2.0 job's calls for a large Salesforce load,
//!    plus ⌈lines / 5,000⌉ for the Dataverse order lines, a table of their own: `minimum_data_calls`),
//!    the resident set before, at its peak, after, and as a curve
//!    against the records committed (every tenth of the world), and the store's size on disk next to
//!    the JSON the simulators served (the vendor data it holds).
//! 4. An incremental pass with nothing changed, served live: its API calls (the bar is ≤ 1 per entity).
//! 5. The sales metrics over the resulting store: the unified report alone, and every scope (unified
//!    plus each connection) in one scan, as the daemon publishes them to Prometheus every minute.
//!
//! Each phase's resident set is reported too (before, peak, after; [`PhaseMemory`]): the peak is
//! the kernel's high-water mark (`VmHWM`), reset as the phase begins, so a spike between two
//! samples is not missed; bench's own reads (the record counts, the webhook targets) are phases of
//! their own so that they are not taken for the daemon's.
//!
//! 6. Webhooks: the daemon's HTTP edge (the real router and ingest writer) on loopback receives
//!    authenticated Dataverse deliveries at 1,000 per second (deletes of stored records: a delete
//!    carries its change, updates only ask for a fetch). A 2xx is sent only once the change is
//!    flushed to disk, so each delivery's time from its sending (a wait for a free connection
//!    included) to its answer is its webhook → durable store latency; reported as p50/p99/max with
//!    the deliveries refused (503 when the writer is saturated). The deliveries come from a load generator in a process of its
//!    own (`crmsync bench-webhooks`, [`webhook_load`]), like the simulators, over at most
//!    `WEBHOOK_CONNECTIONS` kept-alive connections: its CPU and memory are not the measured
//!    process's, and its CPU time is reported beside this process's in the phase.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use crmsync_connectors::Connector;
use crmsync_connectors::canonical::{Timestamp, VendorKind};
use crmsync_connectors::sim::{ReplayMode, ReplayStats, ReplaySwitch, WorldSize};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::print;
use crate::app::App;
use crate::cli::{BenchArgs, BenchWarmUpArgs, BenchWebhooksArgs};
use crate::config::Config;
use crate::metrics::Scope;
use crate::metrics::scan::{report as metrics_report, reports as metrics_reports};
use crate::scheduler::pass::{PassReport, run_pass};
use crate::telemetry::{self, LogStyle};

/// The request rate the bench gives every connection's client (`rate_limit.per_second`), far above
/// what a pass can send: the bench measures crmsync's engine, not the vendors' limits. With the
/// default of 10 requests/s, Zoho's 200 records a call alone capped a pass at 2,000 records/s.
const BENCH_REQUESTS_PER_SECOND: u64 = 100_000;

/// The vendors' largest page (crm-apis.md): the minimum data calls of a full pull is ⌈N / this⌉.
fn page_maximum(kind: VendorKind) -> u64 {
    match kind {
        VendorKind::Salesforce => 2000,
        VendorKind::Zoho => 200,
        VendorKind::Dynamics365 => 5000,
    }
}

/// Rows per Bulk API 2.0 results page the Salesforce connector asks for (`maxRecords`; the vendor
/// documents no maximum).
const SALESFORCE_BULK_PAGE: u64 = 10_000;

/// The fewest data calls a full pull of `records` records of `entity` takes on the path the
/// connector reads it by (crm-apis.md §1.6 and the table of call counts). Salesforce reads a load
/// above its `bulk_threshold` (orders excepted: their lines are a subquery Bulk 2.0 cannot carry)
/// through a Bulk API 2.0 query job: the REST page that tells the size, the job's creation, at
/// least one poll, and ⌈N / page⌉ result pages. Dataverse order lines are a table of their own
/// (`salesorderdetails`, change tracking is per table: crm-apis.md §3.3), so its orders cost
/// ⌈orders / 5,000⌉ + ⌈`order_lines` / 5,000⌉ calls at the least, each table's read ending with its
/// delta link. Otherwise ⌈N / the vendor's largest page⌉.
fn minimum_data_calls(vendor: &crate::config::VendorConfig, entity: &str, records: u64, order_lines: u64) -> u64 {
    use crate::config::VendorConfig;
    let kind = vendor.kind();
    let rest = records.div_ceil(page_maximum(kind)).max(1);
    match vendor {
        VendorConfig::Salesforce(salesforce)
            if entity != "order" && salesforce.bulk_threshold > 0 && records > salesforce.bulk_threshold =>
        {
            3 + records.div_ceil(SALESFORCE_BULK_PAGE)
        }
        VendorConfig::Dynamics365(_) if entity == "order" => rest + order_lines.div_ceil(page_maximum(kind)).max(1),
        _ => rest,
    }
}

/// One connection × entity of a pass.
#[derive(Debug, Serialize)]
pub struct BenchRow {
    /// Connection.
    pub connection: String,
    /// Entity.
    pub entity: String,
    /// Records read.
    pub records: u64,
    /// API calls the connector made (data, auth and metadata).
    pub api_calls: u64,
    /// The fewest data calls the vendor allows on the connector's path (`minimum_data_calls`).
    pub minimum_data_calls: u64,
    /// Seconds from the first call to caught up (connections run in parallel, a connection's
    /// entities one after the other).
    pub seconds: f64,
    /// Of `seconds`: in the connector's calls for pages (HTTP, decoding, rate-limit waits).
    pub reading_seconds: f64,
    /// Of `seconds`: waiting for the single writer to reconcile and commit the pages (its queue
    /// included).
    pub committing_seconds: f64,
    /// Of `reading_seconds`: waiting for the connection's client rate limit (or a vendor's pause).
    pub rate_limit_waited_seconds: f64,
}

/// What set the length of the full pass.
#[derive(Debug, Serialize)]
pub struct PassBound {
    /// The connection whose pulls (its entities one after the other) took longest: the pass ended
    /// with it.
    pub last_connection: String,
    /// Its pulls' seconds.
    pub last_connection_seconds: f64,
    /// Of those, in its connector's calls (HTTP, decoding, rate-limit waits).
    pub last_connection_reading_seconds: f64,
    /// Of those, waiting for the writer.
    pub last_connection_committing_seconds: f64,
    /// Seconds the single writer spent reconciling and committing during the pass.
    pub writer_busy_seconds: f64,
    /// `writer_busy_seconds` as a share of the pass, in percent.
    pub writer_busy_percent: f64,
    /// `writer` when the writer was busy for at least 90 % of the pass, otherwise `reading
    /// <connection>` or `committing <connection>` after what the last connection spent most of its
    /// time on.
    pub bound_by: String,
}

/// Resident set size, in MiB.
#[derive(Debug, Serialize)]
pub struct Memory {
    /// Before the pass (simulators excluded: they are other processes).
    pub before_mib: f64,
    /// The highest sample during the pass.
    pub peak_mib: f64,
    /// After the pass.
    pub after_mib: f64,
    /// The highest resident set of this process over the whole bench (the kernel's high-water mark,
    /// `VmHWM`, before the first phase and in each phase).
    pub high_water_mib: f64,
    /// (vendor records committed, resident MiB) each time another tenth of the world was committed.
    pub curve: Vec<(u64, f64)>,
    /// Each phase's resident set, in the order they ran.
    pub phases: Vec<PhaseMemory>,
}

/// The resident set of this process through one phase of the bench, in MiB.
#[derive(Debug, Serialize)]
pub struct PhaseMemory {
    /// What the phase does.
    pub phase: &'static str,
    /// When it began.
    pub before_mib: f64,
    /// Its highest: the kernel's high-water mark (`VmHWM`), reset when the phase began (Linux'
    /// `/proc/self/clear_refs`), or where that cannot be reset, the highest of samples every 100 ms.
    pub peak_mib: f64,
    /// When it ended.
    pub after_mib: f64,
    /// Whether `peak_mib` is the kernel's exact high-water mark (`false`: sampled).
    pub exact_peak: bool,
}

/// The webhook phase.
#[derive(Debug, Default, Serialize)]
pub struct WebhookReport {
    /// Deliveries sent.
    pub deliveries: u64,
    /// The rate they were sent at, per second.
    pub target_per_second: u64,
    /// Acknowledged (2xx: durable).
    pub acknowledged: u64,
    /// Refused with 503 (writer saturated; the vendor would redeliver).
    pub refused: u64,
    /// Any other answer or a transport error.
    pub failed: u64,
    /// Median time from sending to the 2xx, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// The most connections the load generator kept open (`WEBHOOK_CONNECTIONS`).
    pub connections: usize,
    /// Deliveries that waited for one of those connections to be free (their wait is in their
    /// latency).
    pub waited_for_connection: u64,
    /// 99th percentile of how late the generator took a delivery up after it was due, ms (not in
    /// the latencies: a generator short of CPU sends late, the daemon is no slower for it).
    pub generator_late_p99_ms: f64,
    /// CPU seconds of the load generator's process (`crmsync bench-webhooks`).
    pub generator_cpu_seconds: f64,
    /// CPU seconds this process (HTTP edge, ingest, store) spent in the phase.
    pub daemon_cpu_seconds: f64,
}

/// Everything `bench` measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Records in the generated world.
    pub world_records: usize,
    /// Vendor copies read in the full pass (a record in three CRMs is read three times).
    pub records_pulled: u64,
    /// Canonical records in the store after it.
    pub canonical_records: u64,
    /// Seconds of the full pass.
    pub full_pass_seconds: f64,
    /// Vendor copies pulled, reconciled and committed per second.
    pub records_per_second: f64,
    /// CPU seconds this process (connectors, ingest, store; not the simulators) spent in the full
    /// pass: with `full_pass_seconds`, tells whether the daemon or the simulators set the pace.
    pub daemon_cpu_seconds: f64,
    /// CPU seconds the three simulator processes spent in the full pass.
    pub simulators_cpu_seconds: f64,
    /// The simulators' serving mode in the full pass: answers recorded in the warm-up, replayed
    /// from memory, and missed (rendered live), summed over the three.
    pub simulators_replay: ReplayStats,
    /// The full pass, per connection × entity.
    pub full_pass: Vec<BenchRow>,
    /// What set the length of the full pass.
    pub bound: PassBound,
    /// The request rate every connection's client was allowed in the bench
    /// (`BENCH_REQUESTS_PER_SECOND`, not the connections' default of 10): the vendors' real
    /// limits are not what is measured.
    pub rate_limit_per_second: u64,
    /// Order lines the Dataverse simulator holds (`salesorderdetails`), counted in the minimum of
    /// its orders' full read.
    pub dataverse_order_lines: u64,
    /// Memory through the full pass.
    pub memory: Memory,
    /// API calls of a second pass with nothing changed, per connection × entity.
    pub incremental_calls: Vec<BenchRow>,
    /// Seconds for the unified metrics report.
    pub metrics_unified_seconds: f64,
    /// Seconds for every scope (unified + each connection) in one scan.
    pub metrics_all_scopes_seconds: f64,
    /// Webhook → durable store, through the HTTP edge.
    pub webhooks: WebhookReport,
    /// Store size on disk after the pass, MiB.
    pub store_mib: f64,
    /// The store's page cache setting in the measured pass (`daemon.store_cache_mib`), MiB.
    pub store_cache_mib: u64,
    /// Bytes of JSON the simulators served in the full pass (the vendor data the store holds, with
    /// the vendors' envelopes), MiB.
    pub vendor_json_mib: f64,
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(LogStyle::Pretty);
    if args.records == 0 {
        bail!("--records must be at least 1");
    }
    let (data_dir, temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (std::env::temp_dir().join(format!("crmsync-bench-{}", std::process::id())), true),
    };
    if data_dir.join("store").exists() {
        bail!("{} already holds a store; bench needs a fresh one", data_dir.join("store").display());
    }
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let result = bench(&args, &data_dir).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let report = result?;
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        print(&render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// A simulator child process; killed when dropped (`kill_on_drop`).
struct Simulator {
    child: tokio::process::Child,
    base_url: String,
}

impl Simulator {
    /// CPU seconds the simulator process has used.
    fn cpu_seconds(&self) -> f64 {
        self.child.id().and_then(|pid| cpu_seconds_of(&format!("/proc/{pid}/stat"))).unwrap_or(0.0)
    }

    /// Switches the simulator's bench serving mode; returns its counts before the switch.
    async fn replay(&self, http: &reqwest::Client, mode: ReplayMode) -> anyhow::Result<ReplayStats> {
        let url = format!("{}/__sim/replay", self.base_url);
        Ok(http.post(url).json(&ReplaySwitch { mode }).send().await?.error_for_status()?.json().await?)
    }

    /// Live records of a vendor table or object (`GET /__sim/stats`).
    async fn records_of(&self, http: &reqwest::Client, object: &str) -> anyhow::Result<u64> {
        let stats: crmsync_connectors::sim::SimStats =
            http.get(format!("{}/__sim/stats", self.base_url)).send().await?.error_for_status()?.json().await?;
        Ok(stats.records.get(object).copied().unwrap_or(0))
    }

    /// Bytes of vendor API responses the simulator has served.
    async fn served_bytes(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let served: crmsync_connectors::sim::Served =
            http.get(format!("{}/__sim/served", self.base_url)).send().await?.error_for_status()?.json().await?;
        Ok(served.response_bytes)
    }
}

/// A command that runs this crmsync executable as a child of bench (a simulator, the warm-up, the
/// webhook load generator): warnings only in its log, no stdin unless set, killed when dropped.
fn crmsync_child() -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("cannot find the crmsync executable")?;
    let mut command = tokio::process::Command::new(exe);
    command.env("RUST_LOG", "warn").stdin(Stdio::null()).kill_on_drop(true);
    Ok(command)
}

async fn start_simulator(vendor: &str, args: &BenchArgs, anchor: Timestamp) -> anyhow::Result<Simulator> {
    let mut child = crmsync_child()?
        .args(["simulate", vendor, "--shared-world", "--port", "0"])
        .args(["--records", &args.records.to_string(), "--seed", &args.seed.to_string()])
        .args(["--anchor", &anchor.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start the {vendor} simulator"))?;
    let stdout = child.stdout.take().context("simulator stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.split_once(" listening on ").map(|(_, rest)| rest) {
            let base_url = rest.split_whitespace().next().unwrap_or_default().to_owned();
            // Keep draining its output so it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(Simulator { child, base_url });
        }
    }
    let status = child.wait().await?;
    bail!("the {vendor} simulator exited before listening ({status})")
}

/// Samples this process's resident set every 100 ms until cancelled. Returns the highest sample and
/// the task, whose result is the curve: (records committed, resident bytes) each time another
/// `step` records were committed.
fn sample_rss(
    stop: CancellationToken,
    committed: impl Fn() -> u64 + Send + 'static,
    step: u64,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<Vec<(u64, u64)>>) {
    let peak = Arc::new(AtomicU64::new(resident_bytes().unwrap_or(0)));
    let recorder = peak.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        let (mut curve, mut next) = (Vec::new(), step.max(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    // The end of the pass is a point of the curve too.
                    let records = committed();
                    if curve.last().is_none_or(|(last, _)| *last < records) {
                        curve.push((records, resident_bytes().unwrap_or(0)));
                    }
                    return curve;
                }
                _ = ticks.tick() => {
                    if let Some(bytes) = resident_bytes() {
                        recorder.fetch_max(bytes, Ordering::Relaxed);
                        let records = committed();
                        if records >= next {
                            curve.push((records, bytes));
                            next = (records / step.max(1) + 1) * step.max(1);
                        }
                    }
                }
            }
        }
    });
    (peak, task)
}

/// Measures this process's resident set through each phase of the bench ([`PhaseMemory`]): the
/// kernel's high-water mark, reset as a phase begins, and samples every 100 ms where it cannot be
/// reset.
struct PhaseWatch {
    /// The highest sample since the phase began; the sampler stops when this is dropped.
    sampled: Arc<AtomicU64>,
    /// The high-water mark of what ran before the first phase, then raised by each phase's peak.
    high_water: u64,
    phases: Vec<PhaseMemory>,
}

/// A phase [`PhaseWatch::begin`] began.
struct Phase {
    name: &'static str,
    before: u64,
    exact: bool,
}

impl PhaseWatch {
    fn start() -> Self {
        let sampled = Arc::new(AtomicU64::new(resident_bytes().unwrap_or(0)));
        let recorder = Arc::downgrade(&sampled);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            loop {
                ticks.tick().await;
                let Some(recorder) = recorder.upgrade() else { return };
                if let Some(bytes) = resident_bytes() {
                    recorder.fetch_max(bytes, Ordering::Relaxed);
                }
            }
        });
        let high_water = proc_status_bytes("VmHWM:").unwrap_or(0);
        Self { sampled, high_water, phases: Vec::new() }
    }

    fn begin(&mut self, name: &'static str) -> Phase {
        // Before the reset: what ran since the last phase (or before the first) is counted too.
        self.high_water = self.high_water.max(proc_status_bytes("VmHWM:").unwrap_or(0));
        let exact = reset_high_water();
        let before = resident_bytes().unwrap_or(0);
        self.sampled.store(before, Ordering::Relaxed);
        Phase { name, before, exact }
    }

    fn end(&mut self, phase: Phase) {
        let after = resident_bytes().unwrap_or(0);
        let sampled = self.sampled.load(Ordering::Relaxed).max(after);
        let peak = if phase.exact { proc_status_bytes("VmHWM:").unwrap_or(0).max(sampled) } else { sampled };
        self.high_water = self.high_water.max(peak);
        self.phases.push(PhaseMemory {
            phase: phase.name,
            before_mib: mib(phase.before),
            peak_mib: mib(peak),
            after_mib: mib(after),
            exact_peak: phase.exact,
        });
    }

    /// The high-water mark of the whole bench, and the phases (the sampler stops).
    fn finish(self) -> (u64, Vec<PhaseMemory>) {
        // Where no reset worked, the kernel's mark now is the whole run's.
        let high_water = self.high_water.max(proc_status_bytes("VmHWM:").unwrap_or(0));
        (high_water, self.phases)
    }
}

/// Resets the kernel's high-water mark of this process's resident set (`VmHWM`) to its resident
/// set now (writing `5` to `/proc/self/clear_refs`, Linux 4.0 and later). Returns whether it did.
fn reset_high_water() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`); `None` off Linux.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat` (clock ticks of
/// 1/100 s, the value of `CLK_TCK` on every Linux platform Rust supports); `None` off Linux.
fn cpu_seconds() -> Option<f64> {
    cpu_seconds_of("/proc/self/stat")
}

/// CPU seconds of the process whose `stat` file is at `path`.
fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

fn resident_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn mib(bytes: u64) -> f64 {
    rounded(bytes as f64 / (1024.0 * 1024.0), 1)
}

fn rows(pass: &PassReport, vendors: &BTreeMap<String, crate::config::VendorConfig>, order_lines: u64) -> Vec<BenchRow> {
    pass.rows
        .iter()
        .map(|row| BenchRow {
            connection: row.connection.clone(),
            entity: row.entity.clone(),
            records: row.records_in,
            api_calls: row.api_calls,
            minimum_data_calls: vendors
                .get(&row.connection)
                .map_or(0, |vendor| minimum_data_calls(vendor, &row.entity, row.records_in, order_lines)),
            seconds: row.duration_ms as f64 / 1000.0,
            reading_seconds: row.reading_ms as f64 / 1000.0,
            committing_seconds: row.committing_ms as f64 / 1000.0,
            rate_limit_waited_seconds: row.waited_ms as f64 / 1000.0,
        })
        .collect()
}

/// What set the length of a pass of `pass_seconds` whose writer was busy `writer_busy_seconds`:
/// connections pull in parallel (their entities one after the other) into one writer, so the pass
/// lasts as long as its slowest connection, and that connection either waited for its pages or for
/// the writer.
fn pass_bound(rows: &[BenchRow], pass_seconds: f64, writer_busy_seconds: f64) -> PassBound {
    let mut by_connection: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for row in rows {
        let sums = by_connection.entry(row.connection.as_str()).or_default();
        sums.0 += row.seconds;
        sums.1 += row.reading_seconds;
        sums.2 += row.committing_seconds;
    }
    let (last, (seconds, reading, committing)) = by_connection
        .into_iter()
        .max_by(|(_, left), (_, right)| left.0.total_cmp(&right.0))
        .unwrap_or(("", (0.0, 0.0, 0.0)));
    let writer_busy_percent = writer_busy_seconds * 100.0 / pass_seconds.max(f64::EPSILON);
    let bound_by = if writer_busy_percent >= 90.0 {
        "writer".to_owned()
    } else if reading >= committing {
        format!("reading {last}")
    } else {
        format!("committing {last}")
    };
    PassBound {
        last_connection: last.to_owned(),
        last_connection_seconds: rounded(seconds, 2),
        last_connection_reading_seconds: rounded(reading, 2),
        last_connection_committing_seconds: rounded(committing, 2),
        writer_busy_seconds: rounded(writer_busy_seconds, 2),
        writer_busy_percent: rounded(writer_busy_percent, 1),
        bound_by,
    }
}

fn failures(pass: &PassReport) -> Option<String> {
    let failed: Vec<String> = pass
        .rows
        .iter()
        .filter_map(|row| Some(format!("{} {}: {}", row.connection, row.entity, row.error.as_ref()?)))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

async fn bench(args: &BenchArgs, data_dir: &std::path::Path) -> anyhow::Result<BenchReport> {
    let anchor = Timestamp::now();
    let size = WorldSize::scaled(args.records);
    tracing::info!(
        records = size.total(),
        accounts = size.accounts,
        leads = size.leads,
        deals = size.opportunities,
        orders = size.orders,
        "bench: starting three simulators over one world"
    );
    let (salesforce, zoho, dynamics365) = tokio::try_join!(
        start_simulator("salesforce", args, anchor),
        start_simulator("zoho", args, anchor),
        start_simulator("dynamics365", args, anchor),
    )?;
    let mut toml = String::new();
    writeln!(toml, "[daemon]\ndata_dir = {:?}", data_dir.join("store").display().to_string())?;
    if let Some(mib) = args.store_cache_mib {
        writeln!(toml, "store_cache_mib = {mib}")?;
    }
    writeln!(toml)?;
    let (connections, secrets) =
        super::demo::simulator_connections(&salesforce.base_url, &zoho.base_url, &dynamics365.base_url);
    toml.push_str(&connections);
    // Sub-tables of the connections' tables above: a client rate limit no pass reaches.
    for connection in ["salesforce", "zoho", "dynamics365"] {
        writeln!(toml, "[connections.{connection}.rate_limit]\nper_second = {BENCH_REQUESTS_PER_SECOND}\n")?;
    }
    writeln!(
        toml,
        "[reconcile]\nsource_priority = [\"salesforce\", \"zoho\", \"dynamics365\"]\n\n\
         [metrics]\nreporting_currency = \"EUR\"\n\n[metrics.fx]\nUSD = \"0.92\""
    )?;
    let config_path = data_dir.join("bench.toml");
    std::fs::write(&config_path, &toml).with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::load(Some(&config_path), Some(Default::default()), &secrets)?;
    let kinds: BTreeMap<String, crate::config::VendorConfig> =
        config.connections.iter().map(|(id, connection)| (id.to_string(), connection.vendor.clone())).collect();
    let simulators = [&salesforce, &zoho, &dynamics365];
    let http = reqwest::Client::new();
    let mut selection = super::sync::selection(&config, None, None, None, false)?;
    selection.push = false;

    tracing::info!("bench: warm-up (the simulators record their answers)");
    for simulator in simulators {
        simulator.replay(&http, ReplayMode::Record).await.context("cannot switch a simulator to record")?;
    }
    warm_up(&config_path, &data_dir.join("warm-up")).await?;
    for simulator in simulators {
        simulator.replay(&http, ReplayMode::Replay).await.context("cannot switch a simulator to replay")?;
    }

    // Dataverse reads the order lines as a table of their own: the vendor minimum counts them.
    let dataverse_order_lines = dynamics365
        .records_of(&http, "salesorderdetails")
        .await
        .context("cannot read the Dataverse simulator's order lines")?;
    let store_cache_mib = config.daemon.store_cache_mib;
    let app = App::build(config)?;
    let policies = app.rules.fields.clone();
    let cancel = CancellationToken::new();

    tracing::info!("bench: full pull (pull + reconcile + commit into a fresh store)");
    let mut watch = PhaseWatch::start();
    let phase = watch.begin("full pass");
    let before = resident_bytes().unwrap_or(0);
    let stop_sampling = CancellationToken::new();
    let ingest = app.ingest.clone();
    let step = (size.total() as u64 / 10).max(1);
    let (peak, sampler) = sample_rss(stop_sampling.clone(), move || ingest.records_committed(), step);
    let simulators_cpu_before: f64 = simulators.iter().map(|simulator| simulator.cpu_seconds()).sum();
    let (started, cpu_before, writer_before) = (Instant::now(), cpu_seconds().unwrap_or(0.0), app.ingest.busy());
    let full = run_pass(&app.connectors, &app.store, &app.ingest, &policies, &selection, &cancel).await;
    let full_seconds = started.elapsed().as_secs_f64();
    let writer_busy = app.ingest.busy().saturating_sub(writer_before).as_secs_f64();
    let daemon_cpu = cpu_seconds().unwrap_or(0.0) - cpu_before;
    let simulators_cpu =
        simulators.iter().map(|simulator| simulator.cpu_seconds()).sum::<f64>() - simulators_cpu_before;
    stop_sampling.cancel();
    let curve = sampler.await.unwrap_or_default();
    let mut replay = ReplayStats::default();
    for simulator in simulators {
        let stats = simulator.replay(&http, ReplayMode::Off).await.context("cannot switch a simulator to live")?;
        replay.recorded += stats.recorded;
        replay.recorded_bytes += stats.recorded_bytes;
        replay.replayed += stats.replayed;
        replay.missed += stats.missed;
    }
    let mut vendor_json_bytes = 0;
    for simulator in simulators {
        // The warm-up's answers were served too: the vendor JSON of one pass is half of what was served.
        vendor_json_bytes += simulator.served_bytes(&http).await.context("cannot read a simulator's served bytes")?;
    }
    vendor_json_bytes = vendor_json_bytes.saturating_sub(replay.recorded_bytes);
    let after = resident_bytes().unwrap_or(0);
    watch.end(phase);
    if let Some(failed) = failures(&full) {
        bail!("the full pass failed: {failed}");
    }
    let records_pulled: u64 = full.rows.iter().map(|row| row.records_in).sum();

    tracing::info!("bench: incremental pass with nothing changed");
    let phase = watch.begin("incremental pass");
    let incremental = run_pass(&app.connectors, &app.store, &app.ingest, &policies, &selection, &cancel).await;
    watch.end(phase);
    if let Some(failed) = failures(&incremental) {
        bail!("the incremental pass failed: {failed}");
    }

    tracing::info!("bench: sales metrics over the store");
    let (store, metrics_config) = (app.store.clone(), app.config.metrics.clone());
    let phase = watch.begin("metrics: unified scope");
    let unified_seconds = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let started = Instant::now();
        metrics_report(&store, &metrics_config, Scope::Unified, None, None)?;
        Ok(started.elapsed().as_secs_f64())
    })
    .await??;
    watch.end(phase);
    let (store, metrics_config) = (app.store.clone(), app.config.metrics.clone());
    let scopes: Vec<Scope> =
        std::iter::once(Scope::Unified).chain(app.config.connections.keys().cloned().map(Scope::Connection)).collect();
    let phase = watch.begin("metrics: every scope in one scan");
    let all_seconds = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let started = Instant::now();
        metrics_reports(&store, &metrics_config, scopes, None, None)?;
        Ok(started.elapsed().as_secs_f64())
    })
    .await??;
    watch.end(phase);
    let phase = watch.begin("record counts (as status counts them)");
    let canonical_records = app.store.counts()?.values().sum();
    let store_bytes = app.store.size_on_disk()?;
    watch.end(phase);
    tracing::info!("bench: webhook deliveries through the HTTP edge at 1,000/s");
    let webhooks = webhook_phase(&app, WEBHOOK_DELIVERIES, &mut watch).await?;
    let (high_water, phases) = watch.finish();
    app.shutdown().await?;
    drop((salesforce, zoho, dynamics365));

    let full_pass = rows(&full, &kinds, dataverse_order_lines);
    let bound = pass_bound(&full_pass, full_seconds, writer_busy);
    Ok(BenchReport {
        world_records: size.total(),
        records_pulled,
        canonical_records,
        full_pass_seconds: rounded(full_seconds, 2),
        records_per_second: (records_pulled as f64 / full_seconds.max(f64::EPSILON)).round(),
        daemon_cpu_seconds: rounded(daemon_cpu, 2),
        simulators_cpu_seconds: rounded(simulators_cpu, 2),
        simulators_replay: replay,
        full_pass,
        bound,
        rate_limit_per_second: BENCH_REQUESTS_PER_SECOND,
        dataverse_order_lines,
        memory: Memory {
            before_mib: mib(before),
            peak_mib: mib(peak.load(Ordering::Relaxed)),
            after_mib: mib(after),
            high_water_mib: mib(high_water),
            curve: curve.into_iter().map(|(records, bytes)| (records, mib(bytes))).collect(),
            phases,
        },
        incremental_calls: rows(&incremental, &kinds, 0),
        metrics_unified_seconds: rounded(unified_seconds, 3),
        metrics_all_scopes_seconds: rounded(all_seconds, 3),
        webhooks,
        store_mib: mib(store_bytes),
        store_cache_mib,
        vendor_json_mib: mib(vendor_json_bytes),
    })
}

/// Has `crmsync bench-warm-up` ([`warm_up_process`]) read every selected connection × entity of
/// the configuration at `config_path` to the end, in a process of its own over a throwaway store in
/// `dir`: the requests the measured pass will make, in the same order per connection, so the
/// simulators can record their answers. In a process of its own, what the reads allocate and free
/// is not held by this process's allocator when the measured pass starts (it was: 84 MiB resident
/// before the pass at 100,000 records), so the memory curve starts from what the daemon holds.
async fn warm_up(config_path: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let status = crmsync_child()?
        .arg("bench-warm-up")
        .arg("--config")
        .arg(config_path)
        .arg("--store")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .await
        .context("cannot start the warm-up process")?;
    if !status.success() {
        bail!("the warm-up process failed ({status})");
    }
    Ok(())
}

/// `crmsync bench-warm-up`: reads every connection × entity of `--config` (a configuration bench
/// wrote, whose connections use the simulators' demo credentials) to the end with connectors of its
/// own over a throwaway store in `--store` (removed afterwards), discarding the pages.
pub async fn warm_up_process(args: BenchWarmUpArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(LogStyle::Pretty);
    let (_, secrets) = super::demo::simulator_connections("", "", "");
    let mut config = Config::load(Some(&args.config), Some(Default::default()), &secrets)?;
    config.daemon.data_dir = args.store.clone();
    let mut selection = super::sync::selection(&config, None, None, None, false)?;
    selection.push = false;
    let app = App::build(config)?;
    let reads = selection.targets.iter().filter_map(|(connection, entities)| {
        let connector = app.connectors.get(connection)?.clone();
        Some(async move {
            for entity in crmsync_connectors::canonical::Entity::ALL.iter().filter(|entity| entities.contains(entity)) {
                let mut cursor = None;
                loop {
                    let page = connector
                        .pull(*entity, cursor.as_ref())
                        .await
                        .with_context(|| format!("warm-up read of {connection} {entity} failed"))?;
                    if !page.has_more {
                        break;
                    }
                    cursor = Some(page.cursor);
                }
            }
            anyhow::Ok(())
        })
    });
    let results = futures::future::join_all(reads).await;
    app.shutdown().await?;
    let _ = std::fs::remove_dir_all(&args.store);
    results.into_iter().collect::<anyhow::Result<()>>()?;
    Ok(ExitCode::SUCCESS)
}

/// Deliveries of the webhook phase (5 s at the target rate), fewer when the world is smaller.
const WEBHOOK_DELIVERIES: usize = 5_000;
/// The SPEC's webhook rate.
const WEBHOOK_RATE: u64 = 1_000;
/// The most connections the webhook load generator keeps open, each kept alive for the next
/// delivery, as an HTTP client's connection pool does: as many as the batches the daemon's writer
/// queues by default (`daemon.ingest_queue`, 64). Dataverse documents how
/// long it waits for an answer and when it retries, not how it manages connections (crm-apis.md
/// §3.8): one connection per delivery would make the phase measure TCP set-up on loopback (about
/// 1,450 connections for 5,000 deliveries in the generator that ran inside the measured process).
const WEBHOOK_CONNECTIONS: usize = 64;

/// What bench hands its webhook load generator on stdin (the key never goes on a command line,
/// where `ps` shows it). No `Debug`: it holds the key.
#[derive(Serialize, Deserialize)]
struct LoadPlan {
    /// The header that carries the endpoint's key (Dataverse's `HttpHeader` authentication).
    header: String,
    /// The key.
    key: String,
    /// The deliveries, in sending order: (table logical name, record id) of a deleted record.
    deliveries: Vec<(String, String)>,
}

/// What the load generator prints on stdout, as one line of JSON.
#[derive(Debug, Serialize, Deserialize)]
struct LoadOutcome {
    /// Per delivery, in sending order: (HTTP status, 0 when no answer came; microseconds from its
    /// taking up to its answer; microseconds it was taken up after it was due).
    deliveries: Vec<(u16, u64, u64)>,
    /// Deliveries that waited for a free connection.
    waited_for_connection: u64,
    /// The generator's CPU seconds (user + system), read when the last answer came.
    cpu_seconds: f64,
}

/// Serves the daemon's public router over the bench's app and has a load generator in a process of
/// its own post Dataverse delete deliveries for stored records at [`WEBHOOK_RATE`] per second;
/// returns their latencies.
async fn webhook_phase(app: &App, wanted: usize, watch: &mut PhaseWatch) -> anyhow::Result<WebhookReport> {
    use crmsync_connectors::WebhookParser;
    use crmsync_connectors::canonical::{ConnectionId, Entity};

    use crate::http::{HttpState, WebhookEndpoint, public_router};

    let connection = ConnectionId::new("dynamics365");
    let Some(connector) = app.connectors.get(&connection) else { bail!("bench has no dynamics365 connection") };
    // Stored Dataverse copies to delete, read off the async threads.
    let phase = watch.begin("webhook targets (records read from the store)");
    let (store, scan_connection) = (app.store.clone(), connection.clone());
    let targets = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, String)>> {
        let mut targets = Vec::new();
        for entity in [Entity::Account, Entity::Lead, Entity::Opportunity, Entity::Order] {
            for record in store.scan(entity) {
                if let Some(link) = record?.link(&scan_connection) {
                    targets.push((link.object.clone(), link.external_id.to_string()));
                }
                if targets.len() >= wanted {
                    return Ok(targets);
                }
            }
        }
        Ok(targets)
    })
    .await??;
    watch.end(phase);
    let parser: Arc<dyn WebhookParser> = connector.clone();
    let endpoint = WebhookEndpoint { connection: connection.clone(), parser, nudges: BTreeMap::new() };
    let state = HttpState {
        webhooks: Arc::new(BTreeMap::from([(connection.to_string(), endpoint)])),
        ingest: app.ingest.clone(),
        store: app.store.clone(),
        status_config: Arc::new(crate::status::StatusConfig::from_config(&app.config)),
        metrics_config: Arc::new(app.config.metrics.clone()),
        api_token: None,
        prometheus: None,
        refresh_gauges: None,
        ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        readiness: None,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}/webhooks/{connection}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let serving = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, public_router(state))
            .with_graceful_shutdown(async move { serving.cancelled().await })
            .await
    });
    let plan = LoadPlan {
        header: crmsync_connectors::dynamics365::sim::WEBHOOK_HEADER.to_owned(),
        key: crmsync_connectors::dynamics365::sim::WEBHOOK_KEY.to_owned(),
        deliveries: targets,
    };
    let phase = watch.begin("webhooks at 1,000/s");
    let cpu_before = cpu_seconds().unwrap_or(0.0);
    let outcome = run_load_generator(&url, &plan).await;
    let daemon_cpu = cpu_seconds().unwrap_or(0.0) - cpu_before;
    stop.cancel();
    let _ = server.await;
    watch.end(phase);
    let outcome = outcome?;
    let (mut report, mut latencies) = (WebhookReport::default(), Vec::new());
    let mut lateness: Vec<u64> = outcome.deliveries.iter().map(|(_, _, late)| *late).collect();
    lateness.sort_unstable();
    for (status, micros, _) in &outcome.deliveries {
        report.deliveries += 1;
        match status {
            200..=299 => {
                report.acknowledged += 1;
                latencies.push(*micros);
            }
            503 => report.refused += 1,
            _ => report.failed += 1,
        }
    }
    latencies.sort_unstable();
    report.target_per_second = WEBHOOK_RATE;
    report.p50_ms = quantile_ms(&latencies, 0.50);
    report.p99_ms = quantile_ms(&latencies, 0.99);
    report.max_ms = quantile_ms(&latencies, 1.0);
    report.generator_late_p99_ms = quantile_ms(&lateness, 0.99);
    report.connections = WEBHOOK_CONNECTIONS;
    report.waited_for_connection = outcome.waited_for_connection;
    report.generator_cpu_seconds = rounded(outcome.cpu_seconds, 2);
    report.daemon_cpu_seconds = rounded(daemon_cpu, 2);
    Ok(report)
}

/// `value` rounded to `places` decimal places, as the report prints it.
fn rounded(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The `quantile` of sorted microseconds, in milliseconds rounded to 0.1 (0 when there are none).
fn quantile_ms(sorted_micros: &[u64], quantile: f64) -> f64 {
    let index = ((sorted_micros.len() as f64 * quantile).ceil() as usize).saturating_sub(1);
    sorted_micros.get(index).map_or(0.0, |micros| (*micros as f64 / 100.0).round() / 10.0)
}

/// Starts `crmsync bench-webhooks` against `url`, hands it `plan` on stdin and reads its outcome.
async fn run_load_generator(url: &str, plan: &LoadPlan) -> anyhow::Result<LoadOutcome> {
    let mut child = crmsync_child()?
        .args(["bench-webhooks", "--url", url])
        .args(["--rate", &WEBHOOK_RATE.to_string(), "--connections", &WEBHOOK_CONNECTIONS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the webhook load generator")?;
    let mut stdin = child.stdin.take().context("load generator stdin")?;
    stdin.write_all(&serde_json::to_vec(plan)?).await.context("cannot hand the load generator its deliveries")?;
    // Closed: the generator reads to the end, then sends.
    drop(stdin);
    let output = child.wait_with_output().await.context("the webhook load generator")?;
    if !output.status.success() {
        bail!("the webhook load generator failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("the webhook load generator printed nothing")?;
    serde_json::from_str(line).context("cannot read the webhook load generator's outcome")
}

/// `crmsync bench-webhooks`: reads a `LoadPlan` from stdin, posts a Dataverse delete delivery for
/// each of its records at `--rate` per second over at most `--connections` kept-alive connections,
/// and prints a `LoadOutcome` on stdout. The sending runs on a runtime of one thread (timer,
/// requests and answers), the lightest a process of its own can be.
pub async fn webhook_load(args: BenchWebhooksArgs) -> anyhow::Result<ExitCode> {
    if args.rate == 0 || args.connections == 0 {
        bail!("--rate and --connections must be at least 1");
    }
    let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<LoadOutcome> {
        let mut input = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
            .context("cannot read the deliveries from stdin")?;
        let plan: LoadPlan = serde_json::from_slice(&input).context("cannot read the deliveries from stdin")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the load generator's runtime")?;
        runtime.block_on(send_deliveries(&args, &plan))
    })
    .await??;
    print(&format!("{}\n", serde_json::to_string(&outcome)?));
    Ok(ExitCode::SUCCESS)
}

/// Sends `plan`'s deliveries, one every 1/`rate` s. A delivery's latency runs from the moment the
/// generator takes it up (a wait for a free connection included, so a slow daemon that keeps every
/// connection busy is measured, not hidden) to the end of its answer; how late the generator took
/// it up after it was due is reported beside it (a generator short of CPU delays its deliveries
/// without making them slower).
async fn send_deliveries(args: &BenchWebhooksArgs, plan: &LoadPlan) -> anyhow::Result<LoadOutcome> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()
        .context("cannot build the HTTP client")?;
    let connections = Arc::new(tokio::sync::Semaphore::new(args.connections));
    let waited = Arc::new(AtomicU64::new(0));
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = tokio::task::JoinSet::new();
    for (index, (logical, id)) in plan.deliveries.iter().enumerate() {
        let due = ticks.tick().await;
        let taken_up = Instant::now();
        // A Dataverse RemoteExecutionContext as a webhook step posts it (the fields crmsync reads):
        // https://learn.microsoft.com/power-apps/developer/data-platform/use-webhooks
        let body = serde_json::json!({
            "MessageName": "Delete",
            "PrimaryEntityName": logical,
            "PrimaryEntityId": id,
            "OperationCreatedOn": format!("/Date({})/", Timestamp::now().unix_millis()),
            "Depth": 1,
        });
        let request = http.post(&args.url).header(plan.header.as_str(), plan.key.as_str()).json(&body);
        let (connections, waited) = (connections.clone(), waited.clone());
        sent.spawn(async move {
            let permit = match connections.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    waited.fetch_add(1, Ordering::Relaxed);
                    connections.acquire_owned().await.expect("the semaphore is never closed")
                }
            };
            let status = match request.send().await {
                // The body read to its end puts the connection back in the pool before the permit goes.
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
            let latency = micros(taken_up.elapsed());
            drop(permit);
            (index, status, latency, micros(taken_up.saturating_duration_since(due)))
        });
    }
    let mut deliveries = vec![(0, 0, 0); plan.deliveries.len()];
    while let Some(result) = sent.join_next().await {
        let (index, status, latency, late) = result.context("a delivery task failed")?;
        deliveries[index] = (status, latency, late);
    }
    Ok(LoadOutcome {
        deliveries,
        waited_for_connection: waited.load(Ordering::Relaxed),
        cpu_seconds: cpu_seconds().unwrap_or(0.0),
    })
}

fn render(report: &BenchReport) -> String {
    let mut out = format!(
        "\ncrmsync bench: world of {} records; {} vendor copies pulled into {} canonical records\n\n",
        report.world_records, report.records_pulled, report.canonical_records
    );
    let _ = writeln!(
        out,
        "full pull + reconcile + commit: {:.2} s, {:.0} records/s   (bar: ≥ 50,000 records/s on 2 cores)",
        report.full_pass_seconds, report.records_per_second
    );
    let total_cpu = (report.daemon_cpu_seconds + report.simulators_cpu_seconds).max(f64::EPSILON);
    let _ = writeln!(
        out,
        "  this process used {:.2} CPU s ({:.1} µs per record); the simulators {:.2} CPU s ({:.0} % of the pass's CPU)",
        report.daemon_cpu_seconds,
        report.daemon_cpu_seconds * 1e6 / (report.records_pulled.max(1) as f64),
        report.simulators_cpu_seconds,
        report.simulators_cpu_seconds * 100.0 / total_cpu
    );
    let replay = &report.simulators_replay;
    let _ = writeln!(
        out,
        "  the simulators answered {} of {} calls from memory (recorded in a warm-up read; {} rendered live)",
        replay.replayed,
        replay.replayed + replay.missed,
        replay.missed
    );
    let _ = writeln!(
        out,
        "  every connection's client may send {} requests/s here (its default is 10): this measures crmsync's \
         engine, not the vendors' real limits (at 10 requests/s Zoho's 200 records a call alone cap a pass at \
         2,000 records/s)",
        report.rate_limit_per_second
    );
    let bound = &report.bound;
    let _ = writeln!(
        out,
        "  the pass ended with {} ({:.2} s: {:.2} s reading pages, {:.2} s waiting for the writer); the single \
         writer (reconcile + commit) was busy {:.2} s ({:.1} % of the pass): bound by {}",
        bound.last_connection,
        bound.last_connection_seconds,
        bound.last_connection_reading_seconds,
        bound.last_connection_committing_seconds,
        bound.writer_busy_seconds,
        bound.writer_busy_percent,
        bound.bound_by
    );
    let _ = writeln!(
        out,
        "resident memory: {} MiB before, {} MiB peak, {} MiB after (high-water mark {} MiB; store page cache {} MiB; bar: < 150 MiB)",
        report.memory.before_mib,
        report.memory.peak_mib,
        report.memory.after_mib,
        report.memory.high_water_mib,
        report.store_cache_mib
    );
    let curve: Vec<String> =
        report.memory.curve.iter().map(|(records, resident)| format!("{records}: {resident}")).collect();
    let _ = writeln!(out, "resident MiB by vendor records committed: {}", curve.join(", "));
    let _ =
        writeln!(out, "resident MiB by phase (before → peak → after; * sampled every 100 ms, not the kernel's mark):");
    for phase in &report.memory.phases {
        let _ = writeln!(
            out,
            "  {:<46} {:>7} → {:>7}{} → {:>7}",
            phase.phase,
            phase.before_mib,
            phase.peak_mib,
            if phase.exact_peak { " " } else { "*" },
            phase.after_mib
        );
    }
    let _ = writeln!(
        out,
        "store on disk: {} MiB for {} MiB of vendor JSON served ({:.2}×; bar: ≤ 3×)\n",
        report.store_mib,
        report.vendor_json_mib,
        report.store_mib / report.vendor_json_mib.max(f64::EPSILON)
    );
    let _ = writeln!(
        out,
        "{:<14} {:<12} {:>10} {:>9} {:>9} {:>11} {:>8} {:>11} {:>14} {:>18}",
        "connection",
        "entity",
        "records",
        "seconds",
        "reading",
        "committing",
        "limiter",
        "full calls",
        "minimum data",
        "incremental calls"
    );
    for (row, incremental) in report.full_pass.iter().zip(&report.incremental_calls) {
        let _ = writeln!(
            out,
            "{:<14} {:<12} {:>10} {:>9.2} {:>9.2} {:>11.2} {:>8.2} {:>11} {:>14} {:>18}",
            row.connection,
            row.entity,
            row.records,
            row.seconds,
            row.reading_seconds,
            row.committing_seconds,
            row.rate_limit_waited_seconds,
            row.api_calls,
            row.minimum_data_calls,
            incremental.api_calls
        );
    }
    let _ = writeln!(
        out,
        "\n(seconds = reading pages (HTTP, decoding) + committing (waiting for the writer); limiter = of the \
         reading, waiting for the client rate limit; full calls include token, metadata and lookup calls; the \
         minimum of Dataverse orders counts their {} lines, a table read of its own; the incremental bar is \
         ≤ 1 call per entity)\n",
        report.dataverse_order_lines
    );
    let _ = writeln!(
        out,
        "sales metrics over the store: unified {:.3} s; unified + every connection in one scan {:.3} s",
        report.metrics_unified_seconds, report.metrics_all_scopes_seconds
    );
    let hooks = &report.webhooks;
    let _ = writeln!(
        out,
        "webhook → durable store: {} deliveries at {}/s: {} acknowledged, {} refused (503), {} failed; \
         p50 {} ms, p99 {} ms, max {} ms   (bar: p99 < 50 ms at 1,000/s)",
        hooks.deliveries,
        hooks.target_per_second,
        hooks.acknowledged,
        hooks.refused,
        hooks.failed,
        hooks.p50_ms,
        hooks.p99_ms,
        hooks.max_ms
    );
    let phase_cpu = (hooks.generator_cpu_seconds + hooks.daemon_cpu_seconds).max(f64::EPSILON);
    let _ = writeln!(
        out,
        "  sent by a process of its own over at most {} kept-alive connections ({} deliveries waited for a \
         free one, in their latency; sent p99 {} ms late); this process used {:.2} CPU s, the sender {:.2} \
         CPU s ({:.0} % of the phase's CPU)",
        hooks.connections,
        hooks.waited_for_connection,
        hooks.generator_late_p99_ms,
        hooks.daemon_cpu_seconds,
        hooks.generator_cpu_seconds,
        hooks.generator_cpu_seconds * 100.0 / phase_cpu
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(connection: &str, entity: &str, reading: f64, committing: f64) -> BenchRow {
        BenchRow {
            connection: connection.to_owned(),
            entity: entity.to_owned(),
            records: 0,
            api_calls: 0,
            minimum_data_calls: 0,
            seconds: reading + committing,
            reading_seconds: reading,
            committing_seconds: committing,
            rate_limit_waited_seconds: 0.0,
        }
    }

    #[test]
    fn latency_quantiles_are_the_nearest_rank_in_milliseconds() {
        let micros: Vec<u64> = (1..=200).map(|index| index * 1_000).collect();
        assert_eq!(quantile_ms(&micros, 0.50), 100.0);
        assert_eq!(quantile_ms(&micros, 0.99), 198.0);
        assert_eq!(quantile_ms(&micros, 1.0), 200.0);
        assert_eq!(quantile_ms(&[1_234], 0.99), 1.2, "rounded to 0.1 ms");
        assert_eq!(quantile_ms(&[], 0.99), 0.0, "no acknowledged delivery");
    }

    #[test]
    fn the_pass_is_bound_by_its_slowest_connection_or_by_a_writer_busy_nearly_all_of_it() {
        // Zoho's entities, one after the other, take 9 s; Salesforce's 5 s.
        let rows = [
            row("salesforce", "account", 1.0, 1.0),
            row("salesforce", "lead", 2.0, 1.0),
            row("zoho", "account", 3.0, 1.0),
            row("zoho", "lead", 4.0, 1.0),
        ];
        let reading = pass_bound(&rows, 9.0, 4.5);
        assert_eq!(reading.last_connection, "zoho");
        assert_eq!(reading.last_connection_seconds, 9.0);
        assert_eq!((reading.last_connection_reading_seconds, reading.last_connection_committing_seconds), (7.0, 2.0));
        assert_eq!(reading.writer_busy_percent, 50.0);
        assert_eq!(reading.bound_by, "reading zoho");
        assert_eq!(pass_bound(&rows, 9.0, 8.1).bound_by, "writer", "busy 90 % of the pass");
        let waiting = [row("zoho", "account", 1.0, 3.0), row("salesforce", "account", 1.0, 1.0)];
        assert_eq!(pass_bound(&waiting, 4.0, 2.0).bound_by, "committing zoho");
    }
}
