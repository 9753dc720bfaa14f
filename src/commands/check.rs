//! `crmsync check [--connectivity]`.

use std::process::ExitCode;
use std::sync::Arc;

use crmsync_connectors::Connector;
use crmsync_connectors::settings::SystemSecrets;

use super::print;
use crate::app::{StoreHost, build_connectors};
use crate::cli::CheckArgs;
use crate::config::{Config, ConfigError};

/// Validates the configuration (every problem at once) and, with `--connectivity`, logs in to each CRM.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (path, origin) = super::config_path(
        args.config.config.as_deref(),
        std::env::var_os("CRMSYNC_CONFIG"),
        std::path::Path::new(super::DEFAULT_CONFIG_PATH).exists(),
    )?;
    let config = match Config::load(Some(&path), None, &SystemSecrets) {
        Ok(config) => config,
        Err(error @ ConfigError::Invalid(_)) => {
            eprintln!("{error}\n(in {}, from {origin})", path.display());
            return Ok(ExitCode::FAILURE);
        }
        Err(error) => {
            eprintln!("error: {error} (from {origin})");
            return Ok(ExitCode::FAILURE);
        }
    };
    print(&format!("configuration ok: {} (from {origin})\n{}", path.display(), config.summary()));
    for warning in &config.warnings {
        print(&format!("warning: {warning}\n"));
    }
    if !args.connectivity {
        return Ok(ExitCode::SUCCESS);
    }
    // Connector state (a rotated refresh token) must land in the daemon's store, so check uses it.
    let store = crate::app::open_store(&config).map_err(|error| {
        anyhow::anyhow!("{error}\n(--connectivity needs the store for rotated credentials; stop the daemon or run without --connectivity)")
    })?;
    let connectors = build_connectors(&config, Arc::new(StoreHost::new(store.clone(), &config)))?;
    let mut failed = false;
    for (id, connector) in &connectors {
        match connector.check().await {
            Ok(report) => {
                print(&format!("{id}: ok\n"));
                for note in report.notes {
                    print(&format!("  note: {note}\n"));
                }
                for value in report.unmapped_values {
                    print(&format!("  unmapped value: {value}\n"));
                }
            }
            Err(error) => {
                failed = true;
                print(&format!("{id}: FAILED: {}\n", crate::scheduler::error_chain(&error)));
            }
        }
    }
    store.flush()?;
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
