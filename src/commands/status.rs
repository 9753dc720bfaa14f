//! `crmsync status [--json]`.

use std::process::ExitCode;

use super::{load_config, print};
use crate::cli::StatusArgs;
use crate::http::client::{ApiClient, api_url};
use crate::status::{StatusConfig, StatusReport, collect, render};
use crate::store::StoreError;

/// Prints the status from the store; while a daemon holds the store (or with `--url`), asks that
/// daemon: its API with the token (`api.token` or `--token`), else its admin listener's `/status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let token = args.client.token.clone().map(secrecy::SecretString::from).or_else(|| config.api.token.clone());
    let admin = config.daemon.admin_listen;
    let report = match &args.client.url {
        Some(url) => remote(url, token, admin).await?,
        None => match crate::app::open_store(&config) {
            Ok(store) => {
                let status_config = StatusConfig::from_config(&config);
                tokio::task::spawn_blocking(move || collect(&store, &status_config)).await??
            }
            Err(StoreError::Locked { .. }) => remote(&api_url(config.daemon.listen), token, admin).await?,
            Err(error) => return Err(crate::app::open_error(&config, error)),
        },
    };
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        print(&render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks a running daemon: its API with a token, else its admin listener (no token, loopback).
async fn remote(
    url: &str,
    token: Option<secrecy::SecretString>,
    admin: std::net::SocketAddr,
) -> anyhow::Result<StatusReport> {
    if let Some(token) = token {
        return Ok(ApiClient::new(url, token).status().await?);
    }
    let url = format!("http://{admin}/status");
    let response = reqwest::get(&url).await.map_err(|error| {
        anyhow::anyhow!(
            "the store is in use by a running daemon and its admin listener {url} did not answer (give --token, \
             or set api.token, to ask its API instead): {error}"
        )
    })?;
    Ok(response.error_for_status()?.json::<StatusReport>().await?)
}
