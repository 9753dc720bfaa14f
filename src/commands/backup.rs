//! `crmsync backup --out FILE` and `crmsync restore --from FILE`.
//!
//! A backup is taken through the running daemon (`GET /api/v1/backup`, with the API token) while it
//! holds the store, else from the store directly; either way it is one point in time across the
//! whole store ([`crate::store::backup`]). The file is written next to its destination, read back
//! and checked, then renamed into place; it holds customer data and is created `0600`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::{load_config, print};
use crate::cli::{BackupArgs, RestoreArgs};
use crate::http::client::api_url;
use crate::store::StoreError;
use crate::store::backup::{BackupSummary, restore_backup, verify_backup};

/// `crmsync backup`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let partial = partial_path(&args.out);
    let written = match (&args.client.url, crate::app::open_store(&config)) {
        (None, Ok(store)) => {
            let partial = partial.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<&'static str> {
                let mut file = create_private(&partial)?;
                store.write_backup(&mut file)?;
                file.sync_all()?;
                Ok("the store")
            })
            .await??
        }
        (url, Ok(_) | Err(StoreError::Locked { .. })) => {
            let url = url.clone().unwrap_or_else(|| api_url(config.daemon.listen));
            let token = args.client.token.clone().map(secrecy::SecretString::from).or_else(|| config.api.token.clone());
            let Some(token) = token else {
                anyhow::bail!(
                    "a running daemon holds the store: the backup is taken through its API, which needs api.token \
                     in the configuration (or --token)"
                );
            };
            download(&format!("{}/api/v1/backup", url.trim_end_matches('/')), &token, &partial).await?;
            "the running daemon"
        }
        (_, Err(error)) => return Err(error.into()),
    };
    let checked = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<BackupSummary> {
            let mut file = std::fs::File::open(&partial)?;
            Ok(verify_backup(&mut file)?)
        })
        .await?
    };
    let summary = match checked {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error.context("the backup written does not read back whole; nothing was kept"));
        }
    };
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot move the backup to {}", args.out.display()))?;
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&summary)?));
    } else {
        print(&format!(
            "backup of {written} written to {}: {} entries in {} trees, {} bytes, store format {}\n",
            args.out.display(),
            summary.entries,
            summary.trees,
            summary.bytes,
            summary.format_version
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `crmsync restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let dir = config.daemon.data_dir.clone();
    let from = args.from.clone();
    let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<BackupSummary> {
        let mut file = std::fs::File::open(&from).with_context(|| format!("cannot read {}", from.display()))?;
        Ok(restore_backup(&dir, &mut file)?)
    })
    .await??;
    print(&format!(
        "restored {} entries in {} trees (store format {}) into {}; start crmsync to resume from the backup's cursors\n",
        summary.entries,
        summary.trees,
        summary.format_version,
        config.daemon.data_dir.display()
    ));
    Ok(ExitCode::SUCCESS)
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(std::ffi::OsString::from).unwrap_or_else(|| "crmsync-backup".into());
    name.push(".partial");
    out.with_file_name(name)
}

fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).with_context(|| format!("cannot create {}", path.display()))
}

async fn download(url: &str, token: &secrecy::SecretString, partial: &Path) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let mut response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .with_context(|| format!("the daemon's API at {url} did not answer"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("the daemon refused the backup ({status}): {}", body.chars().take(300).collect::<String>());
    }
    let mut file = create_private(partial)?;
    while let Some(chunk) = response.chunk().await.context("the backup stream broke off")? {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(())
}
