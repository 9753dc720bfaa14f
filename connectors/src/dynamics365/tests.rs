//! Dataverse connector against the simulator over loopback HTTP: the shared contract suite, the
//! issue's call-count figures, and the Dataverse specifics (delta links with deletes, expired delta
//! tokens, tables without change tracking, `$batch` partial failure, 429 + Retry-After, etags,
//! closing opportunities, webhooks, money and lookups).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;

use super::sim::{self, Dynamics365SimOptions, RunningDynamics365Sim};
use super::*;
use crate::canonical::{
    Account, CanonicalId, Channel, EntityData, Money, Opportunity, OrderStatus, RecordRef, Stage, Vocabulary,
};
use crate::connector::{MemoryHost, WebhookDelivery, WebhookEvent};
use crate::http::RetryPolicy;
use crate::sim::{FaultSettings, Simulated, World, WorldSize};
use crate::testkit::{self, SimControl};

fn world(size: WorldSize) -> World {
    World::generate(11, size, "2026-11-01T00:00:00Z".parse().unwrap(), false)
}

fn only(accounts: usize, deals: usize, orders: usize) -> WorldSize {
    WorldSize { accounts, leads: 0, opportunities: deals, orders }
}

async fn simulator(options: Dynamics365SimOptions) -> RunningDynamics365Sim {
    sim::start(options).await.unwrap()
}

fn config(base: &url::Url) -> Dynamics365Config {
    Dynamics365Config {
        org_url: base.clone(),
        authority_url: base.clone(),
        tenant_id: sim::TENANT_ID.into(),
        client_id: sim::CLIENT_ID.into(),
        client_secret: SecretString::from(sim::CLIENT_SECRET.to_owned()),
        api_version: "v9.2".into(),
        alternate_key: sim::ALTERNATE_KEY.into(),
        max_page_size: 5000,
        batch_size: 1000,
        channel_field: Some("crmsync_channel".into()),
        webhook: Some(Dynamics365Webhook {
            key: SecretString::from(sim::WEBHOOK_KEY.to_owned()),
            header: Some("x-crmsync-key".into()),
        }),
    }
}

fn connector_with(
    running: &RunningDynamics365Sim,
    tweak: impl FnOnce(&mut ConnectionSettings, &mut Dynamics365Config),
) -> Dynamics365Connector {
    let mut settings = ConnectionSettings::new("d365", Vocabulary::defaults(VendorKind::Dynamics365));
    settings.http.retry =
        RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(20) };
    let base: url::Url = running.base_url().parse().unwrap();
    let mut config = config(&base);
    tweak(&mut settings, &mut config);
    Dynamics365Connector::new(settings, config, Arc::new(MemoryHost::default())).unwrap()
}

fn connector(running: &RunningDynamics365Sim) -> Dynamics365Connector {
    connector_with(running, |_, _| {})
}

fn delivery<'a>(
    headers: &'a reqwest::header::HeaderMap,
    query: Option<&'a str>,
    body: &'a [u8],
) -> WebhookDelivery<'a> {
    WebhookDelivery { headers, query, body }
}

#[tokio::test]
async fn contract_suite_passes_on_accounts() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(300, 0, 0)))).await;
    let connector = connector(&running);
    let mut forged = reqwest::header::HeaderMap::new();
    forged.insert("x-crmsync-key", "guess".parse().unwrap());
    let body = br#"{"MessageName":"Update","PrimaryEntityName":"account","PrimaryEntityId":"00000000-0000-0000-0000-000000000001"}"#;
    testkit::run_contract_suite(&connector, running.state().as_ref(), Entity::Account, &delivery(&forged, None, body))
        .await;
}

