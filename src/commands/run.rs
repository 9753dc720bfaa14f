//! `crmsync run`: the daemon.

use std::process::ExitCode;

use super::{init_logging, load_config};
use crate::app::{App, run_daemon};
use crate::cli::ConfigArgs;
use crate::telemetry;

/// Runs until SIGTERM/SIGINT; a second signal exits at once.
pub async fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    init_logging(&config);
    let prometheus = telemetry::install_prometheus()?;
    let app = App::build(config)?;
    run_daemon(app, Some(prometheus), shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGTERM or SIGINT, and arms a second-signal handler that exits immediately.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting immediately");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM; only SIGINT stops the daemon");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
