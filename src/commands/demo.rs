//! `crmsync demo [--once]`: the embedded default. Starts CRM simulators on loopback with overlapping
//! seeded data (the same customers in several CRMs), writes a configuration pointing at them, syncs,
//! and either prints the results (`--once`) or keeps running as a daemon.
//!
//! The demo runs a Salesforce org, a Zoho CRM org and a Dynamics 365 (Dataverse) environment, each
//! holding its own slice of one generated sales world; customers present in several show identity
//! resolution, and routes carry every entity between all of them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use crmsync_connectors::canonical::{Entity, Timestamp};
use crmsync_connectors::dynamics365::sim::{self as d365_sim, Dynamics365SimOptions, RunningDynamics365Sim};
use crmsync_connectors::salesforce::sim::{self, RunningSalesforceSim, SalesforceSimOptions};
use crmsync_connectors::settings::{MapSecrets, SystemSecrets};
use crmsync_connectors::sim::{World, WorldSize};
use crmsync_connectors::zoho::sim::{self as zoho_sim, RunningZohoSim, ZohoSimOptions};
use tokio_util::sync::CancellationToken;

use super::print;
use crate::app::{App, Listeners, run_daemon};
use crate::cli::DemoArgs;
use crate::config::Config;
use crate::scheduler::pass::run_pass;
use crate::store::Store;
use crate::telemetry::{self, LogStyle};

/// The running simulators.
pub struct DemoSimulators {
    /// The Salesforce org.
    pub salesforce: RunningSalesforceSim,
    /// The Zoho org.
    pub zoho: RunningZohoSim,
    /// The Dataverse environment.
    pub dynamics365: RunningDynamics365Sim,
}

/// Starts the simulators over one shared world and returns them with a demo configuration (TOML) and
/// the secrets it references.
pub async fn start_demo(
    seed: u64,
    data_dir: &std::path::Path,
    listen: &str,
) -> anyhow::Result<(DemoSimulators, String, MapSecrets)> {
    let world = World::generate(seed, WorldSize::DEMO, Timestamp::now(), true);
    let salesforce = sim::start(SalesforceSimOptions::with_world(world.clone())).await?;
    let zoho = zoho_sim::start(ZohoSimOptions::with_world(world.clone())).await?;
    let dynamics365 = d365_sim::start(Dynamics365SimOptions::with_world(world)).await?;
    let mut toml = String::new();
    writeln!(toml, "[daemon]")?;
    writeln!(toml, "data_dir = {:?}", data_dir.display().to_string())?;
    writeln!(toml, "listen = {listen:?}")?;
    writeln!(toml, "admin_listen = \"127.0.0.1:0\"")?;
    writeln!(toml, "shutdown_grace = \"10s\"\n")?;
    let (connections, secrets) =
        simulator_connections(&salesforce.base_url(), &zoho.base_url(), &dynamics365.base_url());
    toml.push_str(&connections);
    // Every entity flows between the orgs; a deleted order is cancelled in the other org, not deleted.
    for (entity, on_delete) in [("account", "ignore"), ("lead", "ignore"), ("opportunity", "ignore"), ("order", "mark")]
    {
        writeln!(toml, "[[routes]]\nentity = {entity:?}\nfrom = [\"*\"]\nto = [\"*\"]\non_delete = {on_delete:?}\n")?;
    }
    writeln!(
        toml,
        "[reconcile]\nsource_priority = [\"salesforce\", \"zoho\", \"dynamics365\"]\nconflict = \"newest\"\n"
    )?;
    writeln!(toml, "[metrics]\nreporting_currency = \"EUR\"\nwindow = \"30d\"\n\n[metrics.fx]\nUSD = \"0.92\"")?;
    Ok((DemoSimulators { salesforce, zoho, dynamics365 }, toml, secrets))
}

/// The connections `salesforce`, `zoho` and `dynamics365` to simulators at these base URLs (TOML,
/// one section each), and the demo credentials they reference.
/// For tests: the demo's three simulators (seeded with `seed`, kept running while the value lives)
/// and an [`App`] syncing them into a store in `dir`, with the demo's connections and nothing else.
#[cfg(test)]
pub(crate) async fn test_app(seed: u64, dir: &std::path::Path) -> (DemoSimulators, App) {
    let (simulators, _, secrets) = start_demo(seed, &dir.join("unused"), "127.0.0.1:0").await.unwrap();
    let (connections, _) = simulator_connections(
        &simulators.salesforce.base_url(),
        &simulators.zoho.base_url(),
        &simulators.dynamics365.base_url(),
    );
    let mut toml = String::new();
    writeln!(toml, "[daemon]\ndata_dir = {:?}\n", dir.join("store").display().to_string()).unwrap();
    toml.push_str(&connections);
    writeln!(toml, "[metrics]\nreporting_currency = \"EUR\"\n\n[metrics.fx]\nUSD = \"0.92\"").unwrap();
    let path = dir.join("crmsync.toml");
    std::fs::write(&path, &toml).unwrap();
    let config = Config::load(Some(&path), Some(HashMap::new()), &secrets).unwrap();
    (simulators, App::build(config).unwrap())
}

