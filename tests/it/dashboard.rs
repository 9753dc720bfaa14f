//! The dashboard in a real browser: `crmsync demo` runs (three simulated CRMs, the daemon, the
//! page), headless Chromium (Debian's `chromium`, which `.ci/run` installs) loads `GET /`, signs in
//! with the token the demo printed, and the test checks that the KPI, funnel and channel-mix figures
//! on the page are `/api/v1/metrics`'s, creates an order from the page's form, moves it to
//! `confirmed` and then `shipped` with the page's buttons, sees it arrive once in each of the demo's
//! three simulated CRMs, and keeps a screenshot at `target/tmp/dashboard.png` (`CARGO_TARGET_TMPDIR`).
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
//! separated by NUL bytes on file descriptors 3 and 4, here two FIFOs), so no WebSocket client, npm
//! package or browser download is needed. Without Chromium the test fails under CI (`CI` set) and is
//! skipped with a notice elsewhere, so `cargo test` still works on a machine with only Rust.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::orders::eventually;
use crate::support::binary;

fn chromium() -> Option<PathBuf> {
    let candidates = ["chromium", "chromium-browser", "google-chrome"];
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in candidates {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// One headless Chromium driven over its DevTools pipe.
struct Browser {
    child: std::process::Child,
    commands: std::fs::File,
    replies: mpsc::UnboundedReceiver<Value>,
    pending: HashMap<u64, Value>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    fn launch(executable: &Path, dir: &Path) -> Self {
        let (to_browser, from_browser) = (dir.join("cdp-in"), dir.join("cdp-out"));
        for fifo in [&to_browser, &from_browser] {
            let made = std::process::Command::new("mkfifo").arg(fifo).status().unwrap();
            assert!(made.success(), "mkfifo failed");
        }
        // The flags headless Chromium needs on these machines (no sandbox as root, no background
        // networking against a closed network), a fresh profile, and the DevTools pipe on fds 3/4.
        let script = r#"exec "$0" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync \
            --disable-dev-shm-usage --window-size=1280,2200 --user-data-dir="$1" \
            --remote-debugging-pipe about:blank 3<"$2" 4>"$3""#;
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(executable)
            .arg(dir.join("profile"))
            .arg(&to_browser)
            .arg(&from_browser)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The shell opens fd 3 (our write end) first, then fd 4 (our read end): open in that order.
        let commands = std::fs::OpenOptions::new().write(true).open(&to_browser).unwrap();
        let events = std::fs::File::open(&from_browser).unwrap();
        let (sender, replies) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(events);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|read| read > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        Self { child, commands, replies, pending: HashMap::new(), next_id: 1, session: None }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        self.commands.flush().unwrap();
        loop {
            if let Some(reply) = self.pending.remove(&id) {
                assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                return reply["result"].clone();
            }
            let reply = tokio::time::timeout(Duration::from_secs(60), self.replies.recv())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("chromium closed its DevTools pipe");
            if let Some(reply_id) = reply.get("id").and_then(Value::as_u64) {
                self.pending.insert(reply_id, reply);
            }
        }
    }

    /// Evaluates JavaScript in the page and returns its (JSON) value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await;
        assert!(result.get("exceptionDetails").is_none(), "script failed: {result}");
        result["result"]["value"].clone()
    }

    /// Polls a JavaScript condition until it is truthy and returns its value.
    async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        for _ in 0..600 {
            let value = self.eval(expression).await;
            if !(value.is_null() || value == json!(false) || value == json!("")) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed {what}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The simulated CRMs' base URLs from the demo's first line
/// (`crmsync demo: simulated CRMs salesforce (Salesforce) at http://…, zoho (Zoho CRM) at http://…, …`).
fn simulator_urls(line: &str) -> Vec<String> {
    line.split_whitespace()
        .filter(|word| word.starts_with("http://"))
        .map(|word| word.trim_end_matches([',', ';']).to_owned())
        .collect()
}

/// How many live orders each simulator holds (its `/__sim/stats`), by the vendor's name for orders.
async fn sim_orders(http: &reqwest::Client, simulators: &[String]) -> Vec<(String, u64)> {
    let mut counts = Vec::new();
    for base in simulators {
        let stats: Value = http.get(format!("{base}/__sim/stats")).send().await.unwrap().json().await.unwrap();
        let (name, count) = ["Order", "Sales_Orders", "salesorders"]
            .iter()
            .find_map(|name| Some((*name, stats["records"][name].as_u64()?)))
            .unwrap_or_else(|| panic!("{base} counts no orders: {stats}"));
        counts.push((name.to_owned(), count));
    }
    counts
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |byte: u8| match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {byte}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|byte| *byte != b'=').map(value).collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut group = 0u32;
        for (index, digit) in chunk.iter().enumerate() {
            group |= u32::from(*digit) << (18 - 6 * index);
        }
        let group = group.to_be_bytes();
        bytes.extend_from_slice(&group[1..chunk.len()]);
    }
    bytes
}

/// The text a figure has on the page for an API value (`null` shows as n/a).
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "n/a".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_of_a_running_demo_shows_the_api_figures_and_creates_and_ships_an_order_to_three_crms() {
    let Some(executable) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "chromium is not installed (.ci/run installs Debian's chromium)");
        eprintln!("skipped: no chromium on PATH (.ci/run installs it; apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Port 0: the demo binds one the system picks and prints the URLs with it.
    let mut demo = tokio::process::Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("demo"))
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The demo prints the dashboard URL, the API URL, a generated token and the admin URL.
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let (mut dashboard, mut token, mut admin, mut simulators) = (None, None, None, Vec::new());
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("crmsync demo: simulated CRMs") {
            simulators = simulator_urls(&line);
        }
        if let Some(url) = line.trim().strip_prefix("dashboard:") {
            dashboard = Some(url.trim().to_owned());
        }
        if let Some(value) = line.trim().strip_prefix("API token:") {
            token = Some(value.trim().to_owned());
        }
        if let Some(url) = line.trim().strip_prefix("admin:") {
            admin = url.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (dashboard, token) = (dashboard.expect("demo printed the dashboard URL"), token.expect("demo printed a token"));
    let admin = admin.expect("demo printed the admin URL");
    let listen = dashboard
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("the dashboard URL is http://ADDRESS/: {dashboard}"))
        .to_owned();
    assert_ne!(listen.parse::<std::net::SocketAddr>().expect("an address").port(), 0, "the bound port is printed");
    assert_eq!(simulators.len(), 3, "the demo names its three simulated CRMs");
    let http = reqwest::Client::new();
    let api = format!("http://{listen}/api/v1");
    eventually("the demo's API", || async {
        let response = http.get(format!("{api}/status")).bearer_auth(&token).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    // The admin URL answers, and `crmsync status --config <the demo's config>` reaches the running demo
    // (its store is the demo's, so status asks the API with the token the config names).
    let metrics_text = http.get(&admin).send().await.unwrap().text().await.unwrap();
    assert!(metrics_text.contains("crmsync_"), "the admin URL serves Prometheus metrics");
    let status = tokio::process::Command::new(binary())
        .args(["status", "--json", "--config"])
        .arg(dir.path().join("demo").join("demo.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["connections"].as_array().unwrap().len(), 3, "{status}");

    let mut browser = Browser::launch(&executable, dir.path());
    let target = browser.call("Target.createTarget", json!({"url": dashboard})).await;
    let attached =
        browser.call("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
    browser.session = attached["sessionId"].as_str().map(str::to_owned);

    // Without the token the page shows the sign-in form and no figures.
    browser
        .wait_for("the sign-in form", "document.readyState === 'complete' && !!document.getElementById('token')")
        .await;
    assert_eq!(browser.eval("document.getElementById('board').hidden").await, json!(true));
    assert_eq!(browser.eval("document.querySelectorAll('[data-kpi]').length").await, json!(0));
    browser
        .eval(&format!(
            "document.getElementById('token').value = {}; document.getElementById('sign-in').click(); true",
            json!(token)
        ))
        .await;
    browser.wait_for("the figures", "document.body.dataset.loaded === 'true'").await;
    assert_eq!(browser.eval("sessionStorage.getItem('crmsync.api_token')").await, json!(token));

    // The figures on the page are the API's for the same window.
    let page = browser
        .eval(
            r#"(() => {
                const cells = (row, field) => row.querySelector('[data-field=' + field + ']');
                return {
                    since: document.getElementById('window').dataset.since,
                    until: document.getElementById('window').dataset.until,
                    kpis: Object.fromEntries([...document.querySelectorAll('[data-kpi]')].map((node) => [node.dataset.kpi, node.dataset.value])),
                    kpi_texts: Object.fromEntries([...document.querySelectorAll('[data-kpi]')].map((node) => [node.dataset.kpi, node.textContent])),
                    funnel: [...document.querySelectorAll('#funnel tbody tr')].map((row) => ({
                        stage: row.dataset.stage, reached: cells(row, 'reached').textContent, conversion: cells(row, 'conversion').dataset.value })),
                    channels: [...document.querySelectorAll('#channels tbody tr')].map((row) => ({
                        channel: row.dataset.channel, orders: cells(row, 'orders').textContent, order_share: cells(row, 'order_share').dataset.value,
                        amount: cells(row, 'amount').dataset.value, amount_text: cells(row, 'amount').textContent, amount_share: cells(row, 'amount_share').dataset.value }))
                };
            })()"#,
        )
        .await;
    let metrics: Value = http
        .get(format!("{api}/metrics"))
        .query(&[("since", page["since"].as_str().unwrap()), ("until", page["until"].as_str().unwrap())])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (name, value) in [
        ("efficiency", &metrics["kpis"]["efficiency"]),
        ("coverage", &metrics["kpis"]["coverage"]),
        ("satisfaction", &metrics["kpis"]["satisfaction"]),
        ("avg_sales_cycle_days", &metrics["kpis"]["avg_sales_cycle_days"]),
        ("win_rate", &metrics["win_rate"]),
    ] {
        assert_eq!(page["kpis"][name], json!(shown(value)), "KPI {name}");
        // What a person reads is the same figure, grouped and rounded to two decimals (a percentage for
        // the win rate), not the API's 28 significant digits.
        let text = page["kpi_texts"][name].as_str().unwrap();
        let readable = text == "n/a"
            || text
                .trim_end_matches('%')
                .trim_start_matches('-')
                .split_once('.')
                .is_none_or(|(_, decimals)| decimals.len() <= 2);
        assert!(
            readable && text.chars().all(|c| c.is_ascii_digit() || ",.-%n/a".contains(c)),
            "KPI {name} shown as {text:?}"
        );
    }
    assert!(metrics["totals"]["orders"].as_u64().unwrap() > 0, "the demo has orders in the window: {metrics}");
    let funnel = metrics["funnel"].as_array().unwrap();
    assert_eq!(page["funnel"].as_array().unwrap().len(), funnel.len());
    for (shown_stage, stage) in page["funnel"].as_array().unwrap().iter().zip(funnel) {
        assert_eq!(shown_stage["stage"], stage["stage"]);
        assert_eq!(shown_stage["reached"], json!(stage["reached"].to_string()), "funnel {}", stage["stage"]);
        assert_eq!(shown_stage["conversion"], json!(shown(&stage["conversion_from_previous"])));
    }
    let channels = metrics["channel_mix"].as_array().unwrap();
    assert_eq!(page["channels"].as_array().unwrap().len(), channels.len());
    for (shown_channel, channel) in page["channels"].as_array().unwrap().iter().zip(channels) {
        assert_eq!(shown_channel["channel"], channel["channel"]);
        assert_eq!(shown_channel["orders"], json!(channel["orders"].to_string()), "channel {}", channel["channel"]);
        assert_eq!(shown_channel["order_share"], json!(shown(&channel["order_share"])));
        assert_eq!(shown_channel["amount"], json!(shown(&channel["amount"])));
        // Money as a person reads it: grouped, two decimals.
        let amount_text = shown_channel["amount_text"].as_str().unwrap();
        assert!(
            amount_text.split_once('.').is_some_and(|(_, cents)| cents.len() == 2)
                && amount_text.chars().all(|c| c.is_ascii_digit() || ",.-".contains(c)),
            "channel {} amount shown as {amount_text:?}",
            channel["channel"]
        );
        assert_eq!(shown_channel["amount_share"], json!(shown(&channel["amount_share"])));
    }

    // An order made with the page's form.
    let orders_before = sim_orders(&http, &simulators).await;
    // The product is one the page offers from the CRMs' catalogue (Salesforce and Zoho refuse others).
    let product = browser
        .wait_for("the product catalogue", "document.querySelector('#products option')?.value")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .eval(
            "document.getElementById('order-product').value = document.querySelector('#products option').value; \
             document.getElementById('order-quantity').value = '3'; \
             document.getElementById('order-price').value = '7.25'; \
             document.getElementById('order-channel').value = 'ecommerce'; \
             document.getElementById('order-create').click(); true",
        )
        .await;
    let created =
        browser.wait_for("the created order", "document.getElementById('order-result').dataset.created").await;
    let id = created.as_str().unwrap().to_owned();
    let order: Value =
        http.get(format!("{api}/orders/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(order["data"]["fields"]["lines"][0]["product"], json!(product));
    assert_eq!(order["data"]["fields"]["total_amount"], "21.75");
    assert_eq!(order["data"]["fields"]["channel"], "ecommerce");
    assert_eq!(order["data"]["fields"]["status"], "draft");

    // Its status changed with the page's button.
    let button = format!("document.querySelector('button[data-order=\"{id}\"][data-status=\"confirmed\"]')");
    browser.wait_for("the order's confirm button", &format!("!!{button}")).await;
    browser.eval(&format!("{button}.click(); true")).await;
    eventually("the order to be confirmed", || async {
        let order: Value =
            http.get(format!("{api}/orders/{id}")).bearer_auth(&token).send().await.ok()?.json().await.ok()?;
        (order["data"]["fields"]["status"] == "confirmed").then_some(())
    })
    .await;
    browser
        .wait_for(
            "the confirmed status in the orders table",
            &format!(
                "document.querySelector('tr[data-order=\"{id}\"] [data-field=status]')?.textContent === 'confirmed'"
            ),
        )
        .await;

    // Shipped with the next button, and pushed: one new order in each simulated CRM (its copy there
    // is the link crmsync keeps), nothing dead-lettered, nothing left in an outbox.
    let button = format!("document.querySelector('button[data-order=\"{id}\"][data-status=\"shipped\"]')");
    browser.wait_for("the order's ship button", &format!("!!{button}")).await;
    browser.eval(&format!("{button}.click(); true")).await;
    browser
        .wait_for(
            "the shipped status in the orders table",
            &format!(
                "document.querySelector('tr[data-order=\"{id}\"] [data-field=status]')?.textContent === 'shipped'"
            ),
        )
        .await;
    let order = eventually("the shipped order in every CRM", || async {
        let order: Value =
            http.get(format!("{api}/orders/{id}")).bearer_auth(&token).send().await.ok()?.json().await.ok()?;
        let status: Value =
            http.get(format!("{api}/status")).bearer_auth(&token).send().await.ok()?.json().await.ok()?;
        let drained = status["connections"].as_array()?.iter().all(|c| c["outbox_depth"] == 0);
        let linked = ["salesforce", "zoho", "dynamics365"].iter().all(|connection| {
            order["links"].as_array().is_some_and(|links| links.iter().any(|link| link["connection"] == *connection))
        });
        (order["data"]["fields"]["status"] == "shipped" && drained && linked).then_some(order)
    })
    .await;
    let orders_after = sim_orders(&http, &simulators).await;
    for ((name, before), after) in orders_before.iter().zip(&orders_after) {
        assert_eq!(after.1, before + 1, "{name} holds the page's order exactly once: {order:#}");
    }
    let letters: Value = http.get(format!("{api}/dlq")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert!(!letters.to_string().contains(&id), "the order was not dead-lettered: {letters:#}");

    // The screenshot, kept as a test artifact.
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
    let png = decode_base64(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, png).unwrap();
    eprintln!("dashboard screenshot: {}", artifact.display());
}
