//! Third-party clients against the real `crmsync simulate`: simple-salesforce (unchanged, from PyPI)
//! reads exactly the seeded records, full and then incrementally after some of them change.
//!
//! The client lives in a virtualenv `.ci/run` creates (`target/third-party`, or the interpreter named
//! by `CRMSYNC_THIRD_PARTY_PYTHON`). CI always has it and the test requires it there (`CI` set); a
//! developer machine without it is told how to make it and the test stops early.
//! `tests/third_party/salesforce_clients.sh` runs simple-salesforce, the Singer tap-salesforce and
//! Airbyte's source-salesforce by hand.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::binary;

fn python() -> PathBuf {
    std::env::var_os("CRMSYNC_THIRD_PARTY_PYTHON")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/third-party/bin/python"), PathBuf::from)
}

/// Returns the interpreter when simple-salesforce imports with it.
async fn simple_salesforce() -> Option<PathBuf> {
    let python = python();
    let status = Command::new(&python)
        .args(["-c", "import simple_salesforce"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .ok()?;
    status.success().then_some(python)
}

#[tokio::test]
async fn simple_salesforce_reads_exactly_the_seeded_records_full_then_incremental() {
    let Some(python) = simple_salesforce().await else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide simple-salesforce in {} (see .ci/run)",
            python().display()
        );
        eprintln!(
            "simple-salesforce is not installed at {}: `python3 -m venv target/third-party && \
             target/third-party/bin/pip install simple-salesforce` to run this test",
            python().display()
        );
        return;
    };
    let mut simulator = Command::new(binary())
        .args(["simulate", "salesforce", "--port", "0", "--records", "250", "--seed", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("crmsync simulate starts");
    let stdout = simulator.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut base_url = None;
    while let Some(line) = lines.next_line().await.expect("simulate prints") {
        if let Some(rest) = line.split_once("listening on ").map(|(_, rest)| rest) {
            base_url = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let base_url = base_url.expect("simulate prints its address");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/third_party/simple_salesforce_check.py");
    let output = Command::new(&python).arg(&script).arg(&base_url).output().await.expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let reports: Vec<serde_json::Value> =
        stdout.lines().map(|line| serde_json::from_str(line).expect("one JSON line per object")).collect();
    assert_eq!(reports.len(), 4, "{stdout}");
    for report in &reports {
        assert_eq!(report["ok"], true, "{report}");
        assert!(report["full"].as_u64().is_some_and(|full| full > 0), "{report}");
        assert_eq!(report["full"], report["seeded"], "{report}");
        assert_eq!(report["incremental"], 3, "{report}");
    }
    simulator.start_kill().expect("simulate stops");
    let _ = simulator.wait().await;
}