#[tokio::test]
async fn a_full_pull_of_100000_opportunities_costs_20_data_calls_and_an_incremental_one_call() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(50, 100_000, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let run = testkit::pull_to_end(&connector, Entity::Opportunity, None, 100).await.unwrap();
    let ids: BTreeSet<_> = run.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!((ids.len(), run.changes.len()), (100_000, 100_000));
    assert_eq!(run.pages, 20);
    let stats = Simulated::stats(state.as_ref());
    assert_eq!(stats.token_calls, 1);
    // 20 pages + the table definition + the org's currencies (both read once per connection).
    assert_eq!(stats.read_calls, 22);
    let touched: BTreeSet<_> = SimControl::touch(state.as_ref(), Entity::Opportunity, 8).into_iter().collect();
    let deleted: BTreeSet<_> = SimControl::delete(state.as_ref(), Entity::Opportunity, 2).into_iter().collect();
    let incremental = testkit::pull_to_end(&connector, Entity::Opportunity, Some(run.cursor), 10).await.unwrap();
    let updated: BTreeSet<_> = incremental
        .changes
        .iter()
        .filter(|change| !change.is_delete())
        .map(|change| change.external_id.clone())
        .collect();
    let removed: BTreeSet<_> = incremental
        .changes
        .iter()
        .filter(|change| change.is_delete())
        .map(|change| change.external_id.clone())
        .collect();
    assert_eq!((updated, removed), (touched, deleted));
    assert_eq!(incremental.changes.len(), 10);
    assert_eq!(Simulated::stats(state.as_ref()).read_calls - stats.read_calls, 1, "one delta-link call");
}

fn orders(account: &Outgoing, account_id: &ExternalId, n: usize) -> Vec<Outgoing> {
    let account = RecordRef { canonical: Some(account.canonical_id), external: Some(account_id.clone()) };
    testkit::new_orders(&account, n, "SO-D")
}

#[tokio::test]
async fn pushing_1000_orders_costs_one_batch_per_1000_requests_and_pushing_them_again_creates_nothing() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let account = testkit::new_accounts(1, "Dataverse Customer").remove(0);
    let report = connector.push(Entity::Account, std::slice::from_ref(&account)).await.unwrap();
    let PushOutcome::Upserted { external_id: account_id, created: true, .. } = report.results[0].outcome.clone() else {
        panic!("{report:?}")
    };
    let batch = orders(&account, &account_id, 1000);
    let before = Simulated::stats(state.as_ref()).write_calls;
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    assert!(
        report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: true, .. })),
        "{:?}",
        report.results.iter().find(|result| !matches!(result.outcome, PushOutcome::Upserted { .. }))
    );
    // 1,000 order upserts + 1,000 line upserts = 2,000 requests = 2 `$batch` calls.
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 2);
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    assert!(report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: false, .. })));
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 1000, "re-push created no order");
    let first = state.live_ids(Entity::Order)[0].clone();
    assert_eq!(state.order_lines(&first).len(), 1, "re-push created no line");

    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let read = pulled.changes.iter().find(|change| change.canonical_hint == Some(batch[0].canonical_id)).unwrap();
    let EntityData::Order(order) = read.data().unwrap() else { panic!() };
    assert_eq!(order.total_amount, Some(19.into()), "totalamount computed from the line");
    assert_eq!(order.lines.as_ref().unwrap()[0].product.as_deref(), Some("Widget"));
    assert_eq!(order.account.as_ref().unwrap().external.as_ref(), Some(&account_id), "_customerid_value");
    assert_eq!(order.currency.as_ref().map(Currency::as_str), Some("EUR"), "transaction currency resolved");
    assert_eq!((order.status, order.channel), (Some(OrderStatus::Confirmed), Some(Channel::Ecommerce)));
}

#[tokio::test]
async fn orders_without_lines_fit_1000_in_one_batch() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let account = testkit::new_accounts(1, "Lineless").remove(0);
    let report = connector.push(Entity::Account, std::slice::from_ref(&account)).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = report.results[0].outcome.clone() else { panic!() };
    let mut batch = orders(&account, &external_id, 1000);
    for outgoing in &mut batch {
        if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut outgoing.op {
            order.lines = None;
        }
    }
    let before = Simulated::stats(running.state().as_ref()).write_calls;
    connector.push(Entity::Order, &batch).await.unwrap();
    assert_eq!(Simulated::stats(running.state().as_ref()).write_calls - before, 1);
}

