//! `crmsync sync [--job J] [--connection C] [--entity E] [--full] [--sweep]`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::bail;
use crmsync_connectors::canonical::{ConnectionId, Entity};
use tokio_util::sync::CancellationToken;

use super::{init_logging, load_config, print};
use crate::app::App;
use crate::cli::SyncArgs;
use crate::config::{Config, Direction};
use crate::scheduler::pass::{Selection, run_pass};

/// Builds the selection a `sync` invocation covers.
pub fn selection(
    config: &Config,
    job: Option<&str>,
    connection: Option<&str>,
    entity: Option<&str>,
    full: bool,
) -> anyhow::Result<Selection> {
    let entity_filter: Option<Entity> = entity.map(str::parse).transpose()?;
    let (mut targets, pull, push) = match job {
        Some(name) => {
            let Some(job) = config.jobs.iter().find(|job| job.name == name) else {
                let names: Vec<&str> = config.jobs.iter().map(|job| job.name.as_str()).collect();
                bail!("no job named {name:?} (jobs: {})", names.join(", "));
            };
            let targets: BTreeMap<ConnectionId, Vec<Entity>> = job
                .connections
                .iter()
                .filter_map(|id| {
                    let configured = &config.connections.get(id)?.settings.entities;
                    Some((
                        id.clone(),
                        job.entities.iter().copied().filter(|entity| configured.contains(entity)).collect(),
                    ))
                })
                .collect();
            (targets, job.direction != Direction::Push, job.direction != Direction::Pull)
        }
        None => (
            config
                .connections
                .iter()
                .map(|(id, connection)| (id.clone(), connection.settings.entities.clone()))
                .collect(),
            true,
            true,
        ),
    };
    if let Some(name) = connection {
        let id = ConnectionId::new(name);
        if !config.connections.contains_key(&id) {
            let names: Vec<&str> = config.connections.keys().map(ConnectionId::as_str).collect();
            bail!("no connection named {name:?} (connections: {})", names.join(", "));
        }
        targets.retain(|candidate, _| *candidate == id);
    }
    if let Some(entity) = entity_filter {
        for entities in targets.values_mut() {
            entities.retain(|candidate| *candidate == entity);
        }
    }
    targets.retain(|_, entities| !entities.is_empty());
    if targets.is_empty() {
        bail!("nothing to sync: no configured connection × entity matches the selection");
    }
    Ok(Selection { targets, pull, push, full })
}

/// Runs one pass and prints the summary; exits non-zero if any part failed.
pub async fn run(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    init_logging(&config);
    super::log_config(&config);
    let selection =
        selection(&config, args.job.as_deref(), args.connection.as_deref(), args.entity.as_deref(), args.full)?;
    let app = App::build(config)?;
    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: finishing the page in flight");
            interrupt.cancel();
        }
    });
    let policies = app.rules.fields.clone();
    let report = run_pass(&app.connectors, &app.store, &app.ingest, &policies, &selection, &cancel).await;
    // The table first: after a storage failure (a full disk) the final flush fails too, and the
    // operator still needs to see what each connection × entity did.
    print(&report.table());
    let swept = if args.sweep && !cancel.is_cancelled() { sweep(&app, &selection).await } else { true };
    app.shutdown().await?;
    Ok(if report.failed() || !swept || cancel.is_cancelled() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `sync --sweep`: the drift sweep of each selected connection × entity, one line each; returns
/// whether every sweep completed.
async fn sweep(app: &App, selection: &Selection) -> bool {
    let mut completed = true;
    for (connection, entities) in &selection.targets {
        let Some(connector) = app.connectors.get(connection) else { continue };
        for entity in entities {
            match crate::scheduler::sweep::sweep(connector.as_ref(), &app.store, &app.ingest, *entity).await {
                Ok(report) => print(&format!(
                    "drift sweep {connection} {entity}: {} ids in the CRM, {} linked here, {} deleted, {} fetched, {} dead-lettered\n",
                    report.vendor_ids, report.store_ids, report.deletes_repaired, report.fetched, report.dead_lettered
                )),
                Err(error) => {
                    completed = false;
                    print(&format!(
                        "drift sweep {connection} {entity} failed: {}\n",
                        crate::scheduler::error_chain(&error)
                    ));
                }
            }
        }
    }
    completed
}
