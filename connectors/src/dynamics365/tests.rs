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
            header: Some(sim::WEBHOOK_HEADER.into()),
        }),
        create_defaults: sim_create_defaults(),
    }
}

/// The defaults `sim::connection_toml` configures: the org's price list for orders, a topic for leads.
fn sim_create_defaults() -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>> {
    [
        ("salesorder", "pricelevelid", json!(format!("/pricelevels({})", sim::PRICE_LIST_ID))),
        ("lead", "subject", json!("Lead from crmsync")),
    ]
    .into_iter()
    .map(|(table, column, value)| (table.to_owned(), [(column.to_owned(), value)].into_iter().collect()))
    .collect()
}

fn connector_with(
    running: &RunningDynamics365Sim,
    tweak: impl FnOnce(&mut ConnectionSettings, &mut Dynamics365Config),
) -> Dynamics365Connector {
    let mut settings = ConnectionSettings::new("d365", Vocabulary::defaults(VendorKind::Dynamics365));
    settings.http.retry = RetryPolicy {
        give_up_after: Duration::from_secs(20),
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
    };
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
    forged.insert(sim::WEBHOOK_HEADER, "guess".parse().unwrap());
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
    // A change-tracked read does not ask `$count` (not among its documented options): no total.
    assert!(run.totals.iter().all(Option::is_none), "{:?}", run.totals);
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
async fn pushing_1000_orders_costs_a_state_read_and_one_batch_per_1000_requests_and_pushing_them_again_creates_nothing()
{
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
    // One `$batch` of 1,000 GETs reads what Dataverse has (nothing yet), then 1,000 order creates,
    // 1,000 line creates and 1,000 SetState requests (the orders are confirmed = Submitted) go 333
    // orders (999 requests) per `$batch`: 4 calls, a record's requests never split over two.
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 5);
    let first = state.live_ids(Entity::Order)[0].clone();
    let row = state.row(Entity::Order, &first).unwrap();
    assert_eq!((row["statecode"].clone(), row["statuscode"].clone()), (json!(1), json!(3)), "Submitted, In Progress");
    let before = Simulated::stats(state.as_ref()).write_calls;
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    assert!(report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: false, .. })));
    // The read of the orders and of their lines; submitted orders are read-only, so nothing else.
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 2);
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 1000, "re-push created no order");
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
async fn orders_without_lines_cost_a_state_read_and_two_requests_each() {
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
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    assert!(report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: true, .. })));
    // The state read, then 1,000 creates + 1,000 SetState requests in two full `$batch` calls.
    assert_eq!(Simulated::stats(running.state().as_ref()).write_calls - before, 3);
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

/// Pulls `entity` to its end from `cursor`: each page's [`FullRead`] mark, and the last cursor.
async fn full_read_marks(
    connector: &Dynamics365Connector,
    entity: Entity,
    mut cursor: Option<Cursor>,
) -> (Vec<FullRead>, Cursor) {
    let mut marks = Vec::new();
    for _ in 0..20 {
        let page = connector.pull(entity, cursor.as_ref()).await.unwrap();
        marks.push(page.full_read);
        cursor = Some(page.cursor);
        if !page.has_more {
            break;
        }
    }
    (marks, cursor.unwrap())
}

/// The initial read and the read an expired delta token starts are full reads from their first
/// page to their last (the daemon infers deletes from what one did not deliver); a delta read is
/// none. Orders: the token reads and the orders by id are one full read.
#[tokio::test]
async fn full_reads_are_marked_from_their_first_page_to_their_last_and_delta_reads_are_not() {
    use FullRead::{Begins, Continues, No};
    let running = simulator(Dynamics365SimOptions::with_world(world(only(120, 0, 12)))).await;
    let connector = connector_with(&running, |_, config| config.max_page_size = 50);
    let (initial, cursor) = full_read_marks(&connector, Entity::Account, None).await;
    assert_eq!(initial, [Begins, Continues, Continues]);
    SimControl::touch(running.state().as_ref(), Entity::Account, 3);
    let (delta, cursor) = full_read_marks(&connector, Entity::Account, Some(cursor)).await;
    assert_eq!(delta, [No]);
    running.state().expire_delta_tokens();
    let (resync, cursor) = full_read_marks(&connector, Entity::Account, Some(cursor)).await;
    assert_eq!(resync, [Begins, Continues, Continues], "the expired token restarts a full read");
    let (quiet, _) = full_read_marks(&connector, Entity::Account, Some(cursor)).await;
    assert_eq!(quiet, [No]);

    let (orders, cursor) = full_read_marks(&connector, Entity::Order, None).await;
    assert!(orders.len() >= 3 && orders[0] == Begins, "{orders:?}");
    assert!(orders[1..].iter().all(|mark| *mark == Continues), "{orders:?}");
    running.state().expire_delta_tokens();
    let (again, _) = full_read_marks(&connector, Entity::Order, Some(cursor)).await;
    assert_eq!(again, orders, "an expired orders' token reads them in full again, the same way");
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
    // `$count=true` on the read: `@odata.count` on its first page is the total; the next links
    // do not repeat it.
    assert_eq!(run.totals, [Some(30), None, None]);
    let touched: BTreeSet<_> = SimControl::touch(running.state().as_ref(), Entity::Account, 4).into_iter().collect();
    let again = testkit::pull_to_end(&connector, Entity::Account, Some(run.cursor), 10).await.unwrap();
    let seen: BTreeSet<_> = again.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!(seen, touched);
    // The rows `modifiedon ge` the re-read window's floor: the 4 touched and those the overlap
    // window re-reads (delivered once, so fewer than the total come out).
    let counted = again.totals.first().copied().flatten();
    assert!(counted.is_some_and(|total| (4..=30).contains(&total)), "{:?}", again.totals);
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
    let impatient = connector_with(&running, |settings, _| settings.http.retry.give_up_after = Duration::ZERO);
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
    // Created, then won: the version after the close is not known until the next read.
    let PushOutcome::Upserted { external_id, created: true, version: None } = report.results[0].outcome.clone() else {
        panic!("{report:?}")
    };
    let row = state.row(Entity::Opportunity, external_id.as_str()).unwrap();
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone(), row["estimatedvalue"].clone()),
        (json!(1), json!(3), json!(125000.5))
    );
    // Pushing it again: it is won already, and won opportunities are read-only, so nothing is sent
    // (neither a PATCH nor a second WinOpportunity, which Dataverse refuses with 0x80040515).
    let before = Simulated::stats(state.as_ref()).write_calls;
    let report = connector.push(Entity::Opportunity, std::slice::from_ref(&deal)).await.unwrap();
    let PushOutcome::Upserted { created: false, version: Some(version), .. } = report.results[0].outcome.clone() else {
        panic!("{report:?}")
    };
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 1, "the state read only");

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
    headers.insert(sim::WEBHOOK_HEADER, sim::WEBHOOK_KEY.parse().unwrap());
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
    let json = row.to_string();
    let change =
        mapping::to_change(Entity::Opportunity, &RawRow::parse(&json).unwrap(), None, &context, &mut Vec::new())
            .unwrap();
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
    let json = Value::Object(contact).to_string();
    let change =
        mapping::to_change(Entity::Opportunity, &RawRow::parse(&json).unwrap(), None, &context, &mut Vec::new())
            .unwrap();
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
    let run = testkit::pull_to_end(&connector, Entity::Order, None, 40).await.unwrap();
    let ids: BTreeSet<_> = run.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!((ids.len(), run.changes.len()), (1000, 1000));
    // 5 pages of order ids for the orders' change-tracking token, the lines' order ids for theirs,
    // then 5 pages of orders with their lines.
    let lines = usize::try_from(Simulated::stats(running.state().as_ref()).records["salesorderdetails"]).unwrap();
    assert_eq!(run.pages, 5 + lines.div_ceil(200) + 5);
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
async fn a_page_truncated_past_the_retry_budget_is_a_decode_error_and_the_same_cursor_reads_it_again() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(120, 0, 0)))).await;
    let connector = connector_with(&running, |settings, config| {
        config.max_page_size = 50;
        settings.http.retry.give_up_after = Duration::from_millis(300);
    });
    let first = connector.pull(Entity::Account, None).await.unwrap();
    Simulated::faults(running.state().as_ref())
        .apply(&FaultSettings { truncate_next: u64::MAX, ..FaultSettings::default() });
    let error = connector.pull(Entity::Account, Some(&first.cursor)).await.unwrap_err();
    assert!(matches!(error.root(), ConnectorError::Decode { .. }), "{error}");
    Simulated::faults(running.state().as_ref()).apply(&FaultSettings::default());
    let second = connector.pull(Entity::Account, Some(&first.cursor)).await.unwrap();
    assert_eq!(second.changes.len(), 50, "the same page again from the kept cursor");
}