#[tokio::test]
async fn an_expired_delta_token_leads_to_a_clean_full_resync() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(120, 0, 0)))).await;
    let connector = connector_with(&running, |_, config| config.max_page_size = 50);
    let run = testkit::pull_to_end(&connector, Entity::Account, None, 10).await.unwrap();
    assert_eq!((run.changes.len(), run.pages), (120, 3));
    running.state().expire_delta_tokens();
    let resync = testkit::pull_to_end(&connector, Entity::Account, Some(run.cursor), 10).await.unwrap();
    let ids: BTreeSet<_> = resync.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!(ids.len(), 120, "every row read again, none twice");
    SimControl::touch(running.state().as_ref(), Entity::Account, 3);
    let after = testkit::pull_to_end(&connector, Entity::Account, Some(resync.cursor), 10).await.unwrap();
    assert_eq!(after.changes.len(), 3, "the new delta link works");
}

#[tokio::test]
async fn a_table_without_change_tracking_is_read_by_modifiedon_and_check_says_so() {
    let mut options = Dynamics365SimOptions::with_world(world(only(30, 0, 0)));
    options.untracked = vec!["accounts"];
    let running = simulator(options).await;
    let connector = connector_with(&running, |settings, config| {
        settings.entities = vec![Entity::Account];
        config.max_page_size = 10;
    });
    let report = connector.check().await.unwrap();
    assert!(report.notes.iter().any(|note| note.contains("change tracking is off")), "{report:?}");
    let run = testkit::pull_to_end(&connector, Entity::Account, None, 10).await.unwrap();
    assert_eq!(run.changes.len(), 30);
    let touched: BTreeSet<_> = SimControl::touch(running.state().as_ref(), Entity::Account, 4).into_iter().collect();
    let again = testkit::pull_to_end(&connector, Entity::Account, Some(run.cursor), 10).await.unwrap();
    let seen: BTreeSet<_> = again.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!(seen, touched);
    let quiet = testkit::pull_to_end(&connector, Entity::Account, Some(again.cursor), 10).await.unwrap();
    assert!(quiet.changes.is_empty(), "the overlap window re-reads but never re-delivers");
}

#[tokio::test]
async fn a_partial_batch_failure_rejects_only_the_bad_record() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let mut batch = testkit::new_accounts(3, "Partial");
    batch[1].op =
        OutgoingOp::Upsert { data: EntityData::Account(Account { name: Some("x".repeat(200)), ..Account::default() }) };
    let report = connector.push(Entity::Account, &batch).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { .. }));
    assert!(
        matches!(&report.results[1].outcome, PushOutcome::Rejected { code, message } if code == "0x80044331" && message.contains("maximum allowed length")),
        "{:?}",
        report.results[1]
    );
    assert!(matches!(report.results[2].outcome, PushOutcome::Upserted { .. }));
    assert_eq!(SimControl::count(running.state().as_ref(), Entity::Account), 2);
}

#[tokio::test]
async fn a_429_carries_retry_after_and_is_recovered_and_a_token_expiry_refreshes_once() {
    let mut options = Dynamics365SimOptions::with_world(world(only(200, 0, 0)));
    options.faults = FaultSettings { rate_limit_after_calls: 1, rate_limit_for_calls: 1, ..FaultSettings::default() };
    let running = simulator(options).await;
    // One attempt: the error itself says how long Dataverse asked us to wait.
    let impatient = connector_with(&running, |settings, _| settings.http.retry.max_attempts = 1);
    let error = impatient.pull(Entity::Account, None).await.unwrap_err();
    assert!(
        matches!(&error, ConnectorError::RateLimited { retry_after: Some(wait), message } if *wait == Duration::from_secs(1) && message.contains("0x80072322")),
        "{error:?}"
    );

    let mut options = Dynamics365SimOptions::with_world(world(only(200, 0, 0)));
    options.retry_after_seconds = 0;
    options.faults = FaultSettings {
        rate_limit_after_calls: 2,
        rate_limit_for_calls: 2,
        token_expiry_after_calls: 4,
        ..FaultSettings::default()
    };
    let running = simulator(options).await;
    let connector = connector_with(&running, |_, config| config.max_page_size = 20);
    let run = testkit::pull_to_end(&connector, Entity::Account, None, 20).await.unwrap();
    assert_eq!(run.changes.len(), 200);
    let stats = Simulated::stats(running.state().as_ref());
    assert!(stats.token_calls >= 2, "the expired token was refreshed");
    assert!(stats.faulted_calls >= 3);
    assert!(connector.usage().vendor_limit == Some(6000), "x-ms-ratelimit headers read");
}

