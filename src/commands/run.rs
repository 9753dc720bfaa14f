//! `crmsync run`: the daemon.

use std::process::ExitCode;

use super::{init_logging, load_config};
use crate::app::{App, Listeners, run_daemon};
use crate::cli::ConfigArgs;
use crate::telemetry;

/// Runs until SIGTERM/SIGINT; a second signal exits at once.
pub async fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    init_logging(&config);
    super::log_config(&config);
    let shutdown = shutdown_signal();
    let prometheus = telemetry::install_prometheus()?;
    // Listeners first: a busy port fails the start before any work begins.
    let listeners = Listeners::bind(&config).await?;
    let app = App::build(config)?;
    run_daemon(app, listeners, Some(prometheus), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGTERM or SIGINT, and arms a second-signal handler that exits immediately.
///
/// The handlers are registered when this is called, not when the future is first polled: the daemon
/// reports READY to systemd only after that, so a SIGTERM sent right after READY is a clean stop,
/// never the default "terminate at once".
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let mut signals = Signals::register();
    async move {
        signals.next().await;
        tokio::spawn(async move {
            signals.next().await;
            tracing::warn!("second signal: exiting immediately");
            std::process::exit(130);
        });
    }
}

struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(stream) => Some(stream),
                Err(error) => {
                    tracing::error!(error = %error, "cannot listen for {name}");
                    None
                }
            };
            Self {
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.terminate) => {}
                () = recv(&mut self.interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