/// The largest page there is, 5,000 orders with their lines expanded, is read from its body without
/// decoding it into maps: cut off past the retry budget, it is still a decode error naming the read
/// and where the body ended, and the same cursor reads the page again, every order with its lines.
#[tokio::test]
async fn a_truncated_page_of_orders_with_their_lines_is_a_decode_error_and_the_same_cursor_reads_it_again() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(5, 0, 120)))).await;
    let connector = connector_with(&running, |settings, config| {
        config.max_page_size = 50;
        settings.http.retry.give_up_after = Duration::from_millis(300);
    });
    // The change-tracking token reads come first; stop where the orders are read with their lines.
    let mut cursor = None;
    for _ in 0..20 {
        let page = connector.pull(Entity::Order, cursor.as_ref()).await.unwrap();
        let position: Position = page.cursor.decode().unwrap();
        cursor = Some(page.cursor);
        if matches!(position.orders, Some(OrderRead::Rows { .. })) {
            break;
        }
    }
    let position: Position = cursor.as_ref().unwrap().decode().unwrap();
    assert!(matches!(position.orders, Some(OrderRead::Rows { .. })), "{position:?}");
    Simulated::faults(running.state().as_ref())
        .apply(&FaultSettings { truncate_next: u64::MAX, ..FaultSettings::default() });
    let error = connector.pull(Entity::Order, cursor.as_ref()).await.unwrap_err();
    assert!(matches!(error.root(), ConnectorError::Decode { .. }), "{error}");
    let message = crate::error::chain(&error);
    assert!(message.contains("salesorders with their lines") && message.contains("EOF while parsing"), "{message}");
    Simulated::faults(running.state().as_ref()).apply(&FaultSettings::default());
    let page = connector.pull(Entity::Order, cursor.as_ref()).await.unwrap();
    assert_eq!(page.changes.len(), 50, "the same page again from the kept cursor");
    for change in &page.changes {
        let EntityData::Order(order) = change.data().unwrap() else { panic!("not an order") };
        assert!(order.lines.as_ref().is_some_and(|lines| !lines.is_empty()), "{order:?}");
        assert!(change.extra.is_empty(), "the expansion is not an unmapped column: {:?}", change.extra);
    }
}

// ---- Issue 13 §1: lookups by logical name, tables described as Dataverse describes them -----------

/// `EntityDefinitions(LogicalName='salesorder')` with `$expand=Attributes(...)`, shaped like the
/// documented response of powerapps-docs:powerapps-docs/developer/data-platform/webapi/query-metadata-web-api.md
/// (the definition inside `value`, `MetadataId` always returned) with the `AttributeMetadata`
/// properties of the table reference ce/developer/entities/salesorder.md (a lookup listed by its
/// logical name with `AttributeType` `Customer`/`Lookup`/`Owner`; `customeridname` extends `customerid`).
const SALESORDER_DEFINITION: &str = include_str!("fixtures/salesorder_definition.json");

#[test]
fn a_documented_definition_maps_lookups_to_their_value_properties_and_knows_what_a_create_needs() {
    let response: wire::DefinitionResponse = serde_json::from_str(SALESORDER_DEFINITION).unwrap();
    let described = Described::new(response.into_definition().unwrap());
    assert!(described.tracking);
    for property in ["_customerid_value", "_transactioncurrencyid_value", "_pricelevelid_value", "_ownerid_value"] {
        assert!(described.columns.contains(property), "{property} in {:?}", described.columns);
    }
    assert!(!described.columns.contains("customerid"), "a lookup is never read by its logical name");
    assert!(!described.attributes.contains_key("customeridname"), "columns that extend another are not written");

    let base: url::Url = "https://contoso.crm4.dynamics.com".parse().unwrap();
    let config = Dynamics365Config { channel_field: None, ..config(&base) };
    let select = mapping::select(Entity::Order, &described.columns, &BTreeSet::new(), &config).unwrap();
    for property in ["_customerid_value", "_transactioncurrencyid_value", "name", "statecode", "totalamount"] {
        assert!(select.iter().any(|column| column == property), "{property} in $select {select:?}");
    }
    let required: BTreeSet<&str> =
        push::required_on_create(&described).map(|attribute| attribute.logical_name.as_str()).collect();
    // ordernumber and the currency are filled by Dataverse, owner/state/status by the platform.
    assert_eq!(required, BTreeSet::from(["name", "customerid", "pricelevelid"]));

    // The same definition as the bare entity (how an entity addressed by key usually comes).
    let bare: serde_json::Value = serde_json::from_str(SALESORDER_DEFINITION).unwrap();
    let single: wire::DefinitionResponse = serde_json::from_value(bare["value"][0].clone()).unwrap();
    assert_eq!(Described::new(single.into_definition().unwrap()).columns, described.columns);
}