#[tokio::test]
async fn a_stale_etag_is_not_overwritten_and_a_won_opportunity_is_closed_once() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(2, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let account_id = ExternalId::new(state.live_ids(Entity::Account)[0].clone());
    let deal = Outgoing {
        canonical_id: CanonicalId::new(),
        external_id: None,
        expected_version: None,
        op: OutgoingOp::Upsert {
            data: EntityData::Opportunity(Opportunity {
                name: Some("Fleet renewal".into()),
                account: Some(RecordRef::external(account_id.as_str())),
                amount: Some(Money::new("125000.50".parse().unwrap(), Currency::new("GBP").unwrap())),
                stage: Some(Stage::Won),
                close_date: Some("2026-12-01".parse().unwrap()),
                ..Opportunity::default()
            }),
        },
    };
    let report = connector.push(Entity::Opportunity, std::slice::from_ref(&deal)).await.unwrap();
    let PushOutcome::Upserted { external_id, version: Some(version), .. } = report.results[0].outcome.clone() else {
        panic!("{report:?}")
    };
    let row = state.row(Entity::Opportunity, external_id.as_str()).unwrap();
    assert_eq!((row["statecode"].clone(), row["estimatedvalue"].clone()), (json!(1), json!(125000.5)));
    // Pushing it again: the close action finds it closed, which is what we wanted.
    let report = connector.push(Entity::Opportunity, std::slice::from_ref(&deal)).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { created: false, .. }), "{report:?}");

    // An account edited in Dataverse since crmsync read it: the update waits for the next pull.
    let pulled = testkit::pull_to_end(&connector, Entity::Account, None, 5).await.unwrap();
    let seen = pulled.changes.iter().find(|change| change.external_id == account_id).unwrap();
    state.edit(Entity::Account, account_id.as_str(), &[("telephone1", json!("+44 20 7946 0000"))]);
    let update = Outgoing {
        canonical_id: CanonicalId::new(),
        external_id: Some(account_id.clone()),
        expected_version: seen.version.clone(),
        op: OutgoingOp::Upsert {
            data: EntityData::Account(Account { name: Some("Renamed".into()), ..Account::default() }),
        },
    };
    let report = connector.push(Entity::Account, std::slice::from_ref(&update)).await.unwrap();
    assert!(
        matches!(&report.results[0].outcome, PushOutcome::Retry { message } if message.contains("changed in Dataverse")),
        "{report:?}"
    );
    assert_ne!(state.row(Entity::Account, account_id.as_str()).unwrap()["name"], json!("Renamed"));
    assert!(version.starts_with("W/\""));
}

