//! Router tests: every route of the public listener and every kind of error, through the real router
//! (`oneshot`), a temporary store and a running ingest writer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use crmsync_connectors::canonical::{Account, ConnectionId, Entity, EntityData, ExternalId};
use crmsync_connectors::{Change, ChangeKind, Completeness};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::ingest::{Batch, IngestRules, Ingestor};
use crate::reconcile::{DeleteAction, Route, Rules};

const TOKEN: &str = "router-test-token";

struct Harness {
    router: Router,
    admin: Router,
    ready: Arc<AtomicBool>,
    store: Store,
    ingest: crate::ingest::IngestHandle,
    state: HttpState,
    account: String,
    _dir: tempfile::TempDir,
}

/// The connections of the router tests.
fn connection(name: &str) -> ConnectionId {
    ConnectionId::new(name)
}

/// `sf` and `zoho` routed both ways, deletes marked (orders cancelled).
fn both_ways() -> Rules {
    Rules {
        routes: vec![Route {
            entity: None,
            from: vec![connection("sf"), connection("zoho")],
            to: vec![connection("sf"), connection("zoho")],
            on_delete: DeleteAction::Mark,
        }],
        ..Rules::default()
    }
}

/// An account as a connection delivers it, modified `minute` minutes after 2026-11-01T00:00Z.
fn account_change(external_id: &str, minute: u32, name: &str, domain: Option<&str>) -> Change {
    Change {
        entity: Entity::Account,
        object: "Account".into(),
        external_id: ExternalId::new(external_id),
        modified_at: format!("2026-11-01T00:{minute:02}:00Z").parse().unwrap(),
        version: None,
        canonical_hint: None,
        kind: ChangeKind::Upsert {
            data: EntityData::Account(Account {
                name: Some(name.into()),
                domain: domain.map(str::to_owned),
                ..Account::default()
            }),
            completeness: Completeness::Full,
        },
        extra: serde_json::Map::new(),
    }
}

async fn harness_with(token: Option<&str>, rules: Rules) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (sf, zoho) = (connection("sf"), connection("zoho"));
    let (writer, ingest) = Ingestor::new(
        store.clone(),
        IngestRules { rules: Arc::new(rules), fields: Arc::new(BTreeMap::new()), superseded: Arc::default() },
        8,
    );
    tokio::spawn(writer.run());
    // A customer known in sf.
    let account = account_change("001A", 0, "Acme", None);
    ingest.submit(Batch::Delivered { connection: sf.clone(), changes: vec![account] }).await.unwrap();
    let account = store.record_by_link(&sf, Entity::Account, &ExternalId::new("001A")).unwrap().unwrap().id.to_string();
    let status_config = crate::status::StatusConfig {
        connections: BTreeMap::from([
            (sf.clone(), ("salesforce".to_owned(), vec![Entity::Account, Entity::Order], None)),
            (zoho.clone(), ("zoho".to_owned(), vec![Entity::Account, Entity::Order], None)),
        ]),
        jobs: Vec::new(),
    };
    let state = HttpState {
        webhooks: Arc::new(BTreeMap::new()),
        ingest: ingest.clone(),
        store: store.clone(),
        status_config: Arc::new(status_config),
        metrics_config: Arc::new(crate::config::MetricsConfig {
            reporting_currency: crmsync_connectors::canonical::Currency::new("EUR").unwrap(),
            fx: BTreeMap::new(),
            window: std::time::Duration::from_secs(30 * 86_400),
        }),
        api_token: token.map(|token| secrecy::SecretString::from(token.to_owned())),
        prometheus: None,
        refresh_gauges: None,
        ready: Arc::new(AtomicBool::new(true)),
        readiness: None,
    };
    let ready = state.ready.clone();
    Harness {
        router: public_router(state.clone()),
        admin: admin_router(state.clone()),
        state,
        ready,
        store,
        ingest,
        account,
        _dir: dir,
    }
}

async fn harness() -> Harness {
    harness_with(Some(TOKEN), both_ways()).await
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    text: String,
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        request = request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.map_or_else(Body::empty, |body| Body::from(body.to_owned()))).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send(Method::GET, uri, None, &[]).await
    }

    async fn post(&self, uri: &str, body: &Value) -> Answer {
        self.send(Method::POST, uri, Some(&body.to_string()), &[]).await
    }

    fn order_body(&self) -> Value {
        json!({
            "account": self.account,
            "channel": "direct",
            "currency": "eur",
            "lines": [{"product": "Widget", "sku": "W-1", "quantity": 2, "unit_price": "10.50"},
                      {"product": "Bolt", "quantity": "3", "unit_price": 1}],
        })
    }
}

fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert_eq!(answer.body["error"]["code"], code, "{}", answer.text);
    assert!(answer.body["error"]["message"].as_str().is_some_and(|message| !message.is_empty()), "{}", answer.text);
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_a_callers_id_is_kept() {
    let harness = harness().await;
    let minted = harness.get("/api/v1/orders").await;
    let id = minted.headers[super::REQUEST_ID].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a new request id is a UUID: {id}");
    let other = harness.get("/api/v1/orders").await;
    assert_ne!(other.headers[super::REQUEST_ID], id.as_str(), "each request gets its own id");
    let kept = harness.send(Method::GET, "/nope", None, &[(super::REQUEST_ID, "lb-1234")]).await;
    assert_eq!(kept.status, StatusCode::NOT_FOUND);
    assert_eq!(kept.headers[super::REQUEST_ID], "lb-1234", "an id set by a proxy in front is kept");
    let probe = harness.admin.clone().oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert!(probe.headers().contains_key(super::REQUEST_ID), "the admin listener has request ids too");
}

