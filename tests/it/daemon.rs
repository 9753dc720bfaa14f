//! The daemon (`crmsync run`) as an operator and a CRM see it: webhooks, REST API, Prometheus,
//! probes, `status` while the daemon holds the store, and a clean SIGTERM.

use std::collections::BTreeSet;

use crmsync_connectors::salesforce::sim;
use crmsync_connectors::sim::FaultSettings;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{Env, accounts, bound_ports, ok, salesforce, signal};

fn outbound_message(secret_org: &str, stamp: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{secret_org}</OrganizationId><Notification><Id>04l1</Id><sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><sf:Id>006999999999999AAA</sf:Id><sf:Name>Webhook Deal</sf:Name><sf:StageName>Negotiation/Review</sf:StageName><sf:CloseDate>2026-12-01</sf:CloseDate><sf:SystemModstamp>{stamp}</sf:SystemModstamp></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_webhooks_the_api_prometheus_and_status_then_stops_cleanly() {
    let simulator = salesforce(accounts(50), FaultSettings::default(), None).await;
    let env = Env::new(&[("sf", &simulator.base_url())], "[api]\ntoken = { env = \"CRMSYNC_TEST_API_TOKEN\" }\n");
    let mut command = env.command(&["run"]);
    command
        .env("CRMSYNC_TEST_API_TOKEN", "t0ken-for-tests")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped());
    let mut daemon = command.kill_on_drop(true).spawn().unwrap();
    let mut logs = BufReader::new(daemon.stderr.take().unwrap()).lines();
    // Ready once it listens and the first account pull pass is logged (the accounts are stored).
    let (mut listening, mut pulled) = (None, false);
    let mut early = Vec::new();
    while let Some(line) = logs.next_line().await.unwrap() {
        assert!(!line.contains("t0ken-for-tests") && !line.contains(sim::CLIENT_SECRET), "a secret was logged: {line}");
        listening = listening.or_else(|| bound_ports(&line));
        pulled |= line.contains("pull pass") && line.contains("account");
        early.push(line);
        if listening.is_some() && pulled {
            break;
        }
    }
    let (listen, admin) = listening.expect("the daemon logs the addresses it listens on");
    // Commands run next (`status`) reach the daemon through the configuration.
    env.point_at((listen, admin));
    // Keep draining the log so the daemon never blocks on a full pipe (kept for the access log).
    let drained = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = logs.next_line().await {
            lines.push(line);
        }
        lines
    });
    let http = reqwest::Client::new();
    let public = format!("http://127.0.0.1:{listen}");
    let admin_url = format!("http://127.0.0.1:{admin}");
    assert_eq!(http.get(format!("{admin_url}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{admin_url}/readyz")).send().await.unwrap().status(), 200);

    // A forged delivery is refused and stores nothing.
    let body = outbound_message(sim::ORGANIZATION_ID, "2026-11-20T10:00:00.000+0000");
    let forged = http.post(format!("{public}/webhooks/sf?secret=guess")).body(body.clone()).send().await.unwrap();
    assert_eq!(forged.status(), 401);
    let forged_id = forged.headers()["x-request-id"].to_str().unwrap().to_owned();
    let error: Value = forged.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unauthenticated");
    assert_eq!(http.post(format!("{public}/webhooks/nope")).body("x").send().await.unwrap().status(), 404);
    // A real one is acknowledged with the SOAP ack only once it is durable.
    let accepted =
        http.post(format!("{public}/webhooks/sf?secret={}", sim::WEBHOOK_SECRET)).body(body).send().await.unwrap();
    assert_eq!(accepted.status(), 200);
    assert!(accepted.text().await.unwrap().contains("<Ack>true</Ack>"));

    // The API needs the token, and then shows the delivered deal.
    assert_eq!(http.get(format!("{public}/api/v1/opportunities")).send().await.unwrap().status(), 401);
    let deals: Value = http
        .get(format!("{public}/api/v1/opportunities"))
        .bearer_auth("t0ken-for-tests")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: BTreeSet<String> = deals["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|record| record["data"]["fields"]["name"].as_str().map(str::to_owned))
        .collect();
    assert!(names.contains("Webhook Deal"), "{deals}");
    let metrics: Value = http
        .get(format!("{public}/api/v1/metrics"))
        .bearer_auth("t0ken-for-tests")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metrics["scope"], "unified");
    assert!(metrics["funnel"].as_array().unwrap().len() == 7, "{metrics}");
    // An inverted window is a mistake (400), a far end of time is not, and a date is 00:00 UTC.
    let window =
        |query: &str| http.get(format!("{public}/api/v1/metrics?{query}")).bearer_auth("t0ken-for-tests").send();
    let inverted = window("since=2026-11-01&until=2026-10-01").await.unwrap();
    assert_eq!(inverted.status(), 400);
    let error: Value = inverted.json().await.unwrap();
    assert_eq!(error["error"]["code"], "bad_request", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("must be before until"), "{error}");
    let far = window("since=2026-10-01&until=9999-12-31T23:59:59Z").await.unwrap();
    assert_eq!(far.status(), 200);
    let far: Value = far.json().await.unwrap();
    assert_eq!(far["since"].as_str(), Some("2026-10-01T00:00:00Z"), "{far}");
    assert!(
        far["until"].as_str().unwrap().starts_with("9999-12-30T"),
        "clamped to the last representable instant: {far}"
    );

    // Prometheus text parses, and the operational metrics of a pull and a webhook are there.
    let exposition = http.get(format!("{admin_url}/metrics")).send().await.unwrap().text().await.unwrap();
    let names = series_names(&exposition);
    for expected in [
        "crmsync_pull_records_total",
        "crmsync_api_calls_total",
        "crmsync_webhook_deliveries_total",
        "crmsync_outbox_depth",
        "crmsync_dead_letters",
        "crmsync_store_size_bytes",
        "crmsync_api_budget_used",
        "crmsync_vendor_api_usage",
        "crmsync_token_refreshes_total",
        "crmsync_ingest_queue_depth",
        "crmsync_commit_seconds_bucket",
        "crmsync_kpi_sales_amount",
    ] {
        assert!(names.contains(expected), "{expected} missing from /metrics:\n{exposition}");
    }

    // `status` works while the daemon holds the store (through the admin listener).
    let output =
        env.command(&["status", "--json"]).env("CRMSYNC_TEST_API_TOKEN", "t0ken-for-tests").output().await.unwrap();
    let status: Value = serde_json::from_str(&ok(output)).unwrap();
    assert_eq!(status["connections"][0]["connection"], "sf");
    assert!(!status.to_string().contains(sim::REFRESH_TOKEN), "status must not show secrets");

    signal(&daemon, "TERM").await;
    let exit = daemon.wait().await.unwrap();
    assert!(exit.success(), "SIGTERM must exit 0, got {exit}");

    // The access log: one JSON line per answer, fields at the top level, the request's span (method,
    // path, request id) attached, and never the query string (the webhook secret is there).
    let mut lines = early;
    lines.extend(drained.await.unwrap());
    for line in &lines {
        assert!(!line.contains("secret=") && !line.contains(sim::WEBHOOK_SECRET), "a secret was logged: {line}");
    }
    let events: Vec<Value> = lines.iter().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let forged_line = events
        .iter()
        .find(|event| event["message"] == "request" && event["span"]["request_id"] == forged_id.as_str())
        .unwrap_or_else(|| panic!("no access-log line for request {forged_id}:\n{}", lines.join("\n")));
    assert_eq!(forged_line["status"], 401, "{forged_line}");
    assert_eq!(forged_line["span"]["path"], "/webhooks/sf", "{forged_line}");
    assert_eq!(forged_line["span"]["method"], "POST", "{forged_line}");
    assert!(forged_line["latency_ms"].is_number(), "{forged_line}");
    // Pull passes log with their connection and entity at the top level.
    assert!(
        events.iter().any(|event| event["message"] == "pull pass" && event["connection"] == "sf"),
        "no pull pass line with top-level fields"
    );
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_that_exist() {
    let dashboard: Value = serde_json::from_str(include_str!("../../config/grafana/crmsync.json")).unwrap();
    let known: BTreeSet<&str> =
        crmsync::telemetry::OPERATIONAL_METRICS.iter().chain(crmsync::metrics::KPI_METRICS).copied().collect();
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expression = target["expr"].as_str().unwrap();
            for word in expression.split(|character: char| !(character.is_ascii_alphanumeric() || character == '_')) {
                if word.starts_with("crmsync_") {
                    let base = word.trim_end_matches("_bucket");
                    assert!(known.contains(base), "dashboard uses unknown metric {word}");
                    used += 1;
                }
            }
        }
    }
    assert!(used >= 20, "the dashboard should chart the documented metrics");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_daemon_reports_ready_and_stopping() {
    let simulator = salesforce(accounts(5), FaultSettings::default(), None).await;
    let env = Env::new(&[("sf", &simulator.base_url())], "");
    let socket_path = env.config.with_file_name("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut daemon = env.command(&["run"]).env("NOTIFY_SOCKET", &socket_path).kill_on_drop(true).spawn().unwrap();
    let mut buffer = vec![0; 256];
    let length = socket.recv(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..length]).contains("READY=1"));
    signal(&daemon, "TERM").await;
    let length = socket.recv(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..length]).contains("STOPPING=1"));
    assert!(daemon.wait().await.unwrap().success());
}