#[test]
fn a_mapped_column_the_table_lacks_is_schema_drift_naming_it() {
    let response: wire::DefinitionResponse = serde_json::from_str(SALESORDER_DEFINITION).unwrap();
    let mut definition = response.into_definition().unwrap();
    definition.attributes.retain(|attribute| attribute.logical_name != "transactioncurrencyid");
    let described = Described::new(definition);
    let base: url::Url = "https://contoso.crm4.dynamics.com".parse().unwrap();
    let config = Dynamics365Config { channel_field: None, ..config(&base) };
    let error = mapping::select(Entity::Order, &described.columns, &BTreeSet::new(), &config).unwrap_err();
    assert!(
        matches!(&error, ConnectorError::SchemaDrift { message, .. } if message.contains("_transactioncurrencyid_value")),
        "{error}"
    );
    // A channel column that does not exist is drift too, not a silently empty channel.
    let config = Dynamics365Config { channel_field: Some("new_channel".into()), ..config };
    let error = mapping::select(Entity::Order, &described.columns, &BTreeSet::new(), &config).unwrap_err();
    assert!(error.to_string().contains("new_channel"), "{error}");
}

#[tokio::test]
async fn opportunities_and_orders_read_with_their_account_and_currency() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(30, 60, 60)))).await;
    let connector = connector(&running);
    for entity in [Entity::Opportunity, Entity::Order] {
        let run = testkit::pull_to_end(&connector, entity, None, 10).await.unwrap();
        assert!(!run.changes.is_empty());
        let mut currencies = BTreeSet::new();
        for change in &run.changes {
            let (account, currency) = match change.data().unwrap() {
                EntityData::Opportunity(deal) => {
                    (deal.account.clone(), deal.amount.as_ref().map(|amount| amount.currency.as_str().to_owned()))
                }
                EntityData::Order(order) => {
                    (order.account.clone(), order.currency.as_ref().map(|currency| currency.as_str().to_owned()))
                }
                other => panic!("{other:?}"),
            };
            assert!(account.is_some_and(|account| account.external.is_some()), "{entity}: {change:?}");
            currencies.insert(currency.unwrap());
        }
        // The world's deals are a fifth in USD, the rest in EUR; its orders are all in EUR: none may
        // fall back to the org's USD.
        let expected: BTreeSet<String> = match entity {
            Entity::Opportunity => ["EUR", "USD"].map(str::to_owned).into(),
            _ => ["EUR"].map(str::to_owned).into(),
        };
        assert_eq!(currencies, expected, "{entity}");
    }
}

// ---- Issue 13 §1c: what Dataverse requires and refuses, checked before the call ------------------