#[tokio::test]
async fn readyz_is_json_and_503_with_the_reason_while_starting_or_stopping() {
    let harness = harness().await;
    let readyz = |admin: Router| async move {
        let response = admin.oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    let (status, body) = readyz(harness.admin.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"ready": true, "reasons": []}));
    harness.ready.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = readyz(harness.admin.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    assert_eq!(body["reasons"][0]["check"], "lifecycle", "{body}");
    let health = harness.admin.clone().oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "liveness is not readiness");
}

async fn readyz(admin: Router) -> (StatusCode, Value) {
    let response = admin.oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice::<Value>(&bytes).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_full_ingest_queue_makes_the_daemon_unready_only_once_the_writer_has_been_behind_for_a_while() {
    let harness = harness().await;
    // A writer of its own with room for one batch, not running yet: the queue fills and stays full.
    let rules =
        IngestRules { rules: Arc::new(both_ways()), fields: Arc::new(BTreeMap::new()), superseded: Arc::default() };
    let (writer, ingest) = Ingestor::new(harness.store.clone(), rules, 1);
    let admin = admin_router(HttpState { ingest: ingest.clone(), ..harness.state.clone() });
    let failed = Batch::Failed { connection: connection("sf"), entity: Entity::Account, message: "refused".into() };
    let submitted = tokio::spawn({
        let ingest = ingest.clone();
        async move { ingest.submit(failed).await }
    });
    while !ingest.is_full() {
        tokio::task::yield_now().await;
    }
    // Full right now, as in a burst: one probe landing on it does not fail.
    let (status, body) = readyz(admin.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::advance(crate::ingest::SATURATED_AFTER - std::time::Duration::from_secs(1)).await;
    assert_eq!(readyz(admin.clone()).await.0, StatusCode::OK);
    // Full, and the writer behind for SATURATED_AFTER: saturated.
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    let (status, body) = readyz(admin.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["reasons"][0]["check"], "ingest", "{body}");
    assert!(body["reasons"][0]["message"].as_str().unwrap().contains("behind for 10 s"), "{body}");
    // The writer catches up: ready again at once.
    tokio::spawn(writer.run());
    submitted.await.unwrap().unwrap();
    let (status, body) = readyz(admin.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_backup_download_held_open_does_not_hold_up_ingest() {
    let harness = harness().await;
    // A store larger than what the response body buffers (16 chunks of 64 KiB): the old handler
    // held the commit gate until the client had read nearly all of it.
    let filler = "x".repeat(1000);
    let changes: Vec<Change> =
        (0..2000).map(|n| account_change(&format!("F{n:05}"), 1, &format!("{filler}{n}"), None)).collect();
    harness.ingest.submit(Batch::Delivered { connection: connection("sf"), changes }).await.unwrap();
    let request = Request::get("/api/v1/backup")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = harness.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The client reads nothing yet: ingest goes on all the same.
    let late = account_change("LATE1", 2, "Committed during the backup", None);
    let stats =
        harness.ingest.submit(Batch::Delivered { connection: connection("sf"), changes: vec![late] }).await.unwrap();
    assert_eq!(stats.created, 1);
    assert!(
        harness.store.record_by_link(&connection("sf"), Entity::Account, &ExternalId::new("LATE1")).unwrap().is_some()
    );
    // The download then completes, whole.
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    assert!(bytes.len() > 2_000_000, "{} bytes", bytes.len());
    let summary = crate::store::backup::verify_backup(&mut bytes.as_ref()).unwrap();
    assert!(summary.entries > 2000, "{summary:?}");
    // The snapshot's file had no name: nothing is left in the store's directory.
    let names: Vec<String> = std::fs::read_dir(harness.store.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|name| !name.starts_with(".tmp")), "{names:?}");
}

#[tokio::test]
async fn the_api_needs_the_bearer_token_and_is_off_without_one() {
    let harness = harness().await;
    for (value, what) in [(None, "no header"), (Some("Bearer wrong"), "a wrong token"), (Some(TOKEN), "no scheme")] {
        let mut request = Request::builder().uri("/api/v1/orders");
        if let Some(value) = value {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = harness.router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    let off = harness_with(None, both_ways()).await;
    assert_error(&off.get("/api/v1/orders").await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn an_order_is_created_read_moved_through_its_statuses_and_deleted() {
    let harness = harness().await;
    let created = harness.post("/api/v1/orders", &harness.order_body()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.headers[header::LOCATION], format!("/api/v1/orders/{id}").as_str());
    let version = created.body["version"].as_str().unwrap().to_owned();
    assert_eq!(created.headers[header::ETAG], format!("\"{version}\"").as_str());
    assert_eq!(created.body["data"]["fields"]["status"], "draft");
    assert_eq!(created.body["data"]["fields"]["currency"], "EUR");
    assert_eq!(created.body["data"]["fields"]["total_amount"], "24");
    assert!(created.body["data"]["fields"]["number"].as_str().unwrap().starts_with("SO-"));
    assert_eq!(created.body["queued"], json!(["sf", "zoho"]), "queued for every routed connection");
    // zoho: the customer when sf delivered it, then the order with its (still unpushed) customer first.
    assert_eq!(harness.store.outbox_depth(&ConnectionId::new("zoho")).unwrap(), 3);

    let read = harness.get(&format!("/api/v1/orders/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["version"], version.as_str());
    assert_eq!(read.headers[header::ETAG], format!("\"{version}\"").as_str());

    let patch = |status: &str, if_match: Option<&str>| {
        let body = json!({"status": status}).to_string();
        let uri = format!("/api/v1/orders/{id}");
        let headers: Vec<(&str, String)> =
            if_match.map(|version| ("if-match", format!("\"{version}\""))).into_iter().collect();
        let harness = &harness;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
            harness.send(Method::PATCH, &uri, Some(&body), &headers).await
        }
    };
    let confirmed = patch("confirmed", Some(&version)).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
    assert_eq!(confirmed.body["data"]["fields"]["status"], "confirmed");
    assert_ne!(confirmed.body["version"], version.as_str());

    // A change made with a stale version is refused with the current record.
    let stale = patch("shipped", Some(&version)).await;
    assert_error(&stale, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert_eq!(stale.body["error"]["current"]["data"]["fields"]["status"], "confirmed");
    assert_eq!(stale.body["error"]["current"]["version"], confirmed.body["version"]);

    // The state machine: no skipping, the allowed statuses named.
    let skipped = patch("invoiced", None).await;
    assert_error(&skipped, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(skipped.body["error"]["allowed"], json!(["shipped", "cancelled"]));
    assert!(skipped.body["error"]["message"].as_str().unwrap().contains("allowed from confirmed: shipped, cancelled"));
    for status in ["shipped", "delivered", "invoiced"] {
        assert_eq!(patch(status, None).await.status, StatusCode::OK, "{status}");
    }
    let late = patch("cancelled", None).await;
    assert_error(&late, StatusCode::CONFLICT, "invalid_transition");
    assert!(late.body["error"]["message"].as_str().unwrap().contains("none (it is final)"));
    // Asking for the status it has changes nothing and queues nothing.
    let same = patch("invoiced", None).await;
    assert_eq!((same.status, same.body["queued"].clone()), (StatusCode::OK, json!([])));

    // Other fields, and a body that names nothing to change.
    let lines = harness
        .send(
            Method::PATCH,
            &format!("/api/v1/orders/{id}"),
            Some(r#"{"lines":[{"product":"Gear","quantity":"1.5","unit_price":"4"}],"details":"rush"}"#),
            &[],
        )
        .await;
    assert_eq!(lines.body["data"]["fields"]["total_amount"], "6", "{}", lines.text);
    assert_eq!(lines.body["data"]["fields"]["details"], "rush");
    let empty = harness.send(Method::PATCH, &format!("/api/v1/orders/{id}"), Some("{}"), &[]).await;
    assert_error(&empty, StatusCode::UNPROCESSABLE_ENTITY, "invalid");

    let deleted = harness.send(Method::DELETE, &format!("/api/v1/orders/{id}"), None, &[]).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert!(deleted.body["deleted_at"].is_string());
    assert_error(&harness.get(&format!("/api/v1/orders/{id}")).await, StatusCode::NOT_FOUND, "not_found");
    let again = harness.send(Method::DELETE, &format!("/api/v1/orders/{id}"), None, &[]).await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");
    assert_error(&harness.get("/api/v1/orders/not-a-uuid").await, StatusCode::BAD_REQUEST, "bad_request");
    let bad_id = harness.send(Method::PATCH, "/api/v1/orders/not-a-uuid", Some(r#"{"status":"confirmed"}"#), &[]).await;
    assert_error(&bad_id, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(bad_id.body["error"]["field"], "id");
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let harness = harness().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"channel": "direct", "currency": "EUR", "lines": [{"product": "A", "quantity": 1, "unit_price": 1}]}),
            "account",
        ),
        (json!({"account": "not-a-uuid", "channel": "direct", "currency": "EUR", "lines": []}), "account"),
        (json!({"account": harness.account, "channel": "telepathy", "currency": "EUR", "lines": []}), "channel"),
        (json!({"account": harness.account, "channel": "direct", "currency": "EURO", "lines": []}), "currency"),
        (json!({"account": harness.account, "channel": "direct", "currency": "EUR", "lines": []}), "lines"),
        (
            json!({"account": harness.account, "channel": "direct", "currency": "EUR",
                   "lines": [{"product": "A", "quantity": "0", "unit_price": 1}]}),
            "lines[0].quantity",
        ),
        (
            json!({"account": harness.account, "channel": "direct", "currency": "EUR",
                   "lines": [{"product": "A", "quantity": 1, "unit_price": "ten"}]}),
            "lines[0].unit_price",
        ),
        (
            json!({"account": harness.account, "channel": "direct", "currency": "EUR",
                   "lines": [{"product": "A", "quantity": 1, "unit_price": 1, "colour": "red"}]}),
            "lines[0].colour",
        ),
        (
            json!({"account": harness.account, "channel": "direct", "currency": "EUR", "status": "shipped",
                   "lines": [{"product": "A", "quantity": 1, "unit_price": 1}]}),
            "status",
        ),
        (
            json!({"account": harness.account, "channel": "direct", "currency": "EUR", "order_date": "31/12/2026",
                   "lines": [{"product": "A", "quantity": 1, "unit_price": 1}]}),
            "order_date",
        ),
        (json!({"account": harness.account, "surprise": true}), "surprise"),
        (json!({"account": 42}), "account"),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let answer = harness.post("/api/v1/orders", &body).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        assert_eq!(answer.body["error"]["field"], field, "{body}: {}", answer.text);
    }
    // A vendor id with its connection names the customer too; a number is unique among orders.
    let mut by_vendor_id = harness.order_body();
    by_vendor_id["account"] = json!("001A");
    by_vendor_id["account_connection"] = json!("sf");
    by_vendor_id["number"] = json!("SO-1");
    assert_eq!(harness.post("/api/v1/orders", &by_vendor_id).await.status, StatusCode::CREATED);
    let duplicate = harness.post("/api/v1/orders", &by_vendor_id).await;
    assert_error(&duplicate, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert_eq!(duplicate.body["error"]["field"], "number");
    by_vendor_id["account_connection"] = json!("zoho");
    by_vendor_id["number"] = json!("SO-2");
    let unknown = harness.post("/api/v1/orders", &by_vendor_id).await;
    assert_eq!(unknown.body["error"]["field"], "account", "{}", unknown.text);
    // Not JSON at all, or nothing.
    assert_error(
        &harness.send(Method::POST, "/api/v1/orders", Some("{not json"), &[]).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let nothing = harness.send(Method::POST, "/api/v1/orders", None, &[]).await;
    assert_error(&nothing, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
}

#[tokio::test]
async fn order_lists_filter_and_page_by_key_with_a_bounded_limit() {
    let harness = harness().await;
    let mut ids = Vec::new();
    for (index, channel) in ["direct", "agent", "direct", "ecommerce", "direct"].iter().enumerate() {
        let mut body = harness.order_body();
        body["channel"] = json!(channel);
        body["order_date"] = json!(format!("2026-10-0{}", index + 1));
        if index == 1 {
            body["status"] = json!("confirmed");
        }
        ids.push(harness.post("/api/v1/orders", &body).await.body["id"].as_str().unwrap().to_owned());
    }
    let listed = |answer: &Answer| -> Vec<String> {
        answer.body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|order| order["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(listed(&harness.get("/api/v1/orders").await), ids);
    assert_eq!(
        listed(&harness.get("/api/v1/orders?channel=direct").await),
        vec![ids[0].clone(), ids[2].clone(), ids[4].clone()]
    );
    assert_eq!(listed(&harness.get("/api/v1/orders?status=confirmed").await), vec![ids[1].clone()]);
    assert_eq!(listed(&harness.get("/api/v1/orders?since=2026-10-02&until=2026-10-04").await), ids[1..3].to_vec());
    assert_eq!(listed(&harness.get(&format!("/api/v1/orders?account={}", harness.account)).await).len(), 5);
    assert!(listed(&harness.get("/api/v1/orders?connection=sf").await).is_empty(), "not pushed anywhere yet");
    let newest: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed(&harness.get("/api/v1/orders?newest_first=true").await), newest);

    // Pages of two, by cursor: every order once, in order; the last page says so.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/orders?limit=2".to_owned();
    loop {
        let page = harness.get(&uri).await;
        seen.extend(listed(&page));
        match page.body["next"].as_str() {
            Some(next) => uri = format!("/api/v1/orders?limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let newest_pages = harness.get(&format!("/api/v1/orders?newest_first=true&limit=2&after={}", ids[3])).await;
    assert_eq!(listed(&newest_pages), vec![ids[2].clone(), ids[1].clone()]);

    for (uri, field) in [
        ("/api/v1/orders?limit=0", "limit"),
        ("/api/v1/orders?limit=1001", "limit"),
        ("/api/v1/orders?limit=-1", "limit"),
        ("/api/v1/orders?cursor=nope", "cursor"),
        ("/api/v1/orders?status=lost", "status"),
        ("/api/v1/orders?since=2026-10-04&until=2026-10-02", "since"),
        ("/api/v1/orders?sort=name", "sort"),
        ("/api/v1/orders?limit=1&limit=2", "limit"),
        ("/api/v1/accounts?status=draft", "status"),
    ] {
        let answer = harness.get(uri).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(answer.body["error"]["field"], field, "{uri}: {}", answer.text);
    }
    let accounts = harness.get("/api/v1/accounts").await;
    assert_eq!(accounts.body["records"].as_array().unwrap().len(), 1);
    for uri in ["/api/v1/leads", "/api/v1/opportunities"] {
        let answer = harness.get(uri).await;
        assert_eq!((answer.status, answer.body["records"].clone()), (StatusCode::OK, json!([])), "{uri}");
    }
}

#[tokio::test]
async fn every_error_is_the_documented_json_including_axums_own() {
    let harness = harness().await;
    assert_error(&harness.get("/nowhere").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&harness.get("/api/v1/nowhere").await, StatusCode::NOT_FOUND, "not_found");
    let method = harness.send(Method::PUT, "/api/v1/orders", Some("{}"), &[]).await;
    assert_error(&method, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(method.headers.contains_key(header::ALLOW));
    let huge = "x".repeat(BODY_LIMIT + 1);
    assert_error(
        &harness.send(Method::POST, "/api/v1/orders", Some(&huge), &[]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let long = format!("/api/v1/orders?cursor={}", "a".repeat(error::MAX_URI_LENGTH));
    assert_error(&harness.get(&long).await, StatusCode::URI_TOO_LONG, "uri_too_long");
    assert_error(&harness.get("/api/v1/orders?limit=%zz").await, StatusCode::BAD_REQUEST, "bad_request");
    assert_error(
        &harness.send(Method::POST, "/webhooks/nope", Some("x"), &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn a_panicking_handler_answers_a_json_500() {
    async fn boom() -> &'static str {
        panic!("boom")
    }
    let router = Router::new()
        .route("/boom", axum::routing::get(boom))
        .layer(from_fn(error::catch_panic))
        .layer(from_fn(error::json_errors));
    let response = router.oneshot(Request::builder().uri("/boom").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value =
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body, json!({"error": {"code": "internal", "message": "internal error"}}));
}

#[tokio::test]
async fn status_metrics_and_the_operator_queues_answer() {
    let harness = harness().await;
    harness.post("/api/v1/orders", &harness.order_body()).await;
    let status = harness.get("/api/v1/status").await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.body["connections"].as_array().unwrap().len(), 2);
    let metrics = harness.get("/api/v1/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    assert_eq!(metrics.body["totals"]["orders"], 1);
    assert_eq!(metrics.body["orders_by_day"].as_array().unwrap().len(), 1);
    let far = harness.get("/api/v1/metrics?since=2026-01-01T00:00:00Z&until=9999-12-31T23:59:59Z").await;
    assert_eq!(far.status, StatusCode::OK, "{}", far.text);
    for (uri, field) in [
        ("/api/v1/metrics?since=2026-12-01T00:00:00Z&until=2026-11-01T00:00:00Z", "since"),
        ("/api/v1/metrics?since=yesterday", "since"),
        ("/api/v1/metrics?scope=nowhere", "scope"),
        ("/api/v1/metrics?window=1d", "window"),
        ("/api/v1/status?verbose=1", "verbose"),
    ] {
        let answer = harness.get(uri).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(answer.body["error"]["field"], field, "{uri}");
    }

    let conflicts = harness.get("/api/v1/conflicts").await;
    assert_eq!((conflicts.status, conflicts.body["entries"].clone()), (StatusCode::OK, json!([])));
    assert_eq!(harness.get("/api/v1/conflicts?all=true&limit=5").await.status, StatusCode::OK);
    assert_error(
        &harness.post("/api/v1/conflicts", &json!({"id": "nope", "take": "current"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &harness.post("/api/v1/conflicts", &json!({"id": "nope", "take": "both"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    );
    let letters = harness.get("/api/v1/dlq").await;
    assert_eq!((letters.status, letters.body["entries"].clone()), (StatusCode::OK, json!([])));
    let retried = harness.post("/api/v1/dlq", &json!({"action": "retry", "ids": "all"})).await;
    assert_eq!(retried.body, json!({"result": "dead_letters_retried", "requeued": 0, "reapplied": 0}));
    assert_error(
        &harness.post("/api/v1/dlq", &json!({"action": "drop", "ids": ["nope"]})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &harness.post("/api/v1/dlq", &json!({"action": "drop", "ids": "some"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    );
    let merge =
        harness.post("/api/v1/identity/merge", &json!({"keep": harness.account, "other": harness.account})).await;
    assert_error(&merge, StatusCode::CONFLICT, "conflict");
    let missing = crmsync_connectors::canonical::CanonicalId::new().to_string();
    assert_error(
        &harness.post("/api/v1/identity/merge", &json!({"keep": harness.account, "other": missing})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let split = harness.post("/api/v1/identity/split", &json!({"id": harness.account, "connection": "sf"})).await;
    assert_error(&split, StatusCode::CONFLICT, "conflict");
    assert!(split.body["error"]["message"].as_str().unwrap().contains("nothing to split"));
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page_served_without_the_token() {
    let harness = harness().await;
    let response =
        harness.router.clone().oneshot(Request::builder().uri("/").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let policy = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
    let page =
        String::from_utf8(axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
    assert!(!page.contains("__TRANSITIONS__"));
    assert!(page.contains(r#""confirmed":["shipped","cancelled"]"#), "the state machine is written in");
    for external in ["src=\"http", "href=\"http", "@import", "<link"] {
        assert!(!page.contains(external), "no external asset ({external})");
    }
    assert!(page.contains("sessionStorage") && page.contains("Authorization"));
}

/// Each routed connection's outbox operations for one record, oldest first.
fn queued_ops(store: &Store, connection_name: &str, id: &str) -> Vec<crate::store::OutboxOp> {
    store
        .outbox_after(&connection(connection_name), None, 1000)
        .unwrap()
        .into_iter()
        .filter(|(_, entry)| entry.canonical_id.to_string() == id)
        .map(|(_, entry)| entry.op)
        .collect()
}

#[tokio::test]
async fn deleting_an_order_follows_each_routes_on_delete() {
    use crate::store::OutboxOp;
    let everyone = vec![connection("sf"), connection("zoho"), connection("d365")];
    let route =
        |to: &str, on_delete| Route { entity: None, from: everyone.clone(), to: vec![connection(to)], on_delete };
    let rules = Rules {
        routes: vec![
            route("sf", DeleteAction::Delete),
            route("zoho", DeleteAction::Mark),
            route("d365", DeleteAction::Ignore),
        ],
        ..Rules::default()
    };
    let harness = harness_with(Some(TOKEN), rules).await;
    let created = harness.post("/api/v1/orders", &harness.order_body()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["queued"], json!(["d365", "sf", "zoho"]));
    let id = created.body["id"].as_str().unwrap().to_owned();
    // sf took the order (a Delete needs a copy to delete); zoho and Dataverse have not yet.
    push_to_sf(
        &harness,
        &id,
        crmsync_connectors::PushOutcome::Upserted {
            external_id: ExternalId::new("801A"),
            created: true,
            version: None,
        },
    )
    .await;

    let deleted = harness.send(Method::DELETE, &format!("/api/v1/orders/{id}"), None, &[]).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert!(deleted.body["deleted_at"].is_string(), "{}", deleted.text);
    // on_delete = ignore: the Dataverse copy is left alone, so nothing is queued there.
    assert_eq!(deleted.body["queued"], json!(["sf", "zoho"]));
    assert_eq!(queued_ops(&harness.store, "sf", &id).last(), Some(&OutboxOp::Delete), "delete: the copy is deleted");
    assert_eq!(queued_ops(&harness.store, "zoho", &id).last(), Some(&OutboxOp::Mark), "mark: the copy is cancelled");
    assert_eq!(queued_ops(&harness.store, "d365", &id), vec![OutboxOp::Upsert], "ignore: only the create");

    // The canonical order is a tombstone: gone from reads, listed only with include_deleted.
    assert_error(&harness.get(&format!("/api/v1/orders/{id}")).await, StatusCode::NOT_FOUND, "not_found");
    assert!(harness.get("/api/v1/orders").await.body["records"].as_array().unwrap().is_empty());
    let with_deleted = harness.get("/api/v1/orders?include_deleted=true").await;
    assert_eq!(with_deleted.body["records"][0]["id"], id.as_str(), "{}", with_deleted.text);
    // A stale If-Match refuses a delete, with the current record.
    let other = harness.post("/api/v1/orders", &harness.order_body()).await;
    let other_id = other.body["id"].as_str().unwrap();
    let stale = harness
        .send(Method::DELETE, &format!("/api/v1/orders/{other_id}"), None, &[("if-match", "\"not-the-version\"")])
        .await;
    assert_error(&stale, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert_eq!(stale.body["error"]["current"]["id"], other_id);
    assert!(stale.body["error"]["current"]["deleted_at"].is_null());
}

#[tokio::test]
async fn a_held_conflict_is_listed_and_resolved_through_the_api() {
    let rules = Rules { default_policy: crate::reconcile::Policy::Manual, ..both_ways() };
    let harness = harness_with(Some(TOKEN), rules).await;
    // One customer in both CRMs (matched by name and domain), renamed in zoho, then in sf by
    // someone who had not seen zoho's name: a conflict, held under the manual policy.
    for (connection_name, change) in [
        ("sf", account_change("001B", 1, "Globex", Some("globex.com"))),
        ("zoho", account_change("z1", 2, "Globex", Some("globex.com"))),
        ("zoho", account_change("z1", 3, "Globex GmbH", Some("globex.com"))),
        ("sf", account_change("001B", 4, "Globex Inc", Some("globex.com"))),
    ] {
        harness
            .ingest
            .submit(Batch::Delivered { connection: connection(connection_name), changes: vec![change] })
            .await
            .unwrap();
    }
    let record =
        harness.store.record_by_link(&connection("zoho"), Entity::Account, &ExternalId::new("z1")).unwrap().unwrap();
    assert_eq!(record.link(&connection("sf")).unwrap().external_id, ExternalId::new("001B"), "one record");

    let held = harness.get("/api/v1/conflicts").await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.text);
    let entries = held.body["entries"].as_array().unwrap().clone();
    let conflict = entries
        .iter()
        .find(|entry| entry["field"] == "name" && entry["incoming"]["value"] == "Globex Inc")
        .unwrap_or_else(|| panic!("the double rename is held: {}", held.text));
    assert_eq!((conflict["held"].clone(), conflict["resolved"].clone()), (json!(true), json!(false)));
    assert_eq!(conflict["canonical_id"], record.id.to_string().as_str());
    let conflict_id = conflict["id"].as_str().unwrap().to_owned();
    let name = |harness: &Harness| {
        let record = harness.store.record(record.id).unwrap().unwrap();
        record.data.to_fields().get("name").cloned().unwrap_or(Value::Null)
    };
    assert_eq!(conflict["current"]["value"], "Globex GmbH");
    assert_eq!(name(&harness), json!("Globex GmbH"), "the current value is held");

    let resolved = harness.post("/api/v1/conflicts", &json!({"id": conflict_id, "take": "incoming"})).await;
    assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.text);
    assert_eq!(resolved.body["result"], "conflict_resolved");
    assert_eq!(resolved.body["conflict"]["resolved"], true);
    assert_eq!(resolved.body["queued"], json!(["sf", "zoho"]), "the chosen value goes to both CRMs");
    assert_eq!(name(&harness), json!("Globex Inc"));

    // Resolved: refused a second time, gone from the held queue, listed with all=true.
    let again = harness.post("/api/v1/conflicts", &json!({"id": conflict_id, "take": "current"})).await;
    assert_error(&again, StatusCode::CONFLICT, "conflict");
    let still_held = harness.get("/api/v1/conflicts").await;
    assert!(!still_held.body["entries"].as_array().unwrap().iter().any(|entry| entry["id"] == conflict_id.as_str()));
    let all = harness.get("/api/v1/conflicts?all=true").await;
    let listed =
        all.body["entries"].as_array().unwrap().iter().find(|entry| entry["id"] == conflict_id.as_str()).cloned();
    assert_eq!(listed.map(|entry| entry["resolved"].clone()), Some(json!(true)), "{}", all.text);
    // Bodies that do not validate, and paging parameters.
    for body in [json!({"id": conflict_id}), json!({"id": conflict_id, "take": "incoming", "why": "x"}), json!("x")] {
        assert_error(&harness.post("/api/v1/conflicts", &body).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    let bad_limit = harness.get("/api/v1/conflicts?limit=0").await;
    assert_error(&bad_limit, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(bad_limit.body["error"]["field"], "limit");
}

/// Answers the push of an order to `sf` with a rejection: one dead letter.
async fn reject_push(harness: &Harness, id: &str) {
    let outcome = crmsync_connectors::PushOutcome::Rejected {
        code: "FIELD_INTEGRITY_EXCEPTION".into(),
        message: "no active price book entry".into(),
    };
    push_to_sf(harness, id, outcome).await;
}

/// Answers the waiting push of a record to `sf` with `outcome`.
async fn push_to_sf(harness: &Harness, id: &str, outcome: crmsync_connectors::PushOutcome) {
    let sf = connection("sf");
    let sequences: Vec<u64> = harness
        .store
        .outbox_after(&sf, None, 1000)
        .unwrap()
        .into_iter()
        .filter(|(_, entry)| entry.canonical_id.to_string() == id)
        .map(|(sequence, _)| sequence)
        .collect();
    assert!(!sequences.is_empty(), "the order waits in sf's outbox");
    let pushed = crate::ingest::PushedRecord {
        sequences,
        canonical_id: id.parse().unwrap(),
        pushed_hash: None,
        outcome,
        payload: json!({"Status": "Draft"}),
        attempt: Some("attempt-1".into()),
    };
    harness
        .ingest
        .submit(Batch::Pushed { connection: sf, entity: Entity::Order, results: vec![pushed] })
        .await
        .unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_retried_and_dropped_through_the_api() {
    let harness = harness().await;
    let created = harness.post("/api/v1/orders", &harness.order_body()).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    reject_push(&harness, &id).await;
    assert!(queued_ops(&harness.store, "sf", &id).is_empty(), "a rejected push leaves the outbox");

    let letters = harness.get("/api/v1/dlq").await;
    assert_eq!(letters.status, StatusCode::OK, "{}", letters.text);
    let entries = letters.body["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1, "{}", letters.text);
    assert_eq!((entries[0]["connection"].clone(), entries[0]["canonical_id"].clone()), (json!("sf"), json!(id)));
    assert!(entries[0]["reason"].as_str().unwrap().contains("FIELD_INTEGRITY_EXCEPTION"));
    let letter = entries[0]["id"].as_str().unwrap().to_owned();

    // Retry: the order is queued for sf again and the letter is gone.
    let retried = harness.post("/api/v1/dlq", &json!({"action": "retry", "ids": [letter]})).await;
    assert_eq!(
        retried.body,
        json!({"result": "dead_letters_retried", "requeued": 1, "reapplied": 0}),
        "{}",
        retried.text
    );
    assert_eq!(queued_ops(&harness.store, "sf", &id), vec![crate::store::OutboxOp::Upsert]);
    assert_eq!(harness.get("/api/v1/dlq").await.body["entries"], json!([]));
    assert_error(
        &harness.post("/api/v1/dlq", &json!({"action": "retry", "ids": [letter]})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Rejected again, then dropped: gone, and nothing queued.
    reject_push(&harness, &id).await;
    assert_eq!(harness.get("/api/v1/dlq?limit=1").await.body["entries"].as_array().unwrap().len(), 1);
    let dropped = harness.post("/api/v1/dlq", &json!({"action": "drop", "ids": "all"})).await;
    assert_eq!(dropped.body, json!({"result": "dead_letters_dropped", "dropped": 1}), "{}", dropped.text);
    assert_eq!(harness.get("/api/v1/dlq").await.body["entries"], json!([]));
    assert!(queued_ops(&harness.store, "sf", &id).is_empty());

    for (body, field) in [
        (json!({"action": "resend", "ids": "all"}), "body"),
        (json!({"action": "drop"}), "body"),
        (json!({"action": "drop", "ids": []}), "ids"),
    ] {
        let answer = harness.post("/api/v1/dlq", &body).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        assert_eq!(answer.body["error"]["field"], field, "{body}: {}", answer.text);
    }
    let bad_page = harness.get("/api/v1/dlq?limit=1001").await;
    assert_error(&bad_page, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(bad_page.body["error"]["field"], "limit");
}

#[tokio::test]
async fn two_records_are_merged_and_split_again_through_the_api() {
    let harness = harness().await;
    // The same customer under another name in zoho: no match key joins them.
    let zoho_copy = account_change("z9", 5, "ACME Corporation", None);
    harness.ingest.submit(Batch::Delivered { connection: connection("zoho"), changes: vec![zoho_copy] }).await.unwrap();
    let other =
        harness.store.record_by_link(&connection("zoho"), Entity::Account, &ExternalId::new("z9")).unwrap().unwrap().id;
    assert_eq!(harness.get("/api/v1/accounts").await.body["records"].as_array().unwrap().len(), 2);

    let merged =
        harness.post("/api/v1/identity/merge", &json!({"keep": harness.account, "other": other.to_string()})).await;
    assert_eq!(merged.status, StatusCode::OK, "{}", merged.text);
    assert_eq!(merged.body["result"], "merged");
    assert_eq!(merged.body["absorbed"], other.to_string().as_str());
    assert_eq!(merged.body["record"]["id"], harness.account.as_str());
    let mut linked: Vec<&str> = merged.body["record"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|link| link["connection"].as_str().unwrap())
        .collect();
    linked.sort_unstable();
    assert_eq!(linked, ["sf", "zoho"]);
    let accounts = harness.get("/api/v1/accounts").await;
    assert_eq!(accounts.body["records"].as_array().unwrap().len(), 1, "the absorbed record is no longer listed");
    // The absorbed id resolves to the merged record; merging it again is refused.
    assert_eq!(
        harness.store.record(other).unwrap().unwrap().merged_into.map(|id| id.to_string()),
        Some(harness.account.clone())
    );

    let split = harness.post("/api/v1/identity/split", &json!({"id": harness.account, "connection": "zoho"})).await;
    assert_eq!(split.status, StatusCode::OK, "{}", split.text);
    assert_eq!(split.body["result"], "split");
    assert_eq!(split.body["remaining"], harness.account.as_str());
    let detached = &split.body["detached"];
    assert_ne!(detached["id"], harness.account.as_str());
    assert_eq!(detached["links"][0]["connection"], "zoho");
    assert_eq!(detached["links"][0]["external_id"], "z9");
    assert_eq!(harness.get("/api/v1/accounts").await.body["records"].as_array().unwrap().len(), 2);
    // The remaining record has one copy left: nothing more to split from it.
    let nothing = harness.post("/api/v1/identity/split", &json!({"id": harness.account, "connection": "zoho"})).await;
    assert_error(&nothing, StatusCode::CONFLICT, "conflict");

    for (uri, body, status, field) in [
        ("/api/v1/identity/merge", json!({"keep": "nope", "other": harness.account}), StatusCode::BAD_REQUEST, "keep"),
        ("/api/v1/identity/merge", json!({"keep": harness.account, "other": "nope"}), StatusCode::BAD_REQUEST, "other"),
        ("/api/v1/identity/merge", json!({"keep": harness.account}), StatusCode::UNPROCESSABLE_ENTITY, "body"),
        ("/api/v1/identity/split", json!({"id": "nope", "connection": "sf"}), StatusCode::BAD_REQUEST, "id"),
        (
            "/api/v1/identity/split",
            json!({"id": harness.account, "connection": "sf", "x": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "body",
        ),
    ] {
        let answer = harness.post(uri, &body).await;
        assert_eq!(answer.status, status, "{uri} {body}: {}", answer.text);
        assert_eq!(answer.body["error"]["field"], field, "{uri} {body}: {}", answer.text);
    }
    let missing = crmsync_connectors::canonical::CanonicalId::new().to_string();
    assert_error(
        &harness.post("/api/v1/identity/split", &json!({"id": missing, "connection": "sf"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let get = harness.get("/api/v1/identity/merge").await;
    assert_error(&get, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

/// A valid sample changed at random (cut short, bytes overwritten, garbage spliced in), or arbitrary
/// bytes.
fn mutated_body(sample: String) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let bytes = sample.into_bytes();
    let len = bytes.len();
    prop_oneof![
        Just(bytes.clone()),
        (0..=len).prop_map({
            let bytes = bytes.clone();
            move |cut| bytes.iter().copied().take(cut).collect()
        }),
        (0..len.max(1), any::<u8>()).prop_map({
            let bytes = bytes.clone();
            move |(at, byte)| {
                let mut changed = bytes.clone();
                if let Some(slot) = changed.get_mut(at) {
                    *slot = byte;
                }
                changed
            }
        }),
        (0..=len, prop::collection::vec(any::<u8>(), 1..16)).prop_map(move |(at, garbage)| {
            let mut changed = bytes.clone();
            changed.splice(at..at, garbage);
            changed
        }),
        prop::collection::vec(any::<u8>(), 0..128),
    ]
}

/// The suite's property test of REST bodies and query strings (issue 17): arbitrary and mutated
/// bodies and query strings on every `/api/v1` route never panic and never answer 500; every refusal
/// is the documented JSON error with a code and a message.
#[test]
fn arbitrary_bodies_and_query_strings_get_a_documented_answer() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let harness = runtime.block_on(harness());
    let order = runtime.block_on(harness.post("/api/v1/orders", &harness.order_body()));
    let order_uri = format!("/api/v1/orders/{}", order.body["id"].as_str().unwrap());
    let account = harness.account.clone();
    // Every route with a valid body for it.
    let routes: Vec<(Method, String, String)> = vec![
        (Method::GET, "/api/v1/orders".into(), String::new()),
        (Method::POST, "/api/v1/orders".into(), harness.order_body().to_string()),
        (Method::GET, order_uri.clone(), String::new()),
        (Method::PATCH, order_uri.clone(), r#"{"status":"confirmed","details":"rush"}"#.into()),
        (Method::DELETE, order_uri, String::new()),
        (Method::GET, "/api/v1/accounts".into(), String::new()),
        (Method::GET, "/api/v1/leads".into(), String::new()),
        (Method::GET, "/api/v1/opportunities".into(), String::new()),
        (Method::GET, "/api/v1/status".into(), String::new()),
        (Method::GET, "/api/v1/metrics".into(), String::new()),
        (Method::GET, "/api/v1/conflicts".into(), String::new()),
        (Method::POST, "/api/v1/conflicts".into(), r#"{"id":"01a2","take":"incoming"}"#.into()),
        (Method::GET, "/api/v1/dlq".into(), String::new()),
        (Method::POST, "/api/v1/dlq".into(), r#"{"action":"retry","ids":"all"}"#.into()),
        (Method::POST, "/api/v1/identity/merge".into(), json!({"keep": account, "other": account}).to_string()),
        (Method::POST, "/api/v1/identity/split".into(), json!({"id": account, "connection": "zoho"}).to_string()),
    ];
    let cases = (0..routes.len()).prop_flat_map(|index| {
        let body = mutated_body(routes[index].2.clone());
        let query = prop_oneof![
            Just(String::new()),
            "(limit|after|cursor|status|channel|account|since|until|scope|all|include_deleted|newest_first|x)=[-A-Za-z0-9%._:+]{0,24}(&(limit|after|cursor|status|since|until|scope)=[-A-Za-z0-9%._:+]{0,12}){0,2}",
            "[ -~]{0,40}",
        ];
        (Just(index), body, query)
    });
    let config = proptest::test_runner::Config { cases: 384, failure_persistence: None, ..Default::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let (answered, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner
        .run(&cases, |(index, body, query)| {
            let (method, path, _) = &routes[index];
            let uri = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
            let Ok(request) = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Body::from(body))
            else {
                // Not a request target at all (the HTTP layer refuses it before the router).
                return Ok(());
            };
            let response = runtime.block_on(harness.router.clone().oneshot(request)).unwrap();
            let status = response.status();
            let bytes = runtime.block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
            prop_assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{} {}", method, uri);
            if status.is_success() {
                answered.set(answered.get() + 1);
            } else {
                let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                prop_assert!(
                    answer["error"]["code"].as_str().is_some_and(|code| !code.is_empty())
                        && answer["error"]["message"].as_str().is_some_and(|message| !message.is_empty()),
                    "{} {} answered {}: {}",
                    method,
                    uri,
                    status,
                    String::from_utf8_lossy(&bytes)
                );
                refused.set(refused.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    let (answered, refused) = (answered.get(), refused.get());
    eprintln!("REST bodies and query strings: {answered} answered, {refused} refused with the documented error");
    assert!(answered > 0 && refused > 0, "both kinds of input were tried: {answered} answered, {refused} refused");
}

#[tokio::test]
async fn the_admin_listener_answers_its_errors_in_the_documented_json_too() {
    let harness = harness().await;
    for (method, uri, status, code) in [
        (Method::GET, "/nowhere", StatusCode::NOT_FOUND, "not_found"),
        (Method::POST, "/healthz", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ] {
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let response = harness.admin.clone().oneshot(request).await.unwrap();
        let answered = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!((answered, &body["error"]["code"]), (status, &json!(code)), "{uri}: {body}");
    }
}
