//! `crmsync backup` and `crmsync restore`: a backup taken from a stopped store and through a running
//! daemon restores into a new directory with the same records; a damaged file and an occupied
//! directory are refused.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crmsync_connectors::sim::FaultSettings;

use crate::support::{Env, accounts, bound_ports, ok, salesforce, signal};

const TOKEN: &str = "t0ken-for-backups";

/// The config of `env` with its store moved to `dir`.
fn config_with_store(env: &Env, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let store_line = text.lines().find(|line| line.starts_with("data_dir = ")).unwrap().to_owned();
    let moved = text.replace(&store_line, &format!("data_dir = {:?}", dir.join("store").display().to_string()));
    let path = dir.join("restored.toml");
    std::fs::write(&path, moved).unwrap();
    path
}

/// A `crmsync` command with another config (the simulator's secrets set).
fn crmsync(config: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(crate::support::binary());
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env("CRMSYNC_TEST_API_TOKEN", TOKEN)
        .stdin(std::process::Stdio::null());
    for (name, value) in crmsync_connectors::salesforce::sim::demo_secrets() {
        command.env(name, value);
    }
    command
}

fn names(records: &[Value]) -> Vec<String> {
    let mut names: Vec<String> =
        records.iter().map(|record| record["data"]["fields"]["name"].as_str().unwrap_or_default().to_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_running_daemon_restores_into_an_empty_directory_with_the_same_records() {
    let simulator = salesforce(accounts(120), FaultSettings::default(), None).await;
    let env = Env::new(&[("sf", &simulator.base_url())], "[api]\ntoken = { env = \"CRMSYNC_TEST_API_TOKEN\" }\n");
    let config = env.config.to_str().unwrap().to_owned();
    let export = |config: String| async move {
        let text =
            ok(crmsync(&config, &["export", "--entity", "account", "--format", "jsonl"]).output().await.unwrap());
        text.lines().map(|line| serde_json::from_str::<Value>(line).unwrap()).collect::<Vec<Value>>()
    };
    ok(crmsync(&config, &["sync"]).output().await.unwrap());
    let synced = export(config.clone()).await;
    assert_eq!(synced.len(), 120);
    let work = tempfile::tempdir().unwrap();

    // The store directly (no daemon).
    let offline = work.path().join("offline.backup");
    let printed = ok(crmsync(&config, &["backup", "--out", offline.to_str().unwrap()]).output().await.unwrap());
    assert!(printed.contains("backup of the store written"), "{printed}");

    // Through the running daemon, which holds the store. `backup` finds the running daemon's API
    // through `daemon.listen`: the ports the daemon bound are named in the configuration.
    let mut daemon = crmsync(&config, &["run"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut logs = BufReader::new(daemon.stderr.take().unwrap()).lines();
    let mut ports = None;
    while let Some(line) = logs.next_line().await.unwrap() {
        ports = bound_ports(&line);
        if ports.is_some() {
            break;
        }
    }
    env.point_at(ports.expect("the daemon logs the addresses it listens on"));
    tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });
    let online = work.path().join("online.backup");
    let printed =
        ok(crmsync(&config, &["backup", "--out", online.to_str().unwrap(), "--json"]).output().await.unwrap());
    let summary: Value = serde_json::from_str(&printed).unwrap();
    assert!(summary["entries"].as_u64().unwrap() >= 120, "{summary}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&online).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds customer data");
    }
    // With a wrong token the daemon refuses, and nothing is left behind.
    let refused = work.path().join("refused.backup");
    let output =
        crmsync(&config, &["backup", "--out", refused.to_str().unwrap(), "--token", "wrong"]).output().await.unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("refused the backup (401"), "{output:?}");
    assert!(!refused.exists() && !work.path().join("refused.backup.partial").exists());
    signal(&daemon, "TERM").await;
    assert!(daemon.wait().await.unwrap().success());

    // Restore into a new directory: the same records.
    for backup in [&offline, &online] {
        let target = tempfile::tempdir().unwrap();
        let config = config_with_store(&env, target.path());
        let config_arg = config.to_str().unwrap();
        ok(crmsync(config_arg, &["restore", "--from", backup.to_str().unwrap()]).output().await.unwrap());
        let restored = export(config_arg.to_owned()).await;
        assert_eq!(names(&restored), names(&synced));
        // A second restore would overwrite that store: refused.
        let again = crmsync(config_arg, &["restore", "--from", backup.to_str().unwrap()]).output().await.unwrap();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a store"), "{again:?}");
    }

    // A truncated backup is refused and leaves no store behind.
    let bytes = std::fs::read(&online).unwrap();
    let truncated = work.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let target = tempfile::tempdir().unwrap();
    let config = config_with_store(&env, target.path());
    let output =
        crmsync(config.to_str().unwrap(), &["restore", "--from", truncated.to_str().unwrap()]).output().await.unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("damaged"), "{output:?}");
    assert!(!target.path().join("store").join("db").exists());
}