/// A raw Web API client of the simulator, to see the simulator's own answers.
async fn raw(running: &RunningDynamics365Sim) -> (reqwest::Client, String, String) {
    let client = reqwest::Client::new();
    let base = running.base_url();
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let token: serde_json::Value = client
        .post(format!("{base}/{}/oauth2/v2.0/token", sim::TENANT_ID))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", sim::CLIENT_ID),
            ("client_secret", sim::CLIENT_SECRET),
            ("scope", &format!("http://{host}/.default")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (client, token["access_token"].as_str().unwrap().to_owned(), format!("{base}/api/data/v9.2"))
}

async fn call(
    client: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = client.request(method, url).bearer_auth(token).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn the_simulator_refuses_what_dataverse_documents_it_refuses() {
    let running = simulator(Dynamics365SimOptions::with_world(world(WorldSize {
        accounts: 3,
        leads: 0,
        opportunities: 0,
        orders: 0,
    })))
    .await;
    let (client, token, api) = raw(&running).await;
    let account = running.state().live_ids(Entity::Account)[0].clone();
    let code = |answer: &serde_json::Value| answer["error"]["code"].as_str().unwrap_or_default().to_owned();
    let order = |extra: serde_json::Value| {
        let mut body = json!({
            "name": "SO-RULES", "customerid_account@odata.bind": format!("/accounts({account})"),
            "pricelevelid@odata.bind": format!("/pricelevels({})", sim::PRICE_LIST_ID),
        });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let post = reqwest::Method::POST;
    let patch = reqwest::Method::PATCH;

    // statecode is not valid for create; a create without the price list misses a required column.
    let (status, answer) =
        call(&client, &token, post.clone(), &format!("{api}/salesorders"), order(json!({"statecode": 1}))).await;
    assert_eq!((status, code(&answer)), (400, "0x80040203".into()), "{answer}");
    let (status, answer) = call(
        &client,
        &token,
        post.clone(),
        &format!("{api}/salesorders"),
        json!({"name": "SO-X", "customerid_account@odata.bind": format!("/accounts({account})")}),
    )
    .await;
    assert_eq!((status, code(&answer)), (400, "0x80040200".into()), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("pricelevelid"), "{answer}");

    // An active order takes lines; SetState to Submitted; then it is read-only and takes no line.
    let (status, _) =
        call(&client, &token, patch.clone(), &format!("{api}/salesorders(crmsync_id='o1')"), order(json!({}))).await;
    assert_eq!(status, 204);
    let line = |n: usize| {
        (
            format!("{api}/salesorderdetails(crmsync_id='o1:{n}')"),
            json!({"salesorderid@odata.bind": "/salesorders(crmsync_id='o1')", "productdescription": "Thing", "isproductoverridden": true, "quantity": 1, "priceperunit": 5}),
        )
    };
    let (url, body) = line(0);
    assert_eq!(call(&client, &token, patch.clone(), &url, body).await.0, 204);
    let (status, answer) = call(
        &client,
        &token,
        patch.clone(),
        &format!("{api}/salesorders(crmsync_id='o1')"),
        json!({"statecode": 3, "statuscode": 100001}),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (400, "0x80040203".into()),
        "fulfilled only through FulfillSalesOrder: {answer}"
    );
    let submit = json!({"statecode": 1, "statuscode": 3});
    assert_eq!(
        call(&client, &token, patch.clone(), &format!("{api}/salesorders(crmsync_id='o1')"), submit).await.0,
        204
    );
    let (url, body) = line(1);
    let (status, answer) = call(&client, &token, patch.clone(), &url, body).await;
    assert_eq!((status, code(&answer)), (400, "0x80043b09".into()), "{answer}");
    let (status, answer) =
        call(&client, &token, patch.clone(), &format!("{api}/salesorders(crmsync_id='o1')"), json!({"name": "SO-NEW"}))
            .await;
    assert_eq!((status, code(&answer)), (400, "0x8004022e".into()), "{answer}");
    let fulfil = json!({"OrderClose": {"@odata.type": "Microsoft.Dynamics.CRM.orderclose", "subject": "x", "salesorderid@odata.bind": "/salesorders(crmsync_id='o1')"}, "Status": 100001});
    let fulfil_url = format!("{api}/salesorders/Microsoft.Dynamics.CRM.FulfillSalesOrder");
    assert_eq!(call(&client, &token, post.clone(), &fulfil_url, fulfil.clone()).await.0, 204);
    let (status, _) = call(&client, &token, post.clone(), &fulfil_url, fulfil).await;
    assert_eq!(status, 400, "a fulfilled order is not fulfilled again");

    // A won opportunity is read-only and cannot be won again.
    let deal = json!({"name": "Deal", "customerid_account@odata.bind": format!("/accounts({account})")});
    assert_eq!(
        call(&client, &token, patch.clone(), &format!("{api}/opportunities(crmsync_id='d1')"), deal).await.0,
        204
    );
    let win = json!({"Status": 3, "OpportunityClose": {"subject": "Won", "opportunityid@odata.bind": "/opportunities(crmsync_id='d1')"}});
    assert_eq!(call(&client, &token, post.clone(), &format!("{api}/WinOpportunity"), win.clone()).await.0, 204);
    let (status, answer) = call(&client, &token, post.clone(), &format!("{api}/WinOpportunity"), win).await;
    assert_eq!((status, code(&answer)), (400, "0x80040515".into()), "{answer}");
    assert_eq!(answer["error"]["message"], "The opportunity is already closed.");
    let (status, answer) =
        call(&client, &token, patch, &format!("{api}/opportunities(crmsync_id='d1')"), json!({"name": "Renamed"}))
            .await;
    assert_eq!((status, code(&answer)), (400, "0x8004022e".into()), "{answer}");

    // The definition lists the lookup by its logical name, with its requirement level.
    let definition: serde_json::Value = client
        .get(format!(
            "{api}/EntityDefinitions(LogicalName='salesorder')?$select=LogicalName&$expand=Attributes($select=LogicalName,AttributeType,RequiredLevel)"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let customer = definition["Attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|attribute| attribute["LogicalName"] == "customerid")
        .unwrap();
    assert_eq!(
        (customer["AttributeType"].clone(), customer["RequiredLevel"]["Value"].clone()),
        (json!("Customer"), json!("ApplicationRequired"))
    );
    assert!(customer.get("MetadataId").is_some() && customer.get("IsValidForCreate").is_none(), "$select honoured");
}

#[tokio::test]
async fn a_create_missing_a_required_column_is_rejected_before_any_call_naming_it() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(2, 0, 0)))).await;
    let bare = connector_with(&running, |_, config| config.create_defaults.clear());
    let state = running.state();
    let account_id = ExternalId::new(state.live_ids(Entity::Account)[0].clone());
    let account = RecordRef { canonical: Some(CanonicalId::new()), external: Some(account_id.clone()) };
    let batch = orders(
        &Outgoing { canonical_id: account.canonical.unwrap(), ..testkit::new_accounts(1, "x").remove(0) },
        &account_id,
        2,
    );
    let before = Simulated::stats(state.as_ref()).write_calls;
    let report = bare.push(Entity::Order, &batch).await.unwrap();
    for result in &report.results {
        assert!(
            matches!(&result.outcome, PushOutcome::Rejected { code, message } if code == "RequiredFieldMissing" && message.contains("salesorder.pricelevelid") && message.contains("create_defaults")),
            "{result:?}"
        );
    }
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 1, "the state read, no write");
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 0);

    let report = bare.check().await.unwrap();
    assert!(report.notes.iter().any(|note| note.contains("pricelevelid")), "{report:?}");
    assert!(report.notes.iter().any(|note| note.contains("leads: column subject")), "{report:?}");

    // A lead has no canonical topic: without a default it is refused; an opportunity without an
    // account has no customer.
    let lead = Outgoing {
        canonical_id: CanonicalId::new(),
        external_id: None,
        expected_version: None,
        op: OutgoingOp::Upsert {
            data: EntityData::Lead(crate::canonical::Lead { name: Some("Ada Lovelace".into()), ..Default::default() }),
        },
    };
    let report = bare.push(Entity::Lead, std::slice::from_ref(&lead)).await.unwrap();
    assert!(
        matches!(&report.results[0].outcome, PushOutcome::Rejected { message, .. } if message.contains("lead.subject")),
        "{report:?}"
    );
    let deal = Outgoing {
        canonical_id: CanonicalId::new(),
        external_id: None,
        expected_version: None,
        op: OutgoingOp::Upsert {
            data: EntityData::Opportunity(Opportunity { name: Some("Orphan".into()), ..Opportunity::default() }),
        },
    };
    let report = bare.push(Entity::Opportunity, std::slice::from_ref(&deal)).await.unwrap();
    assert!(
        matches!(&report.results[0].outcome, PushOutcome::Rejected { message, .. } if message.contains("opportunity.customerid") && message.contains("canonical account")),
        "{report:?}"
    );

    // With the documented defaults configured, the same records are created.
    let configured = connector(&running);
    let report = configured.push(Entity::Order, &batch).await.unwrap();
    assert!(
        report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: true, .. })),
        "{report:?}"
    );
    let report = configured.push(Entity::Lead, std::slice::from_ref(&lead)).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { created: true, .. }), "{report:?}");
}

// ---- Issue 15: an order in each status ends in the documented state, read back without echo ------