pub fn simulator_connections(salesforce: &str, zoho: &str, dynamics365: &str) -> (String, MapSecrets) {
    let toml = [
        sim::connection_toml("salesforce", salesforce),
        zoho_sim::connection_toml("zoho", zoho),
        d365_sim::connection_toml("dynamics365", dynamics365),
    ]
    .join("\n");
    let secrets = sim::demo_secrets()
        .into_iter()
        .chain(zoho_sim::demo_secrets())
        .chain(d365_sim::demo_secrets())
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    (toml + "\n", MapSecrets(secrets))
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(LogStyle::Auto);
    let (data_dir, temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (std::env::temp_dir().join(format!("crmsync-demo-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let result = demo(&args, &data_dir).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

async fn demo(args: &DemoArgs, data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (simulators, toml, secrets) = start_demo(args.seed, &data_dir.join("store"), &args.listen).await?;
    // The configuration is self-contained (secrets in files next to it, a generated API token, a fixed
    // admin port), so `crmsync status --config <it>` and the other commands reach the running demo.
    let token = api_token();
    // Bound before the configuration is written: it names the ports really listened on (the admin
    // listener's is picked by the system, and so is the public one for `--listen 127.0.0.1:0`).
    let listeners = if args.once {
        None
    } else {
        let listen: std::net::SocketAddr = args
            .listen
            .parse()
            .with_context(|| format!("--listen {:?} is not an address such as 127.0.0.1:8080", args.listen))?;
        Some(Listeners::bind_at(listen, std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?)
    };
    let toml = self_contained(&toml, &secrets, &data_dir.join("secrets"), &token)?;
    let toml = match &listeners {
        Some(listeners) => {
            let (public, admin) = listeners.addresses()?;
            toml.replace(&format!("listen = {:?}", args.listen), &format!("listen = \"{public}\""))
                .replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"{admin}\""))
        }
        None => toml,
    };
    let config_path: PathBuf = data_dir.join("demo.toml");
    std::fs::write(&config_path, &toml).with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::load(Some(&config_path), Some(HashMap::new()), &SystemSecrets)?;
    let urls = [
        format!("salesforce (Salesforce) at {}", simulators.salesforce.base_url()),
        format!("zoho (Zoho CRM) at {}", simulators.zoho.base_url()),
        format!("dynamics365 (Dynamics 365) at {}", simulators.dynamics365.base_url()),
    ];
    print(&format!("crmsync demo: simulated CRMs {}; config in {}\n", urls.join(", "), config_path.display()));
    let prometheus = if args.once { None } else { Some(telemetry::install_prometheus()?) };
    let app = App::build(config)?;
    let selection = super::sync::selection(&app.config, None, None, None, false)?;
    let policies = app.rules.fields.clone();
    let cancel = CancellationToken::new();
    let first = run_pass(&app.connectors, &app.store, &app.ingest, &policies, &selection, &cancel).await;
    print(&format!("\nfirst sync pass\n{}", first.table()));
    let second = run_pass(&app.connectors, &app.store, &app.ingest, &policies, &selection, &cancel).await;
    let pushed_again: u64 = second.rows.iter().map(|row| row.records_out).sum();
    print(&format!("\nsecond sync pass\n{}", second.table()));
    print(&format!("second sync pass: {pushed_again} records pushed (0 = the CRMs agree: no ping-pong)\n"));
    // Full scans of the store: off the async workers, which keep serving the simulators meanwhile.
    let (store, config) = (app.store.clone(), app.config.clone());
    let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        Ok(identity_summary(&store)? + &super::operate::metrics_text(&store, &config)?)
    })
    .await
    .context("the demo's summary failed")??;
    print(&summary);
    let Some(listeners) = listeners else {
        app.shutdown().await?;
        return Ok(if first.failed() || second.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    };
    let (listen, admin) = listeners.addresses()?;
    print(&format!(
        "\nthe demo keeps running (Ctrl-C to stop):\n  dashboard: http://{listen}/\n  API:       http://{listen}/api/v1\n  \
         API token: {token}\n  admin:     http://{admin}/metrics (also /healthz, /readyz, /status)\n  \
         commands:  crmsync status --config {config} (also orders, metrics, conflicts, dlq, export)\n",
        config = config_path.display()
    ));
    run_daemon(app, listeners, prometheus, super::run::shutdown_signal()).await?;
    drop(simulators);
    Ok(ExitCode::SUCCESS)
}

/// A fresh API token: 32 random bytes, hex.
fn api_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

/// Rewrites the demo configuration's `{ env = "NAME" }` secrets as files in `dir` (owner-only) and
/// adds the API token the same way, so the file works for any command without the environment.
fn self_contained(toml: &str, secrets: &MapSecrets, dir: &std::path::Path, token: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, value: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).with_context(|| format!("cannot write {}", path.display()))?;
        std::io::Write::write_all(&mut file, value.as_bytes())?;
        Ok(path)
    };
    let mut out = toml.to_owned();
    for (name, value) in &secrets.0 {
        let path = write(name, value)?;
        out =
            out.replace(&format!("{{ env = \"{name}\" }}"), &format!("{{ file = {:?} }}", path.display().to_string()));
    }
    let token_path = write("api-token", token)?;
    out.push_str(&format!("\n[api]\ntoken = {{ file = {:?} }}\n", token_path.display().to_string()));
    Ok(out)
}

fn identity_summary(store: &Store) -> anyhow::Result<String> {
    let mut out = String::from("\nidentity: canonical records (vendor copies joined into them)\n");
    for entity in Entity::ALL {
        let (mut records, mut copies, mut shared) = (0u64, 0u64, 0u64);
        for record in store.scan(*entity) {
            let record = record?;
            if record.is_deleted() || record.merged_into.is_some() {
                continue;
            }
            records += 1;
            copies += record.links.len() as u64;
            if record.links.len() > 1 {
                shared += 1;
            }
        }
        out.push_str(&format!(
            "  {:<12} {records:>6} records, {copies:>6} vendor copies, {shared:>5} known in several CRMs\n",
            entity.as_str()
        ));
    }
    Ok(out)
}
