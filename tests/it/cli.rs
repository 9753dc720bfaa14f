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
    assert!(stdout.starts_with("configuration ok: ") && stdout.contains("example.toml (from --config)"), "{stdout}");
    assert!(stdout.contains("sf_prod (salesforce)") && !stdout.contains("example-secret-value"), "{stdout}");

    let mut bad = command(&["check", "--config"]);
    bad.arg(root().join("tests/fixtures/config/several_errors.toml")).env("SF_SECRET", "x");
    let output = bad.output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("invalid configuration (5 problems):"), "{stderr}");
    assert!(stderr.contains("several_errors.toml, from --config)"), "says which file it read: {stderr}");
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
    let version = String::from_utf8_lossy(&version.stdout);
    let prefix = format!("crmsync {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&prefix), "{version}");
    assert!(version.contains(", built 20") && version.contains(std::env::consts::ARCH), "{version}");

    let completions = command(&["completions", "bash"]).output().await.unwrap();
    let script = String::from_utf8_lossy(&completions.stdout);
    assert!(completions.status.success() && script.contains("_crmsync()") && script.contains("sync"), "{script}");
    let man = command(&["man"]).output().await.unwrap();
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success() && page.contains(".TH crmsync 1") && page.contains("CRMSYNC__"), "{page}");
}