fn order_in(status: OrderStatus, account_id: &ExternalId, number: &str) -> Outgoing {
    let account = RecordRef::external(account_id.as_str());
    let mut outgoing = testkit::new_orders(&account, 1, number).remove(0);
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut outgoing.op {
        order.status = Some(status);
    }
    outgoing
}

#[tokio::test]
async fn an_order_pushed_in_each_status_ends_in_the_documented_state_and_reads_back_as_pushed() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(2, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let account_id = ExternalId::new(state.live_ids(Entity::Account)[0].clone());
    // SPEC §2 and ce/developer/entities/salesorder.md: (statecode, default statuscode).
    let expected = [
        (OrderStatus::Draft, 0, 1),
        (OrderStatus::Confirmed, 1, 3),
        (OrderStatus::Shipped, 3, 100_001),
        (OrderStatus::Delivered, 3, 100_001),
        (OrderStatus::Invoiced, 4, 100_003),
        (OrderStatus::Cancelled, 2, 4),
    ];
    let batch: Vec<Outgoing> =
        expected.iter().map(|(status, ..)| order_in(*status, &account_id, &format!("SO-{status}"))).collect();
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    let mut ids = Vec::new();
    for ((status, state_code, status_code), result) in expected.iter().zip(&report.results) {
        let PushOutcome::Upserted { external_id, created: true, .. } = &result.outcome else {
            panic!("{status}: {result:?}")
        };
        let row = state.row(Entity::Order, external_id.as_str()).unwrap();
        assert_eq!(
            (row["statecode"].clone(), row["statuscode"].clone()),
            (json!(state_code), json!(status_code)),
            "{status}"
        );
        assert_eq!(state.order_lines(external_id.as_str()).len(), 1, "{status}: the line was added while active");
        ids.push(external_id.clone());
    }
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let vocabulary = Vocabulary::defaults(VendorKind::Dynamics365);
    for (outgoing, id) in batch.iter().zip(&ids) {
        let read = pulled.changes.iter().find(|change| &change.external_id == id).unwrap();
        let OutgoingOp::Upsert { data } = &outgoing.op else { panic!() };
        let EntityData::Order(pushed) = connector.representable(data) else { panic!() };
        let EntityData::Order(order) = read.data().unwrap() else { panic!() };
        assert_eq!(order.status, pushed.status, "{:?} reads back as pushed", pushed.number);
        assert!(vocabulary.order_statuses.reverse(order.status.unwrap()).is_some());
    }
    // Pushing the same records again (as the daemon would after reading them back) writes nothing.
    let again: Vec<Outgoing> = batch
        .iter()
        .zip(&ids)
        .map(|(outgoing, id)| Outgoing { external_id: Some(id.clone()), ..outgoing.clone() })
        .collect();
    let before = Simulated::stats(state.as_ref()).write_calls;
    let report = connector.push(Entity::Order, &again).await.unwrap();
    assert!(report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: false, .. })));
    // The state read, the lines read, and one batch that rewrites the draft (the only active one).
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 3);
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), expected.len());
}

#[tokio::test]
async fn an_order_moves_through_its_states_one_documented_step_at_a_time() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(2, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let account_id = ExternalId::new(state.live_ids(Entity::Account)[0].clone());
    let mut order = order_in(OrderStatus::Draft, &account_id, "SO-FLOW");
    let step = |order: &Outgoing| {
        let connector = &connector;
        let order = order.clone();
        async move { connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap().results.remove(0).outcome }
    };
    let PushOutcome::Upserted { external_id, .. } = step(&order).await else { panic!() };
    order.external_id = Some(external_id.clone());
    let status_of = || {
        let row = state.row(Entity::Order, external_id.as_str()).unwrap();
        (row["statecode"].as_i64().unwrap(), row["statuscode"].as_i64().unwrap())
    };
    assert_eq!(status_of(), (0, 1));
    for (next, expected) in [
        (OrderStatus::Confirmed, (1, 3)),
        (OrderStatus::Shipped, (3, 100_001)),
        (OrderStatus::Delivered, (3, 100_001)),
        (OrderStatus::Invoiced, (4, 100_003)),
    ] {
        if let OutgoingOp::Upsert { data: EntityData::Order(data) } = &mut order.op {
            data.status = Some(next);
            data.details = Some(format!("now {next}"));
        }
        let outcome = step(&order).await;
        assert!(matches!(outcome, PushOutcome::Upserted { created: false, .. }), "{next}: {outcome:?}");
        assert_eq!(status_of(), expected, "{next}");
    }
    // Written while it was active (with the move to Submitted), never after: a submitted, fulfilled
    // or invoiced order is read-only.
    assert_eq!(
        state.row(Entity::Order, external_id.as_str()).unwrap()["description"],
        json!("now confirmed"),
        "fields of an order that is no longer active are not written"
    );
    // Back to draft: Dataverse has no message for it, so nothing is sent and the reason is given.
    if let OutgoingOp::Upsert { data: EntityData::Order(data) } = &mut order.op {
        data.status = Some(OrderStatus::Draft);
    }
    let before = Simulated::stats(state.as_ref()).write_calls;
    let outcome = step(&order).await;
    assert!(
        matches!(&outcome, PushOutcome::Rejected { code, message } if code == "InvalidStateTransition" && message.contains("from Invoiced to Active")),
        "{outcome:?}"
    );
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 2, "reads only");

    // A confirmed order cancelled: CancelSalesOrder, once.
    let mut other = order_in(OrderStatus::Confirmed, &account_id, "SO-CANCEL");
    let PushOutcome::Upserted { external_id: other_id, .. } = step(&other).await else { panic!() };
    other.external_id = Some(other_id.clone());
    if let OutgoingOp::Upsert { data: EntityData::Order(data) } = &mut other.op {
        data.status = Some(OrderStatus::Cancelled);
    }
    assert!(matches!(step(&other).await, PushOutcome::Upserted { .. }));
    assert!(matches!(step(&other).await, PushOutcome::Upserted { .. }), "cancelled already: nothing sent");
    let row = state.row(Entity::Order, other_id.as_str()).unwrap();
    assert_eq!((row["statecode"].clone(), row["statuscode"].clone()), (json!(2), json!(4)));
}

