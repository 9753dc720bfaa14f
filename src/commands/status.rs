//! `crmsync status [--json]`.

use std::process::ExitCode;

use super::{load_config, print};
use crate::cli::StatusArgs;
use crate::status::{StatusConfig, collect, render};
use crate::store::{Store, StoreError};

/// Prints the status from the store; while a daemon holds the store, asks that daemon's admin listener.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let status_config = StatusConfig::from_config(&config);
    let report = match Store::open(&config.daemon.data_dir) {
        Ok(store) => serde_json::to_value(collect(&store, &status_config)?)?,
        Err(StoreError::Locked { .. }) => {
            let url = format!("http://{}/status", config.daemon.admin_listen);
            let response = reqwest::get(&url).await.map_err(|error| {
                anyhow::anyhow!(
                    "the store is in use by a running daemon and its admin listener {url} did not answer: {error}"
                )
            })?;
            response.error_for_status()?.json::<serde_json::Value>().await?
        }
        Err(error) => return Err(error.into()),
    };
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        let parsed: crate::status::StatusReport = serde_json::from_value(report)?;
        print(&render(&parsed));
    }
    Ok(ExitCode::SUCCESS)
}