#[tokio::test]
async fn without_a_configuration_file_commands_stop_and_say_where_they_looked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let from_env = command(&["status"]).env("CRMSYNC_CONFIG", &missing).output().await.unwrap();
    assert_eq!(from_env.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&from_env.stderr);
    assert!(stderr.contains("CRMSYNC_CONFIG") && stderr.contains("missing.toml"), "{stderr}");
    assert!(!dir.path().join("store").exists());

    let written = dir.path().join("crmsync.toml");
    std::fs::write(&written, format!("[daemon]\ndata_dir = {:?}\n", dir.path().join("store").display().to_string()))
        .unwrap();
    let check = command(&["check"]).env("CRMSYNC_CONFIG", &written).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && stdout.contains("crmsync.toml (from CRMSYNC_CONFIG)"), "{stdout}");

    // Neither flag nor variable: the default location, which a test machine does not have.
    if !std::path::Path::new("/etc/crmsync/crmsync.toml").exists() {
        for args in [&["check"][..], &["run"], &["status"]] {
            let output = command(args).env_remove("CRMSYNC_CONFIG").output().await.unwrap();
            assert_eq!(output.status.code(), Some(1), "{args:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("no configuration file") && stderr.contains("/etc/crmsync/crmsync.toml"),
                "{args:?}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn check_warns_about_what_is_valid_but_risky_and_never_prints_embedded_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client_secret");
    std::fs::write(&secret, "s3cr3t-in-a-file\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let config = dir.path().join("crmsync.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ndata_dir = {store:?}\nadmin_listen = \"0.0.0.0:9090\"\n\n\
             [connections.sf]\nkind = \"salesforce\"\nlogin_url = \"https://admin:hunter2@login.example.com\"\n\
             poll_interval = \"1m\"\n\
             auth = {{ flow = \"client_credentials\", client_id = \"abc\", client_secret = {{ file = {secret:?} }} }}\n\n\
             [connections.idle]\nkind = \"salesforce\"\n\
             auth = {{ flow = \"client_credentials\", client_id = \"abc\", client_secret = {{ file = {secret:?} }} }}\n\n\
             [[jobs]]\nname = \"pipeline\"\nconnections = [\"sf\"]\nschedule = {{ every = \"5m\" }}\n",
            store = dir.path().join("store").display().to_string(),
            secret = secret.display().to_string(),
        ),
    )
    .unwrap();
    let output = command(&["check", "--config", config.to_str().unwrap()]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "warnings do not fail check: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "warning: daemon.admin_listen: 0.0.0.0:9090 is reachable from other hosts",
        "warning: connections.sf.poll_interval: unused: [[jobs]] schedule this connection (pipeline)",
        "warning: connections.idle: no [[jobs]] entry names this connection",
        "is readable by other users (mode 0644)",
        "login https://[redacted]@login.example.com/",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    assert!(!stdout.contains("hunter2") && !stdout.contains("s3cr3t"), "{stdout}");
}

#[tokio::test]
async fn export_into_a_closed_pipe_exits_quietly() {
    use tokio::io::AsyncBufReadExt;

    let simulator = crate::support::salesforce(
        crate::support::accounts(400),
        crmsync_connectors::sim::FaultSettings::default(),
        None,
    )
    .await;
    let env = crate::support::Env::new(&[("sf", &simulator.base_url())], "");
    crate::support::ok(env.run(&["sync"]).await);
    // 400 accounts as JSON lines are far more than a pipe holds, so the writer meets the closed end.
    let mut export = env.command(&["export", "--entity", "account"]);
    export.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = export.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.next_line().await.unwrap().unwrap().starts_with('{'));
    drop(lines);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "nothing to report");
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
    let mut bench = command(&["bench", "--records", "400", "--store-cache-mib", "8", "--json", "--data-dir"]);
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
        // A pull's time is its reading of pages and its waiting for the writer (and little else).
        let parts = row["reading_seconds"].as_f64().unwrap() + row["committing_seconds"].as_f64().unwrap();
        assert!(parts <= row["seconds"].as_f64().unwrap() + 1e-9, "{row}");
    }
    // The clients' rate limit is not the connections' default 10 requests/s: the bench measures the
    // engine, and says what bound the pass (the connection it ended with, and the writer's share).
    assert_eq!(report["rate_limit_per_second"].as_u64(), Some(100_000), "{report:#}");
    let bound = &report["bound"];
    let last = bound["last_connection"].as_str().unwrap();
    assert!(["salesforce", "zoho", "dynamics365"].contains(&last), "{bound}");
    assert!(bound["writer_busy_seconds"].as_f64().unwrap() > 0.0, "the writer committed the pass: {bound}");
    let bound_by = bound["bound_by"].as_str().unwrap();
    assert!(
        bound_by == "writer" || bound_by == format!("reading {last}") || bound_by == format!("committing {last}"),
        "{bound}"
    );
    // Dataverse order lines are a table read of its own: its minimum counts them (one page of
    // orders and one of lines in a world this small).
    assert!(report["dataverse_order_lines"].as_u64().unwrap() > 0, "{report:#}");
    let dataverse_orders =
        full.iter().find(|row| row["connection"] == "dynamics365" && row["entity"] == "order").unwrap();
    assert_eq!(dataverse_orders["minimum_data_calls"].as_u64(), Some(2), "{dataverse_orders}");
    // An incremental pass with nothing changed: one delta/SOQL call per entity for Dataverse and
    // Salesforce, two for Dataverse orders (the orders' and the order lines' delta links: change
    // tracking is per table); Zoho re-reads its overlap window (one page here) and asks for
    // deleted records.
    for row in report["incremental_calls"].as_array().unwrap() {
        let dataverse_orders = row["connection"] == "dynamics365" && row["entity"] == "order";
        let expected = if row["connection"] == "zoho" || dataverse_orders { 2 } else { 1 };
        assert_eq!(row["api_calls"].as_u64(), Some(expected), "{row}");
        assert_eq!(row["records"].as_u64(), Some(0), "nothing changed, nothing delivered: {row}");
    }
    assert!(report["memory"]["peak_mib"].as_f64().unwrap() > 0.0);
    assert_eq!(report["store_cache_mib"].as_u64(), Some(8), "the measured pass used the cache asked for");
    assert!(report["metrics_all_scopes_seconds"].is_number(), "{report:#}");
    // The store-size bar needs the vendor JSON served, and the CPU split the simulators' time.
    assert!(report["vendor_json_mib"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(report["simulators_cpu_seconds"].is_number(), "{report:#}");
    assert!(!report["memory"]["curve"].as_array().unwrap().is_empty(), "memory sampled as records commit");
    // Each phase's resident set: its peak is at least what it began and ended with, and the whole
    // run's high-water mark is at least every phase's peak.
    let phases = report["memory"]["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|phase| phase["phase"].as_str().unwrap()).collect();
    assert_eq!(names.first().copied(), Some("full pass"), "{names:?}");
    assert_eq!(names.last().copied(), Some("webhooks at 1,000/s"), "{names:?}");
    assert!(names.iter().any(|name| name.starts_with("metrics")), "{names:?}");
    let high_water = report["memory"]["high_water_mib"].as_f64().unwrap();
    for phase in phases {
        let peak = phase["peak_mib"].as_f64().unwrap();
        assert!(
            peak >= phase["before_mib"].as_f64().unwrap() && peak >= phase["after_mib"].as_f64().unwrap(),
            "{phase}"
        );
        assert!(high_water >= peak, "{phase} above the high-water mark {high_water}");
    }
    // Webhook deliveries through the HTTP edge: every one answered, and a 2xx only once durable.
    let hooks = &report["webhooks"];
    assert!(hooks["deliveries"].as_u64().unwrap() > 0, "{hooks}");
    assert_eq!(hooks["failed"].as_u64(), Some(0), "{hooks}");
    assert_eq!(
        hooks["acknowledged"].as_u64().unwrap() + hooks["refused"].as_u64().unwrap(),
        hooks["deliveries"].as_u64().unwrap(),
        "{hooks}"
    );
    // They came from a load generator in a process of its own (its CPU reported beside this
    // process's), over a bounded pool of kept-alive connections.
    assert_eq!(hooks["connections"].as_u64(), Some(64), "{hooks}");
    assert!(hooks["waited_for_connection"].as_u64().unwrap() <= hooks["deliveries"].as_u64().unwrap(), "{hooks}");
    assert!(hooks["generator_cpu_seconds"].as_f64().unwrap() >= 0.0, "{hooks}");
    assert!(hooks["generator_late_p99_ms"].as_f64().unwrap() >= 0.0, "{hooks}");
    assert!(hooks["daemon_cpu_seconds"].as_f64().unwrap() >= 0.0, "{hooks}");
}