#[tokio::test]
async fn an_active_orders_lines_follow_the_canonical_lines() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(2, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let account_id = ExternalId::new(state.live_ids(Entity::Account)[0].clone());
    let mut order = order_in(OrderStatus::Draft, &account_id, "SO-LINES");
    let line = |product: &str, quantity: i64| crate::canonical::OrderLine {
        product: Some(product.into()),
        sku: None,
        quantity: quantity.into(),
        unit_price: 10.into(),
        line_total: (quantity * 10).into(),
    };
    let set_lines = |order: &mut Outgoing, lines: Vec<crate::canonical::OrderLine>| {
        if let OutgoingOp::Upsert { data: EntityData::Order(data) } = &mut order.op {
            data.lines = Some(lines);
        }
    };
    set_lines(&mut order, vec![line("Widget", 1), line("Custom part", 2), line("Gadget", 3)]);
    let report = connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = report.results[0].outcome.clone() else { panic!("{report:?}") };
    assert_eq!(state.order_lines(external_id.as_str()).len(), 3);
    order.external_id = Some(external_id.clone());
    set_lines(&mut order, vec![line("Widget", 5)]);
    let report = connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { .. }), "{report:?}");
    let lines = state.order_lines(external_id.as_str());
    assert_eq!(lines.len(), 1, "the lines the order no longer has are deleted");
    assert_eq!(lines[0]["quantity"], json!(5));
    let row = state.row(Entity::Order, external_id.as_str()).unwrap();
    assert_eq!(row["totalamount"], json!(50));
}

// ---- Issue 16: order lines at ⌈lines/5000⌉ calls ----------------------------------------------------

#[tokio::test]
async fn a_full_pull_of_orders_reads_the_orders_twice_and_the_lines_table_once() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(200, 0, 12_000)))).await;
    let connector = connector(&running);
    let state = running.state();
    let orders = SimControl::count(state.as_ref(), Entity::Order);
    let lines = usize::try_from(Simulated::stats(state.as_ref()).records["salesorderdetails"]).unwrap();
    let run = testkit::pull_to_end(&connector, Entity::Order, None, 20).await.unwrap();
    assert_eq!(run.changes.len(), orders);
    let lines_read: usize = run
        .changes
        .iter()
        .map(|change| match change.data() {
            Some(EntityData::Order(order)) => order.lines.as_ref().map_or(0, Vec::len),
            _ => 0,
        })
        .sum();
    assert_eq!(lines_read, lines, "every line, each once, with its order");
    for change in &run.changes {
        assert!(!change.extra.contains_key("order_details"), "the expansion is not kept as a vendor field");
    }
    // The orders' and the lines' definitions, currencies and products, then the orders' token read
    // (one page per 5,000 orders), the lines' token read (one per 5,000 lines) and the orders with
    // their lines expanded (one per 5,000 orders). Measured: 12,000 orders with 23,843 lines take
    // 4 + 3 + 5 + 3 = 15 reads; reading the lines of each page of orders by range made it 20, and
    // one lines call per 100 orders 126.
    let reads = Simulated::stats(state.as_ref()).read_calls as usize;
    assert_eq!(reads, 4 + 2 * orders.div_ceil(5000) + lines.div_ceil(5000), "{orders} orders, {lines} lines");

    // Incremental: the orders' delta link, the changed orders' lines by id, the lines' delta link
    // (nothing there); the rows carry every column.
    let touched: BTreeSet<_> = SimControl::touch(state.as_ref(), Entity::Order, 3).into_iter().collect();
    let before = Simulated::stats(state.as_ref()).read_calls;
    let incremental = testkit::pull_to_end(&connector, Entity::Order, Some(run.cursor), 5).await.unwrap();
    let seen: BTreeSet<_> = incremental.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!(seen, touched);
    for change in &incremental.changes {
        let EntityData::Order(order) = change.data().unwrap() else { panic!() };
        assert!(order.number.is_some() && order.lines.as_ref().is_some_and(|lines| !lines.is_empty()), "{order:?}");
    }
    assert_eq!(Simulated::stats(state.as_ref()).read_calls - before, 3);
}