#[tokio::test]
async fn webhooks_are_authenticated_by_header_or_code_and_deletes_carry_their_time() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(1, 0, 0)))).await;
    let by_header = connector(&running);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-crmsync-key", sim::WEBHOOK_KEY.parse().unwrap());
    let update = br#"{"MessageName":"Update","PrimaryEntityName":"opportunity","PrimaryEntityId":"{6F5C2F30-0000-4000-8000-0000000000AA}","Depth":1,"OperationCreatedOn":"/Date(1764000000000-0000)/"}"#;
    let reply = by_header.parse_webhook(&delivery(&headers, None, update)).unwrap();
    assert!(
        matches!(&reply.events[..], [WebhookEvent::Fetch { entity: Entity::Opportunity, ids }] if ids[0].as_str() == "6f5c2f30-0000-4000-8000-0000000000aa")
    );
    let delete = br#"{"MessageName":"Delete","PrimaryEntityName":"salesorder","PrimaryEntityId":"6f5c2f30-0000-4000-8000-0000000000bb","OperationCreatedOn":"/Date(1764000000000-0700)/"}"#;
    let reply = by_header.parse_webhook(&delivery(&headers, None, delete)).unwrap();
    let [WebhookEvent::Changed(change)] = &reply.events[..] else { panic!("{reply:?}") };
    assert!(change.is_delete());
    assert_eq!(change.modified_at, Timestamp::from_unix_millis(1_764_000_000_000).unwrap());
    let empty = reqwest::header::HeaderMap::new();
    assert!(matches!(by_header.parse_webhook(&delivery(&empty, None, update)), Err(WebhookError::Unauthenticated(_))));

    let by_code = connector_with(&running, |_, config| {
        config.webhook = Some(Dynamics365Webhook { key: SecretString::from("k3y".to_owned()), header: None });
    });
    assert!(by_code.parse_webhook(&delivery(&empty, Some("code=k3y"), update)).is_ok());
    assert!(matches!(
        by_code.parse_webhook(&delivery(&empty, Some("code=k3"), update)),
        Err(WebhookError::Unauthenticated(_))
    ));
    assert!(matches!(
        by_code.parse_webhook(&delivery(&empty, Some("code=k3y"), b"{\"truncated")),
        Err(WebhookError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_wrong_client_secret_is_a_clear_invalid_grant() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(1, 0, 0)))).await;
    let connector = connector_with(&running, |_, config| config.client_secret = SecretString::from("nope".to_owned()));
    let error = connector.pull(Entity::Account, None).await.unwrap_err();
    assert!(matches!(error, ConnectorError::InvalidGrant { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("AADSTS7000215") && !text.contains("nope"), "{text}");
}

#[test]
fn money_stages_and_lookups_map_losslessly() {
    let base: url::Url = "https://contoso.crm4.dynamics.com".parse().unwrap();
    let config = config(&base);
    let vocabulary = Vocabulary::defaults(VendorKind::Dynamics365);
    let currencies = Currencies::new([("c-gbp".to_owned(), "GBP".to_owned())]);
    let products = Products::default();
    let context = MapContext {
        vocabulary: &vocabulary,
        config: &config,
        currencies: &currencies,
        products: &products,
        default_currency: &Currency::new("USD").unwrap(),
    };
    let row = json!({
        "@odata.etag": "W/\"72201545\"", "opportunityid": "49b0be2e-d01c-ed11-b83e-000d3a572421", "name": "Big deal",
        "estimatedvalue": 5000000.0001, "_transactioncurrencyid_value": "c-gbp",
        "_customerid_value": "0a0b0c0d-0000-0000-0000-000000000001", "_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "account",
        "salesstage": 0, "budgetstatus": 2, "statecode": 0, "closeprobability": 40, "estimatedclosedate": "2024-03-31",
        "crmsync_channel": "Partner", "modifiedon": "2024-01-02T03:04:05Z", "new_region": "EMEA",
    });
    let change =
        mapping::to_change(Entity::Opportunity, row.as_object().unwrap(), None, &context, &mut Vec::new()).unwrap();
    assert_eq!(change.version.as_deref(), Some("W/\"72201545\""));
    assert_eq!(change.extra.get("new_region"), Some(&json!("EMEA")), "unmapped columns kept");
    let EntityData::Opportunity(deal) = change.data().unwrap() else { panic!() };
    assert_eq!(deal.amount.as_ref().unwrap().to_string(), "5000000.0001 GBP");
    assert_eq!(deal.stage, Some(Stage::Budget), "salesstage 0 with a budget status");
    assert_eq!(deal.account, Some(RecordRef::external("0a0b0c0d-0000-0000-0000-000000000001")));
    assert_eq!(deal.channel, Some(Channel::Agent));
    let mut contact = row.as_object().unwrap().clone();
    contact.insert("_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname".into(), json!("contact"));
    contact.insert("statecode".into(), json!(2));
    let change = mapping::to_change(Entity::Opportunity, &contact, None, &context, &mut Vec::new()).unwrap();
    let EntityData::Opportunity(deal) = change.data().unwrap() else { panic!() };
    assert_eq!((deal.account.clone(), deal.stage, deal.is_closed), (None, Some(Stage::Lost), Some(true)));

    // Writing: the currency and the account go as binds; budget is salesstage 0 plus a budget status.
    let canonical = CanonicalId::new();
    let write = mapping::to_row(
        canonical,
        &EntityData::Opportunity(Opportunity {
            account: Some(RecordRef::canonical(canonical)),
            amount: Some(Money::new("10.5".parse().unwrap(), Currency::new("GBP").unwrap())),
            stage: Some(Stage::Budget),
            ..Opportunity::default()
        }),
        &context,
        &BTreeSet::new(),
        true,
    );
    assert_eq!(write.body["transactioncurrencyid@odata.bind"], json!("/transactioncurrencies(c-gbp)"));
    assert_eq!(write.body["customerid_account@odata.bind"], json!(format!("/accounts(crmsync_id='{canonical}')")));
    assert_eq!((write.body["salesstage"].clone(), write.body["budgetstatus"].clone()), (json!(0), json!(2)));
    assert!(!write.body.contains_key("crmsync_id"), "the key addressed by the URL is not repeated");
}

/// Found by `crmsync bench` (13,000 orders): reading the lines of each page of orders takes one-page
/// line queries (100 orders each); the simulator kept a paging snapshot for each, pushing the
/// orders' own cookie out of its window ("Invalid paging cookie") before the last page. Here the
/// window is 4 and the pages 200 orders (2 line queries each), so the third page used to fail.
#[tokio::test]
async fn a_long_order_read_pages_to_the_end_while_the_lines_are_looked_up() {
    let running = simulator(Dynamics365SimOptions {
        snapshots_kept: 4,
        ..Dynamics365SimOptions::with_world(world(only(5, 0, 1000)))
    })
    .await;
    let connector = connector_with(&running, |_, config| config.max_page_size = 200);
    let run = testkit::pull_to_end(&connector, Entity::Order, None, 20).await.unwrap();
    let ids: BTreeSet<_> = run.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!((ids.len(), run.changes.len()), (1000, 1000));
    assert_eq!(run.pages, 5);
    for change in &run.changes {
        let EntityData::Order(order) = change.data().unwrap() else { panic!() };
        assert!(order.lines.as_ref().is_some_and(|lines| !lines.is_empty()), "{order:?}");
    }
}

#[tokio::test]
async fn seeded_orders_read_with_catalogue_products_skus_and_totals() {
    let running = simulator(Dynamics365SimOptions::with_world(world(WorldSize {
        accounts: 20,
        leads: 0,
        opportunities: 0,
        orders: 30,
    })))
    .await;
    let connector = connector(&running);
    let run = testkit::pull_to_end(&connector, Entity::Order, None, 5).await.unwrap();
    assert!(!run.changes.is_empty());
    for change in &run.changes {
        let EntityData::Order(order) = change.data().unwrap() else { panic!() };
        let lines = order.lines.as_ref().unwrap();
        assert!(!lines.is_empty());
        for line in lines {
            assert!(line.product.is_some() && line.sku.is_some(), "{line:?}");
            assert_eq!(line.line_total, line.quantity * line.unit_price);
        }
        let total: rust_decimal::Decimal = lines.iter().map(|line| line.line_total).sum();
        assert_eq!(order.total_amount, Some(total));
    }
}

#[tokio::test]
async fn a_truncated_page_is_a_decode_error_and_the_same_cursor_reads_it_again() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(120, 0, 0)))).await;
    let connector = connector_with(&running, |_, config| config.max_page_size = 50);
    let first = connector.pull(Entity::Account, None).await.unwrap();
    Simulated::faults(running.state().as_ref()).apply(&FaultSettings { truncate_next: 10, ..FaultSettings::default() });
    let error = connector.pull(Entity::Account, Some(&first.cursor)).await.unwrap_err();
    assert!(matches!(error, ConnectorError::Decode { .. }), "{error}");
    Simulated::faults(running.state().as_ref()).apply(&FaultSettings::default());
    let second = connector.pull(Entity::Account, Some(&first.cursor)).await.unwrap();
    assert_eq!(second.changes.len(), 50, "the same page again from the kept cursor");
}