/// Parses a Prometheus exposition (every sample line must be `series value` with a number) and
/// returns the sample names.
fn series_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line}"));
        names.insert(series.split('{').next().unwrap().to_owned());
    }
    names
}

fn gauge(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Issue 8 "done when": after a sync against the three simulators, the CLI, the REST API and the
/// Prometheus gauges show the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sync_of_three_crms_the_cli_the_api_and_prometheus_show_the_same_numbers() {
    use crmsync_connectors::dynamics365::sim::{self as d365, Dynamics365SimOptions};
    use crmsync_connectors::sim::{World, WorldSize};
    use crmsync_connectors::zoho::sim::{self as zoho, ZohoSimOptions};

    let world = World::generate(
        4,
        WorldSize { accounts: 15, leads: 20, opportunities: 15, orders: 30 },
        crmsync_connectors::canonical::Timestamp::now(),
        true,
    );
    let salesforce = salesforce(world.clone(), FaultSettings::default(), None).await;
    let zoho = zoho::start(ZohoSimOptions::with_world(world.clone())).await.unwrap();
    let dynamics = d365::start(Dynamics365SimOptions::with_world(world)).await.unwrap();
    // A daily budget on each, so the budget-limit series has something to report.
    let budget = "rate_limit = { daily_budget = 100000 }\n";
    let env = Env::with_connections(
        &[
            sim::connection_toml("salesforce", &salesforce.base_url()) + budget,
            zoho::connection_toml("zoho", &zoho.base_url()) + budget,
            d365::connection_toml("dynamics365", &dynamics.base_url()) + budget,
        ],
        "[[routes]]\nentity = \"*\"\nfrom = [\"*\"]\nto = [\"*\"]\n\n[api]\ntoken = { env = \"CRMSYNC_TEST_API_TOKEN\" }\n\n\
         [metrics]\nreporting_currency = \"EUR\"\n\n[metrics.fx]\nUSD = \"0.92\"\n",
    );
    let run = |args: Vec<&str>| {
        let mut command = env.command(&args);
        command.env("CRMSYNC_TEST_API_TOKEN", "t0ken-for-tests");
        async move { ok(command.output().await.unwrap()) }
    };
    run(vec!["sync"]).await;
    let window = ["--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z"];
    let cli: Value = serde_json::from_str(&run([&["metrics", "--json"][..], &window].concat()).await).unwrap();
    assert!(cli["totals"]["orders"].as_u64().unwrap() > 0, "{cli:#}");
    let by_date: Value =
        serde_json::from_str(&run(vec!["metrics", "--json", "--since", "2000-01-01", "--until", "2100-01-01"]).await)
            .unwrap();
    assert_eq!(by_date, cli, "a date is 00:00 UTC of that day");
    let per_crm: Value =
        serde_json::from_str(&run([&["metrics", "--json", "--scope", "zoho"][..], &window].concat()).await).unwrap();
    assert_eq!(per_crm["scope"], "zoho");

    let mut command = env.command(&["run"]);
    command
        .env("CRMSYNC_TEST_API_TOKEN", "t0ken-for-tests")
        .env("RUST_LOG", "crmsync=debug")
        .stderr(std::process::Stdio::piped());
    let mut daemon = command.kill_on_drop(true).spawn().unwrap();
    let mut logs = BufReader::new(daemon.stderr.take().unwrap()).lines();
    // Up, KPIs published, and each connection has finished a pull pass of its own (so each has called
    // its vendor at least once).
    let (mut listening, mut published) = (None, false);
    let mut pulled: BTreeSet<&str> = BTreeSet::new();
    while let Some(line) = logs.next_line().await.unwrap() {
        listening = listening.or_else(|| bound_ports(&line));
        published |= line.contains("KPI gauges published");
        for name in ["salesforce", "zoho", "dynamics365"] {
            if line.contains("pull pass") && line.contains(&format!("\"connection\":\"{name}\"")) {
                pulled.insert(name);
            }
        }
        if listening.is_some() && published && pulled.len() == 3 {
            break;
        }
    }
    let (listen, admin) = listening.expect("the daemon logs the addresses it listens on");
    tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });

    let http = reqwest::Client::new();
    let api = |query: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{listen}/api/v1/metrics{query}"))
                .bearer_auth("t0ken-for-tests")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let fixed = api(format!("?since={}&until={}", window[1], window[3])).await;
    for part in ["kpis", "totals", "funnel", "channel_mix", "pipeline_value", "win_rate"] {
        assert_eq!(fixed[part], cli[part], "{part}: the API and the CLI differ");
    }
    let zoho_api = api(format!("?scope=zoho&since={}&until={}", window[1], window[3])).await;
    assert_eq!(zoho_api["totals"], per_crm["totals"]);

    // Prometheus publishes the default window (`metrics.window` up to now), as the API's default does.
    let current = api(String::new()).await;
    let exposition = http.get(format!("http://127.0.0.1:{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    for (name, field) in [("crmsync_kpi_satisfaction", "satisfaction"), ("crmsync_kpi_coverage", "coverage")] {
        let expected: f64 = current["kpis"][field].as_str().unwrap().parse().unwrap();
        let published = gauge(&exposition, &format!("{name}{{scope=\"unified\"}}")).unwrap_or_else(|| {
            panic!("{name} missing:\n{exposition}");
        });
        assert!((published - expected).abs() < 1e-9, "{name}: {published} vs the API's {expected}");
    }
    let sales: f64 = current["totals"]["sales_amount"].as_str().unwrap().parse().unwrap();
    let published = gauge(&exposition, "crmsync_kpi_sales_amount{scope=\"unified\"}").unwrap();
    assert!((published - sales).abs() < 1e-6, "sales amount {published} vs {sales}");

    // The exposition parses, and every documented metric is in it, operational and sales alike.
    let names: BTreeSet<String> = series_names(&exposition)
        .iter()
        .map(|name| name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").to_owned())
        .collect();
    for expected in crmsync::telemetry::OPERATIONAL_METRICS.iter().chain(crmsync::metrics::KPI_METRICS) {
        assert!(names.contains(*expected), "{expected} missing from /metrics after a sync:\n{exposition}");
    }
    // Per connection too, with the label sets the dashboard queries.
    for name in ["salesforce", "zoho", "dynamics365"] {
        for series in [
            format!("crmsync_kpi_satisfaction{{scope=\"{name}\"}}"),
            format!("crmsync_rate_limit_waits_total{{connection=\"{name}\"}}"),
            format!("crmsync_api_budget_limit{{connection=\"{name}\"}}"),
        ] {
            assert!(gauge(&exposition, &series).is_some(), "{series} missing:\n{exposition}");
        }
    }

    signal(&daemon, "TERM").await;
    assert!(daemon.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_with_the_reason_while_a_connection_fails_and_healthz_stays_ok() {
    // A loopback port nothing listens on: every call to this "CRM" is refused.
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let env = Env::new(&[("sf", &unreachable)], "");
    // Unready as soon as a pull has failed (a failure older than 0 s), and give up on a call quickly.
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("log_format = \"json\"\n", "log_format = \"json\"\nunready_after = \"0s\"\n")
        .replace("give_up_after = \"60s\"", "give_up_after = \"100ms\"");
    std::fs::write(&env.config, config).unwrap();
    let mut command = env.command(&["run"]);
    command.env("RUST_LOG", "info").stderr(std::process::Stdio::piped());
    let mut daemon = command.kill_on_drop(true).spawn().unwrap();
    let mut logs = BufReader::new(daemon.stderr.take().unwrap()).lines();
    // The writer commits a failure before the loop retries, so the second failure logged for the
    // accounts means the first one is in the store.
    let (mut failures, mut listening) = (0, None);
    while let Some(line) = logs.next_line().await.unwrap() {
        listening = listening.or_else(|| bound_ports(&line));
        if line.contains("pull failed") && line.contains("\"entity\":\"account\"") {
            failures += 1;
            if failures == 2 {
                break;
            }
        }
    }
    assert_eq!(failures, 2, "the daemon stopped before its pulls failed twice");
    let (_, admin) = listening.expect("the daemon logs the addresses it listens on");
    tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });
    let http = reqwest::Client::new();
    let admin_url = format!("http://127.0.0.1:{admin}");
    let health = http.get(format!("{admin_url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness does not depend on the CRMs");
    let ready = http.get(format!("{admin_url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], false, "{body}");
    let reasons = body["reasons"].as_array().unwrap();
    let account = reasons
        .iter()
        .find(|reason| reason["check"] == "connection" && reason["connection"] == "sf" && reason["entity"] == "account")
        .unwrap_or_else(|| panic!("no reason names sf × account: {body}"));
    assert!(!account["message"].as_str().unwrap().is_empty(), "{body}");
    assert!(account["failing_seconds"].is_u64(), "{body}");
    assert!(!body.to_string().contains(sim::REFRESH_TOKEN), "a secret in /readyz: {body}");

    signal(&daemon, "TERM").await;
    assert!(daemon.wait().await.unwrap().success());
}
