//! One handler per subcommand. Handlers load configuration, call into the library, and print; the
//! binary turns their result into an exit code.

pub mod backup;
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
        Command::Export(args) => export::run(args).await,
        Command::Sync(args) => sync::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchWebhooks(args) => bench::webhook_load(args).await,
        Command::BenchWarmUp(args) => bench::warm_up_process(args).await,
        Command::Metrics(args) => operate::metrics(args).await,
        Command::Orders(args) => operate::orders(args).await,
        Command::Dlq(args) => operate::dlq(args).await,
        Command::Conflicts(args) => operate::conflicts(args).await,
        Command::Identity(args) => operate::identity(args).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "crmsync", &mut script);
            print(&String::from_utf8_lossy(&script));
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
            print(&String::from_utf8_lossy(&page));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration file read when neither `--config` nor `CRMSYNC_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crmsync/crmsync.toml";

/// Where the configuration file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// `--config FILE`.
    Flag,
    /// The `CRMSYNC_CONFIG` environment variable.
    Environment,
    /// [`DEFAULT_CONFIG_PATH`].
    Default,
}

impl std::fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flag => "--config",
            Self::Environment => "CRMSYNC_CONFIG",
            Self::Default => "the default location",
        })
    }
}

/// Picks the configuration file: `--config`, else `CRMSYNC_CONFIG`, else [`DEFAULT_CONFIG_PATH`] if it
/// exists. Running without any is an error, never a daemon with nothing to do.
pub fn config_path(
    flag: Option<&std::path::Path>,
    environment: Option<std::ffi::OsString>,
    default_exists: bool,
) -> anyhow::Result<(std::path::PathBuf, ConfigOrigin)> {
    if let Some(path) = flag {
        return Ok((path.to_path_buf(), ConfigOrigin::Flag));
    }
    if let Some(path) = environment.filter(|path| !path.is_empty()) {
        return Ok((path.into(), ConfigOrigin::Environment));
    }
    if default_exists {
        return Ok((DEFAULT_CONFIG_PATH.into(), ConfigOrigin::Default));
    }
    anyhow::bail!(
        "no configuration file: pass --config FILE, set CRMSYNC_CONFIG, or create {DEFAULT_CONFIG_PATH} \
         (config/example.toml is a starting point; `crmsync check --config FILE` validates it)"
    )
}

/// Finds, loads and validates the configuration, reporting every problem at once.
pub fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    let (path, origin) = config_path(
        args.config.as_deref(),
        std::env::var_os("CRMSYNC_CONFIG"),
        std::path::Path::new(DEFAULT_CONFIG_PATH).exists(),
    )?;
    match Config::load(Some(&path), None, &SystemSecrets) {
        Ok(config) => {
            tracing::debug!(path = %path.display(), from = %origin, "configuration read");
            Ok(config)
        }
        Err(error @ ConfigError::Invalid(_)) => {
            Err(anyhow::Error::new(error).context(format!("configuration {} (from {origin})", path.display())))
        }
        Err(error) => Err(error).with_context(|| format!("configuration (from {origin})")),
    }
}

/// Logs the configuration's origin and warnings once logging is set up (`run`, `sync`).
pub fn log_config(config: &Config) {
    if let Some(path) = &config.source {
        tracing::info!(path = %path.display(), "configuration read");
    }
    for warning in &config.warnings {
        tracing::warn!(key = %warning.path, "{}", warning.message);
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
