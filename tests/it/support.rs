//! Test harness: simulators in the test process, the real `crmsync` binary as a child process,
//! configuration written to a temporary directory.

use std::path::PathBuf;
use std::process::{Output, Stdio};

use tokio::process::Command;

use crmsync_connectors::salesforce::sim::{self, RunningSalesforceSim, SalesforceSimOptions};
use crmsync_connectors::sim::{FaultSettings, World, WorldSize};

/// One test environment: a temporary directory with a store and a config.
pub(crate) struct Env {
    /// Keeps the directory (and the store in it) alive for the test.
    _dir: tempfile::TempDir,
    /// The config file.
    pub(crate) config: PathBuf,
}

/// The path of the real binary under test.
pub(crate) fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_crmsync")
}

/// A world with only accounts (fast to sync, enough pages to kill in the middle of).
pub(crate) fn accounts(count: usize) -> World {
    World::generate(
        11,
        WorldSize { accounts: count, leads: 0, opportunities: 0, orders: 0 },
        "2026-11-01T00:00:00Z".parse().expect("valid instant"),
        false,
    )
}

/// Starts a Salesforce simulator.
pub(crate) async fn salesforce(world: World, faults: FaultSettings, presence_bit: Option<u8>) -> RunningSalesforceSim {
    let mut options = SalesforceSimOptions::with_world(world);
    options.faults = faults;
    if let Some(bit) = presence_bit {
        options.presence = bit;
    }
    sim::start(options).await.expect("simulator starts")
}

impl Env {
    /// Writes a config with the given Salesforce connections (`(name, base_url)`) and extra TOML.
    pub(crate) fn new(connections: &[(&str, &str)], extra: &str) -> Self {
        let snippets: Vec<String> = connections.iter().map(|(name, url)| sim::connection_toml(name, url)).collect();
        Self::with_connections(&snippets, extra)
    }

    /// Writes a config with the given `[connections.NAME]` tables (any vendor) and extra TOML.
    pub(crate) fn with_connections(snippets: &[String], extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut toml = format!(
            "[daemon]\ndata_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"20s\"\nlog_format = \"json\"\n\n",
            dir.path().join("store").display().to_string()
        );
        for snippet in snippets {
            toml.push_str(snippet);
            toml.push_str("retry = { give_up_after = \"60s\", base_delay = \"5ms\", max_delay = \"50ms\" }\n\n");
        }
        toml.push_str(extra);
        let config = dir.path().join("crmsync.toml");
        std::fs::write(&config, toml).expect("write config");
        Self { _dir: dir, config }
    }

    /// A `crmsync` command with this environment's config and the simulators' secrets.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command.args(args).arg("--config").arg(&self.config);
        let secrets = sim::demo_secrets()
            .into_iter()
            .chain(crmsync_connectors::zoho::sim::demo_secrets())
            .chain(crmsync_connectors::dynamics365::sim::demo_secrets());
        for (name, value) in secrets {
            command.env(name, value);
        }
        command.env("RUST_LOG", "warn").stdin(Stdio::null());
        command
    }

    /// Runs a command to completion.
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.expect("crmsync runs")
    }

    /// Names the ports a running daemon bound (see [`bound_ports`]) in the configuration, so that the
    /// commands run next (`status`, `backup`, the operator commands) reach that daemon.
    pub(crate) fn point_at(&self, (public, admin): (u16, u16)) {
        let config = std::fs::read_to_string(&self.config).expect("read config");
        let lines: Vec<String> = config
            .lines()
            .map(|line| {
                if line.starts_with("listen = ") {
                    format!("listen = \"127.0.0.1:{public}\"")
                } else if line.starts_with("admin_listen = ") {
                    format!("admin_listen = \"127.0.0.1:{admin}\"")
                } else {
                    line.to_owned()
                }
            })
            .collect();
        std::fs::write(&self.config, lines.join("\n") + "\n").expect("write config");
    }
}

/// The ports a daemon bound, (public, admin), read from its `crmsync running` log line. The test
/// configurations listen on port 0, so the system picks free ports as the daemon binds them: no test
/// picks a port first and races another process for it before the daemon binds it.
pub(crate) fn bound_ports(line: &str) -> Option<(u16, u16)> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if event["message"] != "crmsync running" {
        return None;
    }
    let port = |field: &str| event[field].as_str()?.parse::<std::net::SocketAddr>().ok().map(|address| address.port());
    Some((port("listen")?, port("admin")?))
}

/// Runs a command and returns its stdout, panicking with stderr when it fails.
pub(crate) fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "crmsync failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Exports one entity as parsed JSON lines.
pub(crate) async fn export(env: &Env, entity: &str, include_deleted: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["export", "--entity", entity, "--format", "jsonl"];
    if include_deleted {
        args.push("--include-deleted");
    }
    ok(env.run(&args).await).lines().map(|line| serde_json::from_str(line).expect("export line is JSON")).collect()
}

/// Sends a signal to a child.
pub(crate) async fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("child is running");
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().await.expect("kill runs");
    assert!(status.success(), "kill -{name} failed");
}