#[tokio::test]
async fn the_simulator_lists_its_tables_as_entity_definitions_for_metadata_clients() {
    let running = simulator(Dynamics365SimOptions::with_world(world(only(1, 0, 0)))).await;
    let (client, token, api) = raw(&running).await;
    let get = |url: String| {
        let client = client.clone();
        let token = token.clone();
        async move { client.get(url).bearer_auth(token).send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let all = get(format!("{api}/EntityDefinitions?$select=LogicalName,EntitySetName")).await;
    let names: BTreeSet<&str> =
        all["value"].as_array().unwrap().iter().map(|table| table["LogicalName"].as_str().unwrap()).collect();
    assert!(
        ["account", "lead", "opportunity", "salesorder", "salesorderdetail"].iter().all(|name| names.contains(name))
    );
    assert!(all["value"][0].get("MetadataId").is_some() && all["value"][0].get("PrimaryIdAttribute").is_none());
    let one = get(format!(
        "{api}/EntityDefinitions?$select=LogicalName&$filter=LogicalName eq 'account'&$expand=Attributes($select=LogicalName)"
    ))
    .await;
    assert_eq!(one["value"].as_array().unwrap().len(), 1);
    assert!(
        one["value"][0]["Attributes"].as_array().unwrap().iter().any(|attribute| attribute["LogicalName"] == "ownerid")
    );
    let attributes =
        get(format!("{api}/EntityDefinitions(LogicalName='opportunity')/Attributes?$select=LogicalName,AttributeType"))
            .await;
    let customer =
        attributes["value"].as_array().unwrap().iter().find(|attribute| attribute["LogicalName"] == "customerid");
    assert_eq!(customer.unwrap()["AttributeType"], "Customer");
    // What Airbyte's Dataverse source asks besides (issue 13 §2): the service document (its
    // connection check), CanChangeTrackingBeEnabled, and the date-time attributes cast to their
    // type with their DateTimeBehavior (sent inside a `$batch`).
    let service = get(format!("{api}/")).await;
    assert!(
        service["value"].as_array().unwrap().iter().any(|set| set["name"] == "accounts" && set["kind"] == "EntitySet")
    );
    let tracked = get(format!("{api}/EntityDefinitions(LogicalName='salesorderdetail')?$select=ChangeTrackingEnabled,CanChangeTrackingBeEnabled")).await;
    assert_eq!(
        (tracked["ChangeTrackingEnabled"].clone(), tracked["CanChangeTrackingBeEnabled"]["Value"].clone()),
        (json!(true), json!(true))
    );
    let dates = get(format!(
        "{api}/EntityDefinitions(LogicalName='opportunity')/Attributes/Microsoft.Dynamics.CRM.DateTimeAttributeMetadata?$select=LogicalName,DateTimeBehavior"
    ))
    .await;
    let behaviour = |name: &str| {
        dates["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|attribute| attribute["LogicalName"] == name)
            .map(|attribute| attribute["DateTimeBehavior"]["Value"].clone())
    };
    assert_eq!(behaviour("estimatedclosedate"), Some(json!("DateOnly")));
    assert_eq!(behaviour("modifiedon"), Some(json!("UserLocal")));
    assert_eq!(behaviour("name"), None, "only date-time attributes");
}

#[tokio::test]
async fn throttling_5xx_truncated_pages_and_drifted_records_change_no_record() {
    let size = WorldSize { accounts: 120, leads: 60, opportunities: 60, orders: 60 };
    let running = simulator(Dynamics365SimOptions::with_world(world(size))).await;
    let state = running.state();
    let make = || connector_with(&running, |_, config| config.max_page_size = 25);
    testkit::faults_change_nothing(&make, state.as_ref(), Entity::ALL).await;
    testkit::garbled_records_are_set_aside(make, state.as_ref(), Entity::ALL).await;
}

// ---- Issue 13: order lines are a change-tracked stream of their own -----------------------------

/// A page of the order lines' changes shaped like the documented delta response
/// (use-change-tracking-synchronize-data-external-systems.md: `@odata.context` ending in `/$delta`,
/// an `@odata.deltaLink` with a `$deltatoken`, changed rows with `@odata.etag` and the selected
/// columns and key, then `$deletedEntity` rows carrying only `id` and `reason`).
#[test]
fn a_documented_delta_page_of_order_lines_names_the_orders_to_read_again() {
    let body = r#"{
      "@odata.context":"https://org.crm.dynamics.com/api/data/v9.2/$metadata#salesorderdetails(_salesorderid_value)/$delta",
      "@odata.deltaLink":"https://org.crm.dynamics.com/api/data/v9.2/salesorderdetails?$select=_salesorderid_value&$deltatoken=919058%2108%2f22%2f2017%2008%3a21%3a20",
      "value":[
        {"@odata.etag":"W/\"915244\"","_salesorderid_value":"8b2f6e1a-0c87-e711-80e5-00155db19e6d","salesorderdetailid":"60c4e274-0d87-e711-80e5-00155db19e6d"},
        {"@odata.etag":"W/\"915245\"","_salesorderid_value":"9c3a7f2b-0c87-e711-80e5-00155db19e6d","salesorderdetailid":"61c4e274-0d87-e711-80e5-00155db19e6d"},
        {"@odata.etag":"W/\"915246\"","_salesorderid_value":"8b2f6e1a-0c87-e711-80e5-00155db19e6d","salesorderdetailid":"62c4e274-0d87-e711-80e5-00155db19e6d"},
        {"@odata.context":"https://org.crm.dynamics.com/api/data/v9.2/$metadata#salesorderdetails/$deletedEntity","id":"2e451703-c686-e711-80e5-00155db19e6d","reason":"deleted"}
      ]
    }"#;
    let page = wire::EntityCollection::parse(body.into()).unwrap();
    assert!(page.next_link.is_none());
    assert!(page.delta_link.as_deref().is_some_and(|link| link.contains("$deltatoken=")));
    let (orders, deleted) = wire::orders_of_changed_lines(&page.value).unwrap();
    assert_eq!(orders, ["8b2f6e1a-0c87-e711-80e5-00155db19e6d", "9c3a7f2b-0c87-e711-80e5-00155db19e6d"]);
    assert_eq!(deleted, 1, "a deleted line names no order");
}

fn distinct_ids(changes: &[Change]) -> BTreeSet<ExternalId> {
    changes.iter().map(|change| change.external_id.clone()).collect()
}

/// An active seeded order and one of its lines.
fn active_order_with_a_line(running: &RunningDynamics365Sim) -> (String, String) {
    let state = running.state();
    state
        .live_ids(Entity::Order)
        .into_iter()
        .filter(|id| state.row(Entity::Order, id).is_some_and(|row| row["statecode"] == json!(0)))
        .find_map(|id| {
            let line = state.order_lines(&id).first()?.get("salesorderdetailid")?.as_str()?.to_owned();
            Some((id, line))
        })
        .expect("an active order with a line")
}

/// With the org's price calculation off, a line edit leaves its order's row as it was: the order is
/// still read again, with the new line, from the lines' own delta link. A pass with nothing changed
/// costs the two delta links; the lines' delta link pages and resumes like any other cursor.
#[tokio::test]
async fn a_line_change_that_leaves_its_order_row_alone_is_read_from_the_lines_delta_link() {
    let running = simulator(Dynamics365SimOptions {
        price_calculation: false,
        ..Dynamics365SimOptions::with_world(world(only(5, 0, 60)))
    })
    .await;
    let connector = connector_with(&running, |_, config| config.max_page_size = 10);
    let state = running.state();
    let report = connector.check().await.unwrap();
    assert!(!report.notes.iter().any(|note| note.contains("salesorderdetails")), "{report:?}");
    let reads_before = Simulated::stats(state.as_ref()).read_calls as usize;
    let full = testkit::pull_to_end(&connector, Entity::Order, None, 80).await.unwrap();
    assert_eq!(distinct_ids(&full.changes).len(), 60);
    let lines = state.live_ids(Entity::Order).iter().map(|id| state.order_lines(id).len()).sum::<usize>();
    // 6 pages of order ids (the orders' delta link), ⌈lines/10⌉ of line ids (the lines'), 6 of
    // orders with their lines, one call each: 2 × ⌈orders/10⌉ + ⌈lines/10⌉ data calls.
    assert_eq!(full.pages, 6 + lines.div_ceil(10) + 6);
    let products = crate::sim::PRODUCTS.len().div_ceil(10);
    assert_eq!(
        Simulated::stats(state.as_ref()).read_calls as usize - reads_before,
        1 + products + 6 + lines.div_ceil(10) + 6,
        "currencies, products (the definitions were read by check), then the data calls"
    );

    let (order, line) = active_order_with_a_line(&running);
    let row_before = state.row(Entity::Order, &order).unwrap();
    let (client, token, api) = raw(&running).await;
    let (status, answer) = call(
        &client,
        &token,
        reqwest::Method::PATCH,
        &format!("{api}/salesorderdetails({line})"),
        json!({"quantity": 77}),
    )
    .await;
    assert_eq!(status, 204, "{answer}");
    assert_eq!(state.row(Entity::Order, &order).unwrap(), row_before, "the order row did not change");
    let reads = Simulated::stats(state.as_ref()).read_calls;
    let incremental = testkit::pull_to_end(&connector, Entity::Order, Some(full.cursor), 10).await.unwrap();
    assert_eq!(incremental.changes.len(), 1, "{:?}", incremental.changes);
    assert_eq!(incremental.changes[0].external_id.as_str(), order);
    let EntityData::Order(read) = incremental.changes[0].data().unwrap() else { panic!("not an order") };
    assert!(read.lines.iter().flatten().any(|read| read.quantity == 77.into()), "{read:?}");
    // The orders' delta link (empty), the lines' (one change), the order by id with its lines.
    assert_eq!(Simulated::stats(state.as_ref()).read_calls - reads, 3);

    let reads = Simulated::stats(state.as_ref()).read_calls;
    let quiet = testkit::pull_to_end(&connector, Entity::Order, Some(incremental.cursor), 10).await.unwrap();
    assert!(quiet.changes.is_empty());
    assert_eq!(Simulated::stats(state.as_ref()).read_calls - reads, 2, "the two delta links");

    // The lines of every active order change (more than a page of line changes): a pull stopped
    // after the first page resumes from the cursor it committed and reads every order once.
    let (mut changed, mut edited) = (BTreeSet::new(), 0);
    for id in state.live_ids(Entity::Order) {
        if state.row(Entity::Order, &id).is_none_or(|row| row["statecode"] != json!(0)) {
            continue;
        }
        for line in state.order_lines(&id) {
            let line = line["salesorderdetailid"].as_str().unwrap().to_owned();
            let url = format!("{api}/salesorderdetails({line})");
            assert_eq!(call(&client, &token, reqwest::Method::PATCH, &url, json!({"quantity": 55})).await.0, 204);
            edited += 1;
        }
        changed.insert(ExternalId::new(id));
    }
    assert!(edited > 10, "{edited} lines edited: more than a page of 10");
    let first = connector.pull(Entity::Order, Some(&quiet.cursor)).await.unwrap();
    assert!(first.has_more, "the lines' changes span pages");
    let rest = testkit::pull_to_end(&connector, Entity::Order, Some(first.cursor), 10).await.unwrap();
    let mut read: Vec<ExternalId> = first.changes.iter().map(|change| change.external_id.clone()).collect();
    read.extend(rest.changes.iter().map(|change| change.external_id.clone()));
    assert_eq!(read.iter().cloned().collect::<BTreeSet<_>>(), changed);
}

/// The lines' delta token expires: the orders are read in full again, and the new links work.
#[tokio::test]
async fn an_expired_lines_delta_token_reads_the_orders_in_full_again() {
    let running = simulator(Dynamics365SimOptions {
        price_calculation: false,
        ..Dynamics365SimOptions::with_world(world(only(3, 0, 12)))
    })
    .await;
    let connector = connector(&running);
    let full = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    assert_eq!(distinct_ids(&full.changes).len(), 12);
    running.state().expire_delta_tokens();
    let again = testkit::pull_to_end(&connector, Entity::Order, Some(full.cursor), 10).await.unwrap();
    assert_eq!(distinct_ids(&again.changes).len(), 12, "every order read again");
    let (order, line) = active_order_with_a_line(&running);
    let (client, token, api) = raw(&running).await;
    let url = format!("{api}/salesorderdetails({line})");
    assert_eq!(call(&client, &token, reqwest::Method::PATCH, &url, json!({"quantity": 123})).await.0, 204);
    let after = testkit::pull_to_end(&connector, Entity::Order, Some(again.cursor.clone()), 10).await.unwrap();
    assert_eq!(after.changes.len(), 1, "{:?}", again.cursor);
    assert_eq!(after.changes[0].external_id.as_str(), order);
}

/// An expansion carries at most 5,000 lines per order ("up to 5,000 related records can be returned
/// for each expanded collection-valued navigation property": learn.microsoft.com/power-apps/developer/data-platform/webapi/query/join-tables):
/// an order with more has all of them read from its `order_details@odata.nextLink`, page by page.
/// The simulator refuses an expansion of a property the table does not have.
#[tokio::test]
async fn an_order_with_more_lines_than_an_expansion_carries_reads_the_rest_from_its_link() {
    let running = simulator(Dynamics365SimOptions {
        price_calculation: false,
        ..Dynamics365SimOptions::with_world(world(only(5, 0, 60)))
    })
    .await;
    let (order, _) = active_order_with_a_line(&running);
    let (client, token, api) = raw(&running).await;
    for chunk in 0..6 {
        let requests: Vec<wire::BatchRequest> = (0..1000)
            .map(|n| wire::BatchRequest {
                method: "POST".into(),
                path: "/api/data/v9.2/salesorderdetails".into(),
                headers: Vec::new(),
                body: Some(json!({
                    "salesorderid@odata.bind": format!("/salesorders({order})"),
                    "productdescription": format!("Bulk item {chunk}-{n}"),
                    "isproductoverridden": true,
                    "quantity": 1,
                    "priceperunit": 2,
                })),
            })
            .collect();
        let boundary = format!("batch_bulk{chunk}");
        let response = client
            .post(format!("{api}/$batch"))
            .bearer_auth(&token)
            .header("Content-Type", format!("multipart/mixed; boundary={boundary}"))
            .body(wire::encode_batch(&boundary, &requests))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let state = running.state();
    let lines = state.order_lines(&order).len();
    assert!(lines > wire::EXPANDED_ROWS_CAP, "{lines} lines");
    let connector = connector(&running);
    let run = testkit::pull_to_end(&connector, Entity::Order, None, 20).await.unwrap();
    let read = run.changes.iter().find(|change| change.external_id.as_str() == order).unwrap();
    let EntityData::Order(read) = read.data().unwrap() else { panic!("not an order") };
    assert_eq!(read.lines.as_ref().map(Vec::len), Some(lines));

    let response = client
        .get(format!("{api}/salesorders?$select=name&$expand=order_lines($select=quantity)"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "0x80060888", "{answer}");
    let response = client
        .get(format!("{api}/salesorders?$select=name&$expand=order_details($select=quantity)"))
        .bearer_auth(&token)
        .header("Prefer", "odata.track-changes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "change tracking refuses $expand");
}
