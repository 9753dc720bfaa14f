//! The command line as an operator meets it: `check`, `status` and `export` on a new store, `--help`.

use std::path::PathBuf;
use std::process::Stdio;

use crate::support::binary;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).stdin(Stdio::null()).env("RUST_LOG", "warn");
    command
}

const EXAMPLE_SECRETS: &[&str] = &[
    "CRMSYNC_API_TOKEN",
    "SF_CLIENT_SECRET",
    "SF_REFRESH_TOKEN",
    "SF_WEBHOOK_SECRET",
    "ZOHO_CLIENT_SECRET",
    "ZOHO_REFRESH_TOKEN",
    "ZOHO_WEBHOOK_TOKEN",
    "D365_CLIENT_SECRET",
    "D365_WEBHOOK_KEY",
];

#[tokio::test]
async fn check_accepts_the_example_config_and_lists_every_mistake_of_a_bad_one() {
    let mut good = command(&["check", "--config"]);
    good.arg(root().join("config/example.toml"));
    for name in EXAMPLE_SECRETS {
        good.env(name, "example-secret-value");
    }
    let output = good.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("configuration ok"), "{stdout}");
    assert!(stdout.contains("sf_prod (salesforce)") && !stdout.contains("example-secret-value"), "{stdout}");

    let mut bad = command(&["check", "--config"]);
    bad.arg(root().join("tests/fixtures/config/several_errors.toml")).env("SF_SECRET", "x");
    let output = bad.output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("invalid configuration (5 problems):"), "{stderr}");
    for key in [
        "daemon.listen",
        "connections.sf_prod.poll_interval",
        "connections.zoho_eu.kind",
        "routes[0].entity",
        "metrics.fx.USD",
    ] {
        assert!(stderr.contains(key), "{key} missing:\n{stderr}");
    }
}

#[tokio::test]
async fn status_and_export_work_on_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crmsync.toml");
    std::fs::write(&config, format!("[daemon]\ndata_dir = {:?}\n", dir.path().join("store").display().to_string()))
        .unwrap();
    let status = command(&["status", "--config", config.to_str().unwrap()]).output().await.unwrap();
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("no connections configured"));
    let export = command(&["export", "--entity", "order", "--format", "csv", "--config", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(export.status.success());
    assert_eq!(String::from_utf8_lossy(&export.stdout).lines().count(), 1, "header only");
    let unknown =
        command(&["export", "--entity", "invoice", "--config", config.to_str().unwrap()]).output().await.unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown entity \"invoice\""));
}

#[tokio::test]
async fn help_and_version_explain_the_tool() {
    let help = command(&["--help"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for word in
        ["run", "sync", "check", "status", "export", "metrics", "dlq", "conflicts", "demo", "simulate", "CRMSYNC__"]
    {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    let version = command(&["--version"]).output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("crmsync {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_syncs_three_crms_to_a_fixed_point_and_prints_the_metrics() {
    let output = command(&["demo", "--once"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("second sync pass: 0 records pushed"), "{stdout}");
    assert!(
        stdout.contains("known in several CRMs") && stdout.contains("efficiency") && stdout.contains("channel mix"),
        "{stdout}"
    );
    let first_pass: Vec<&str> =
        stdout.lines().skip_while(|line| !line.starts_with("first sync pass")).skip(2).take(12).collect();
    assert_eq!(first_pass.len(), 12);
    for row in first_pass {
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[5], "0", "records rejected in the demo: {row}");
        assert_eq!(columns.last().copied(), Some("ok"), "{row}");
    }
}

/// `crmsync bench` end to end on a small world: three simulator processes, a fresh store, and the
/// call-count bars it reports (no timing is asserted; speed and memory are what it prints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_syncs_a_shared_world_into_one_record_per_customer_and_counts_the_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut bench = command(&["bench", "--records", "400", "--json", "--data-dir"]);
    bench.arg(dir.path().join("bench")).kill_on_drop(true);
    let output = bench.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let world = report["world_records"].as_u64().unwrap();
    // Customers, leads, deals and orders held by two or three CRMs become one record each.
    assert_eq!(report["canonical_records"].as_u64(), Some(world), "{report:#}");
    assert!(report["records_pulled"].as_u64().unwrap() > world, "some records live in several CRMs");
    let full = report["full_pass"].as_array().unwrap();
    assert_eq!(full.len(), 12, "three connections × four entities");
    for row in full {
        assert!(row["api_calls"].as_u64() >= row["minimum_data_calls"].as_u64(), "{row}");
    }
    // An incremental pass with nothing changed: one delta/SOQL call per entity for Dataverse and
    // Salesforce; Zoho re-reads its overlap window (one page here) and asks for deleted records.
    for row in report["incremental_calls"].as_array().unwrap() {
        let expected = if row["connection"] == "zoho" { 2 } else { 1 };
        assert_eq!(row["api_calls"].as_u64(), Some(expected), "{row}");
        assert_eq!(row["records"].as_u64(), Some(0), "nothing changed, nothing delivered: {row}");
    }
    assert!(report["memory"]["peak_mib"].as_f64().unwrap() > 0.0);
    assert!(report["metrics_all_scopes_seconds"].is_number(), "{report:#}");
}
