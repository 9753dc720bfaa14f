//! One handler per subcommand. Handlers load configuration, call into the library, and print; the
//! binary turns their result into an exit code.

pub mod bench;
pub mod check;
pub mod demo;
pub mod export;
pub mod operate;
pub mod run;
pub mod simulate;
pub mod status;
pub mod sync;

use std::process::ExitCode;

use anyhow::Context;
use crmsync_connectors::settings::SystemSecrets;

use crate::cli::{Cli, Command, ConfigArgs};
use crate::config::{Config, ConfigError, LogFormat};
use crate::telemetry::{self, LogStyle};

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Export(args) => export::run(args),
        Command::Sync(args) => sync::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Metrics(args) => operate::metrics(args),
        Command::Dlq(args) => operate::dlq(args),
        Command::Conflicts(args) => operate::conflicts(args),
        Command::Identity(args) => operate::identity(args),
    }
}

/// Loads and validates the configuration, printing every problem.
pub fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    match Config::load(args.config.as_deref(), None, &SystemSecrets) {
        Ok(config) => Ok(config),
        Err(error @ ConfigError::Invalid(_)) => Err(anyhow::Error::new(error)),
        Err(error) => Err(error).context("configuration"),
    }
}

/// Starts logging in the configured format.
pub fn init_logging(config: &Config) {
    telemetry::init_logging(match config.daemon.log_format {
        LogFormat::Auto => LogStyle::Auto,
        LogFormat::Json => LogStyle::Json,
        LogFormat::Pretty => LogStyle::Pretty,
    });
}

/// Writes text to stdout (the one place commands print results).
pub fn print(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`crmsync status | head`) is not an error worth reporting.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}
