//! Zoho connector against the simulator over loopback HTTP: the shared contract suite, the issue's
//! call-count figures, and the Zoho specifics (paging past 2,000, If-Modified-Since, token expiry
//! mid-paging, 429, partial upsert failure, notifications, lookups, privacy, truncation).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;

use super::sim::{self, RunningZohoSim, ZohoSimOptions};
use super::*;
use crate::canonical::{Account, CanonicalId, Channel, EntityData, OrderStatus, RecordRef, Vocabulary};
use crate::connector::{MemoryHost, WebhookDelivery, WebhookEvent};
use crate::http::RetryPolicy;
use crate::sim::{FaultSettings, Simulated, World, WorldSize};
use crate::testkit::{self, SimControl};

fn world(size: WorldSize) -> World {
    World::generate(9, size, "2026-11-01T00:00:00Z".parse().unwrap(), false)
}

fn only(accounts: usize, deals: usize, orders: usize) -> WorldSize {
    WorldSize { accounts, leads: 0, opportunities: deals, orders }
}

async fn simulator(options: ZohoSimOptions) -> RunningZohoSim {
    sim::start(options).await.unwrap()
}

fn connector_with(
    running: &RunningZohoSim,
    host: SharedHost,
    tweak: impl FnOnce(&mut ConnectionSettings),
) -> ZohoConnector {
    let mut settings = ConnectionSettings::new("zoho", Vocabulary::defaults(VendorKind::Zoho));
    settings.http.retry = RetryPolicy {
        give_up_after: Duration::from_secs(20),
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
    };
    tweak(&mut settings);
    let base: url::Url = running.base_url().parse().unwrap();
    let config = ZohoConfig {
        accounts_url: base.clone(),
        api_domain: Some(base),
        api_version: "v8".into(),
        client_id: sim::CLIENT_ID.into(),
        client_secret: SecretString::from(sim::CLIENT_SECRET.to_owned()),
        refresh_token: SecretString::from(sim::REFRESH_TOKEN.to_owned()),
        external_id_field: "Crmsync_Id".into(),
        channel_field: "Lead_Source".into(),
        webhook: Some(ZohoWebhook {
            token: SecretString::from(sim::WEBHOOK_TOKEN.to_owned()),
            notify_url: Some("https://crmsync.example/webhooks/zoho".parse().unwrap()),
            channel_id: 1_000_000_068_001,
        }),
    };
    ZohoConnector::new(settings, config, host).unwrap()
}

fn connector(running: &RunningZohoSim) -> ZohoConnector {
    connector_with(running, Arc::new(MemoryHost::default()), |_| {})
}

#[tokio::test]
async fn contract_suite_passes_on_accounts() {
    let running = simulator(ZohoSimOptions::with_world(world(only(300, 0, 0)))).await;
    let connector = connector(&running);
    let empty = reqwest::header::HeaderMap::new();
    let forged = WebhookDelivery {
        headers: &empty,
        query: None,
        body: br#"{"module":"Accounts","ids":["1"],"operation":"update","channel_id":"1000000068001","token":"guess"}"#,
    };
    testkit::run_contract_suite(&connector, running.state().as_ref(), Entity::Account, &forged).await;
}

#[tokio::test]
async fn a_full_pull_of_10000_deals_costs_50_data_calls_and_one_token_then_an_incremental_costs_one_records_call() {
    let running = simulator(ZohoSimOptions::with_world(world(only(50, 10_000, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let run = testkit::pull_to_end(&connector, Entity::Opportunity, None, 1000).await.unwrap();
    let ids: BTreeSet<_> = run.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!((ids.len(), run.changes.len()), (10_000, 10_000), "no 2,000-record cap");
    let stats = Simulated::stats(state.as_ref());
    assert_eq!(stats.token_calls, 1);
    // 50 record pages + 1 settings/fields call.
    assert_eq!(stats.read_calls, 51);
    // `info.count` is the records of the page, not of the read: no total is claimed.
    assert!(run.totals.iter().all(Option::is_none), "{:?}", &run.totals[..3]);
    let touched: BTreeSet<_> = SimControl::touch(state.as_ref(), Entity::Opportunity, 10).into_iter().collect();
    let incremental = testkit::pull_to_end(&connector, Entity::Opportunity, Some(run.cursor), 10).await.unwrap();
    let seen: BTreeSet<_> = incremental.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!(seen, touched);
    // One records call (If-Modified-Since) and one deleted-records call.
    assert_eq!(Simulated::stats(state.as_ref()).read_calls - stats.read_calls, 2);
}

/// Found by `crmsync bench`: deals last modified well before the load started (orders were seeded
/// after them) were delivered again by every incremental pass, because the delivered-set was pruned
/// by the deleted-records window (the load's start) instead of the deals' own overlap window.
#[tokio::test]
async fn records_older_than_the_load_are_not_delivered_again_by_incremental_passes() {
    // Stamps are one second apart in seeding order: the 300 deals end about 600 s before "now".
    let running = simulator(ZohoSimOptions::with_world(world(only(1, 300, 600)))).await;
    let connector = connector(&running);
    let full = testkit::pull_to_end(&connector, Entity::Opportunity, None, 100).await.unwrap();
    assert_eq!(full.changes.len(), 300);
    let mut cursor = full.cursor;
    for pass in 0..3 {
        let incremental = testkit::pull_to_end(&connector, Entity::Opportunity, Some(cursor), 10).await.unwrap();
        assert!(incremental.changes.is_empty(), "pass {pass} delivered {} deals again", incremental.changes.len());
        cursor = incremental.cursor;
    }
}

/// Orders are inserted (an upsert that matched would append their lines again); pushed again without
/// their Zoho ids, as a create retried after a lost answer is, each batch is one insert Zoho refuses
/// with `DUPLICATE_DATA` naming the order it has, one read of those orders' lines and one update by id.
#[tokio::test]
async fn pushing_1000_orders_costs_10_inserts_and_pushing_them_again_creates_nothing() {
    let running = simulator(ZohoSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let account = testkit::new_accounts(1, "Zoho Customer").remove(0);
    let report = connector.push(Entity::Account, std::slice::from_ref(&account)).await.unwrap();
    let PushOutcome::Upserted { external_id: account_id, created: true, .. } = report.results[0].outcome.clone() else {
        panic!("{report:?}")
    };
    let orders = testkit::new_orders(
        &RecordRef { canonical: Some(account.canonical_id), external: Some(account_id.clone()) },
        1000,
        "SO-Z",
    );
    let before = Simulated::stats(state.as_ref()).write_calls;
    for chunk in orders.chunks(connector.push_batch_size()) {
        let report = connector.push(Entity::Order, chunk).await.unwrap();
        assert!(
            report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: true, .. })),
            "{report:?}"
        );
    }
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 10);
    let before = Simulated::stats(state.as_ref());
    for chunk in orders.chunks(connector.push_batch_size()) {
        let report = connector.push(Entity::Order, chunk).await.unwrap();
        assert!(
            report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: false, .. }))
        );
    }
    let after = Simulated::stats(state.as_ref());
    assert_eq!(
        (after.write_calls - before.write_calls, after.read_calls - before.read_calls),
        (20, 10),
        "per batch of 100: the refused insert and the update by id, and one read of the lines"
    );
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 1000, "re-push created nothing");
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 20).await.unwrap();
    let first = pulled.changes.iter().find(|change| change.canonical_hint == Some(orders[0].canonical_id)).unwrap();
    let EntityData::Order(read) = first.data().unwrap() else { panic!() };
    assert_eq!(read.total_amount, Some("19".parse().unwrap()), "Grand_Total from the items");
    assert_eq!(read.lines.as_ref().unwrap()[0].product.as_deref(), Some("Widget"));
    assert_eq!(read.account.as_ref().unwrap().external.as_ref(), Some(&account_id), "lookup mapped to the Zoho id");
}

#[tokio::test]
async fn token_expiry_mid_paging_refreshes_once_and_a_429_is_recovered() {
    let mut options = ZohoSimOptions::with_world(world(only(3000, 0, 0)));
    // 1 fields call + 15 pages + 2 throttled calls: the token expires once, after 12 calls.
    options.faults = FaultSettings {
        token_expiry_after_calls: 12,
        rate_limit_after_calls: 6,
        rate_limit_for_calls: 2,
        ..FaultSettings::default()
    };
    let running = simulator(options).await;
    let connector = connector(&running);
    let run = testkit::pull_to_end(&connector, Entity::Account, None, 100).await.unwrap();
    assert_eq!(run.changes.len(), 3000);
    let stats = Simulated::stats(running.state().as_ref());
    assert_eq!(stats.token_calls, 2, "one refresh");
    assert!(stats.faulted_calls >= 3, "the 401 and the two 429s were served");
}

#[tokio::test]
async fn a_partial_upsert_failure_rejects_only_the_bad_record() {
    let running = simulator(ZohoSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let mut batch = testkit::new_accounts(3, "Partial");
    batch[1].op = OutgoingOp::Upsert {
        data: EntityData::Account(Account { number: Some("no name".into()), ..Account::default() }),
    };
    let report = connector.push(Entity::Account, &batch).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { .. }));
    assert!(
        matches!(&report.results[1].outcome, PushOutcome::Rejected { code, message } if code == "MANDATORY_NOT_FOUND" && message.contains("Account_Name")),
        "{:?}",
        report.results[1]
    );
    assert!(matches!(report.results[2].outcome, PushOutcome::Upserted { .. }));
    // All refused by Zoho (a lookup to an account it does not have): HTTP 400 with per-record
    // results, still a report, not a failed call.
    let deal = Outgoing {
        canonical_id: crate::canonical::CanonicalId::new(),
        external_id: None,
        expected_version: None,
        op: OutgoingOp::Upsert {
            data: EntityData::Opportunity(crate::canonical::Opportunity {
                name: Some("Orphan".into()),
                stage: Some(crate::canonical::Stage::Qualified),
                close_date: "2026-12-01".parse().ok(),
                account: Some(RecordRef::external("4150868999999999999")),
                ..crate::canonical::Opportunity::default()
            }),
        },
    };
    let report = connector.push(Entity::Opportunity, std::slice::from_ref(&deal)).await.unwrap();
    assert!(
        matches!(&report.results[0].outcome, PushOutcome::Rejected { code, message } if code == "INVALID_DATA" && message.contains("Account_Name")),
        "{:?}",
        report.results[0]
    );
}

#[tokio::test]
async fn notifications_are_authenticated_and_the_watch_channel_is_renewed_only_when_due() {
    let running = simulator(ZohoSimOptions::with_world(world(only(1, 0, 0)))).await;
    let host: SharedHost = Arc::new(MemoryHost::default());
    let connector = connector_with(&running, host.clone(), |_| {});
    let empty = reqwest::header::HeaderMap::new();
    let body = format!(
        r#"{{"server_time":1764000000000,"module":"Deals","ids":["41508680001"],"operation":"update","channel_id":"1000000068001","token":"{}"}}"#,
        sim::WEBHOOK_TOKEN
    );
    let reply =
        connector.parse_webhook(&WebhookDelivery { headers: &empty, query: None, body: body.as_bytes() }).unwrap();
    assert!(matches!(&reply.events[..], [WebhookEvent::Fetch { entity: Entity::Opportunity, ids }] if ids.len() == 1));
    let deleted = body.replace("\"update\"", "\"delete\"");
    let reply =
        connector.parse_webhook(&WebhookDelivery { headers: &empty, query: None, body: deleted.as_bytes() }).unwrap();
    assert!(matches!(&reply.events[..], [WebhookEvent::Changed(change)] if change.is_delete()));
    let forged = body.replace(sim::WEBHOOK_TOKEN, "guess");
    assert!(matches!(
        connector.parse_webhook(&WebhookDelivery { headers: &empty, query: None, body: forged.as_bytes() }),
        Err(WebhookError::Unauthenticated(_))
    ));
    let other_channel = body.replace("1000000068001", "42");
    assert!(matches!(
        connector.parse_webhook(&WebhookDelivery { headers: &empty, query: None, body: other_channel.as_bytes() }),
        Err(WebhookError::Unauthenticated(_))
    ));

    let expiry = connector.ensure_watch_channel().await.unwrap().unwrap();
    assert!(running.state().watch_subscription().is_some());
    assert_eq!(host.load_state(&ConnectionId::new("zoho"), WATCH_STATE).unwrap(), Some(expiry.to_string()));
    let writes = Simulated::stats(running.state().as_ref()).write_calls;
    assert_eq!(connector.ensure_watch_channel().await.unwrap(), Some(expiry), "not yet due: no renewal");
    assert_eq!(Simulated::stats(running.state().as_ref()).write_calls, writes);
}

#[tokio::test]
async fn equal_modified_times_across_a_page_boundary_arrive_exactly_once() {
    let mut options = ZohoSimOptions::with_world(world(only(1000, 0, 0)));
    options.shared_modified_time = 500;
    let running = simulator(options).await;
    let connector = connector(&running);
    let run = testkit::pull_to_end(&connector, Entity::Account, None, 100).await.unwrap();
    let ids: BTreeSet<_> = run.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!((ids.len(), run.changes.len()), (1000, 1000));
    let again = testkit::pull_to_end(&connector, Entity::Account, Some(run.cursor), 10).await.unwrap();
    assert!(again.changes.is_empty());
}

#[tokio::test]
async fn a_denied_field_is_never_requested_and_a_truncated_page_keeps_the_cursor() {
    let running = simulator(ZohoSimOptions::with_world(world(WorldSize {
        accounts: 0,
        leads: 450,
        opportunities: 0,
        orders: 0,
    })))
    .await;
    let connector = connector_with(&running, Arc::new(MemoryHost::default()), |settings| {
        settings.fields.deny.insert(Entity::Lead, BTreeSet::from(["email".to_owned()]));
        settings.http.retry.give_up_after = Duration::from_millis(300);
    });
    let first = connector.pull(Entity::Lead, None).await.unwrap();
    assert!(running.state().requested_fields().iter().all(|fields| !fields.contains("Email")));
    Simulated::faults(running.state().as_ref())
        .apply(&FaultSettings { truncate_next: u64::MAX, ..FaultSettings::default() });
    let error = connector.pull(Entity::Lead, Some(&first.cursor)).await.unwrap_err();
    assert!(matches!(error.root(), ConnectorError::Decode { .. }), "{error}");
    Simulated::faults(running.state().as_ref()).apply(&FaultSettings::default());
    let second = connector.pull(Entity::Lead, Some(&first.cursor)).await.unwrap();
    assert_eq!(second.changes.len(), 200, "the same page again from the kept cursor");
}

#[test]
fn lookups_and_offset_timestamps_map_losslessly() {
    let vocabulary = Vocabulary::defaults(VendorKind::Zoho);
    let base: url::Url = "https://www.zohoapis.eu".parse().unwrap();
    let config = ZohoConfig {
        accounts_url: base.clone(),
        api_domain: Some(base),
        api_version: "v8".into(),
        client_id: "x".into(),
        client_secret: SecretString::from("y".to_owned()),
        refresh_token: SecretString::from("z".to_owned()),
        external_id_field: "Crmsync_Id".into(),
        channel_field: "Lead_Source".into(),
        webhook: None,
    };
    let row = json!({"id": "4150868000000002175", "Deal_Name": "Big deal", "Stage": "Closed Lost to Competition", "Amount": 1000.5,
        "Account_Name": {"name": "Zylker", "id": "4150868000000224005"}, "Lead_Source": "Partner", "Closing_Date": "2024-03-31",
        "Modified_Time": "2023-10-15T14:20:00+05:30"});
    let change = mapping::to_change(
        Entity::Opportunity,
        row.as_object().unwrap(),
        &vocabulary,
        &config,
        Some(&Currency::new("EUR").unwrap()),
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(change.modified_at, "2023-10-15T08:50:00Z".parse().unwrap());
    let EntityData::Opportunity(deal) = change.data().unwrap() else { panic!() };
    assert_eq!(deal.account, Some(RecordRef::external("4150868000000224005")));
    assert_eq!(deal.stage, Some(crate::canonical::Stage::Lost));
    assert_eq!(deal.channel, Some(Channel::Agent));
    assert_eq!(deal.amount.as_ref().unwrap().to_string(), "1000.5 EUR");
}

/// The documented `settings/fields` example (zoho/crm-oas
/// v8.0/fields/operations/getFields/examples/response-200-fullexample.md, three of its Leads fields
/// copied verbatim) reads as Zoho documents it: fields by `api_name`, nothing `system_mandatory` among
/// them (Company is mandatory only in layouts), the owner lookup kept as a field.
#[test]
fn the_documented_settings_fields_example_is_read_by_api_name_with_its_mandatory_flags() {
    let body = include_str!("../../tests/fixtures/zoho/settings-fields-leads.json");
    let response: wire::FieldsResponse = serde_json::from_str(body).unwrap();
    let owner = response.fields.iter().find(|field| field.api_name == "Owner").unwrap();
    assert_eq!((owner.data_type.as_str(), owner.json_type.as_deref()), ("ownerlookup", Some("jsonobject")));
    assert!(owner.field_read_only && !owner.read_only);
    assert!(owner.lookup.as_ref().is_some_and(|lookup| lookup.module.is_none()), "`lookup: {{}}` is no lookup target");
    let info = mapping::ModuleInfo::new(response.fields);
    assert_eq!(info.fields, BTreeSet::from(["Company".to_owned(), "First_Name".to_owned(), "Owner".to_owned()]));
    assert!(info.mandatory.is_empty(), "{:?}", info.mandatory);
    assert_eq!(info.line_items, None);
}

/// The simulator describes modules in the same documented shape: mandatory flags, lookup targets,
/// picklist actual values and the line-item subform.
#[tokio::test]
async fn the_simulator_describes_sales_orders_with_mandatory_lines_and_lookup_targets() {
    let running = simulator(ZohoSimOptions::with_world(world(only(0, 0, 0)))).await;
    let client = reqwest::Client::new();
    let base = running.base_url();
    let token: serde_json::Value = client
        .post(format!("{base}/oauth/v2/token"))
        .query(&[
            ("grant_type", "refresh_token"),
            ("client_id", sim::CLIENT_ID),
            ("client_secret", sim::CLIENT_SECRET),
            ("refresh_token", sim::REFRESH_TOKEN),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = format!("Zoho-oauthtoken {}", token["access_token"].as_str().unwrap());
    let fields: wire::FieldsResponse = client
        .get(format!("{base}/crm/v8/settings/fields?module=Sales_Orders"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account = fields.fields.iter().find(|field| field.api_name == "Account_Name").unwrap();
    assert_eq!(account.lookup.as_ref().and_then(|lookup| lookup.module.as_ref()).unwrap().api_name, "Accounts");
    let info = mapping::ModuleInfo::new(fields.fields);
    assert_eq!(info.mandatory, ["Subject", "Account_Name", "Ordered_Items"]);
    assert_eq!(info.line_items.as_deref(), Some("Ordered_Items"));
    assert_eq!(info.picklists["Status"], ["Created", "Approved", "Delivered", "Cancelled"]);
    // Versions Zoho serves answer; others are not a Zoho path.
    for (version, status) in [("v2", 200), ("v2.1", 200), ("v5", 200), ("v9", 404), ("v1", 404)] {
        let response = client
            .get(format!("{base}/crm/{version}/settings/modules"))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{version}");
    }
}

fn order_with(account: &RecordRef, edit: impl FnOnce(&mut crate::canonical::Order)) -> Outgoing {
    let mut outgoing = testkit::new_orders(account, 1, "SO-RULE").remove(0);
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut outgoing.op {
        edit(order);
    }
    outgoing
}

async fn pushed_account(connector: &ZohoConnector) -> RecordRef {
    let account = testkit::new_accounts(1, "Rules Customer").remove(0);
    let report = connector.push(Entity::Account, std::slice::from_ref(&account)).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = report.results[0].outcome.clone() else { panic!("{report:?}") };
    RecordRef { canonical: Some(account.canonical_id), external: Some(external_id) }
}

fn rejection(report: &PushReport, index: usize) -> (String, String) {
    match &report.results[index].outcome {
        PushOutcome::Rejected { code, message } => (code.clone(), message.clone()),
        other => panic!("record {index}: {other:?}"),
    }
}

/// Issue 13 §1c: a sales order needs line items, known products and a currency the org takes; a
/// single-currency org has no `Currency` field. Each refusal happens before the call (no write is
/// spent on it), names the field, and uses Zoho's code for the same refusal; the rest of the batch
/// goes through.
#[tokio::test]
async fn sales_orders_zoho_would_refuse_are_refused_before_the_call_naming_the_field() {
    let mut options = ZohoSimOptions::with_world(world(only(0, 0, 0)));
    options.multi_currency = false;
    let running = simulator(options).await;
    let connector = connector(&running);
    let state = running.state();
    let account = pushed_account(&connector).await;
    let batch = vec![
        order_with(&account, |order| order.lines = None),
        order_with(&account, |order| order.lines = Some(Vec::new())),
        order_with(&account, |order| {
            if let Some(line) = order.lines.as_mut().and_then(|lines| lines.first_mut()) {
                line.product = Some("Flux capacitor".into());
            }
        }),
        order_with(&account, |order| order.currency = Currency::new("USD").ok()),
        order_with(&account, |order| order.account = Some(RecordRef::canonical(CanonicalId::new()))),
        order_with(&account, |_| {}),
    ];
    let writes = Simulated::stats(state.as_ref()).write_calls;
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - writes, 1, "one upsert call, for the valid order");
    for index in [0, 1] {
        let (code, message) = rejection(&report, index);
        assert_eq!(code, "MANDATORY_NOT_FOUND");
        assert!(message.contains("Ordered_Items") && message.contains("line item"), "{message}");
    }
    let (code, message) = rejection(&report, 2);
    assert!(code == "INVALID_DATA" && message.contains("Flux capacitor"), "{message}");
    let notes = connector.check().await.unwrap().notes;
    assert!(
        notes.iter().any(|note| note.starts_with("Sales_Orders: mapped fields the org does not have")
            && note.ends_with(": Currency")),
        "{notes:?}"
    );
    let (code, message) = rejection(&report, 3);
    assert!(code == "CURRENCIES_NOT_ENABLED" && message.contains("USD") && message.contains("EUR"), "{message}");
    let (code, message) = rejection(&report, 4);
    assert!(code == "MANDATORY_NOT_FOUND" && message.contains("Account_Name"), "{message}");
    let PushOutcome::Upserted { external_id, created: true, .. } = &report.results[5].outcome else {
        panic!("{:?}", report.results[5])
    };
    let row = state.row(Entity::Order, external_id.as_str()).unwrap();
    assert!(!row.contains_key("Currency"), "a single-currency org has no Currency field");
    assert_eq!(row["Ordered_Items"].as_array().unwrap().len(), 1);
    // Read back, its amounts are in the org currency from `GET org`.
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let EntityData::Order(read) = pulled.changes[0].data().unwrap() else { panic!() };
    assert_eq!(read.currency.as_ref().map(Currency::as_str), Some("EUR"));
}

/// A multi-currency org takes its active currencies and refuses others.
#[tokio::test]
async fn a_multi_currency_org_takes_its_active_currencies_and_refuses_others() {
    let running = simulator(ZohoSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let account = pushed_account(&connector).await;
    let batch = vec![
        order_with(&account, |order| order.currency = Currency::new("USD").ok()),
        order_with(&account, |order| order.currency = Currency::new("JPY").ok()),
    ];
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = &report.results[0].outcome else { panic!("{report:?}") };
    assert_eq!(running.state().row(Entity::Order, external_id.as_str()).unwrap()["Currency"], "USD");
    let (code, message) = rejection(&report, 1);
    assert!(code == "INVALID_DATA" && message.contains("JPY") && message.contains("EUR, GBP, USD"), "{message}");
}

/// Issue 15 (Zoho side): an order in each canonical status is written as a Sales_Order with its
/// Ordered_Items and the mapped Status (SPEC §2: draft → Created, confirmed → Approved, delivered →
/// Delivered, cancelled → Cancelled; shipped and invoiced have no Zoho value of their own and are
/// written as `Delivered`, the value SPEC §2 gives shipped and delivered), and reads back as what
/// was pushed: nothing for reconcile to take as a change (no echo).
#[tokio::test]
async fn an_order_in_each_status_is_written_with_its_items_and_status_and_reads_back_unchanged() {
    let running = simulator(ZohoSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let account = pushed_account(&connector).await;
    let statuses = [
        (OrderStatus::Draft, Some("Created")),
        (OrderStatus::Confirmed, Some("Approved")),
        (OrderStatus::Shipped, Some("Delivered")),
        (OrderStatus::Delivered, Some("Delivered")),
        (OrderStatus::Invoiced, Some("Delivered")),
        (OrderStatus::Cancelled, Some("Cancelled")),
    ];
    let batch: Vec<Outgoing> =
        statuses.iter().map(|(status, _)| order_with(&account, |order| order.status = Some(*status))).collect();
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    for ((status, vendor), (outgoing, result)) in statuses.iter().zip(batch.iter().zip(&report.results)) {
        let PushOutcome::Upserted { external_id, .. } = &result.outcome else { panic!("{status:?}: {result:?}") };
        let row = running.state().row(Entity::Order, external_id.as_str()).unwrap();
        assert_eq!(row["Ordered_Items"][0]["Product_Name"]["name"], "Widget", "{status:?}");
        let written = row.get("Status").and_then(serde_json::Value::as_str);
        assert_eq!(written, *vendor, "{status:?}");
        let OutgoingOp::Upsert { data } = &outgoing.op else { panic!() };
        let change = pulled.changes.iter().find(|change| &change.external_id == external_id).unwrap();
        let EntityData::Order(read) = change.data().unwrap() else { panic!() };
        let EntityData::Order(sent) = connector.representable(data) else { panic!() };
        assert_eq!(read.status, sent.status, "{status:?} reads back as pushed");
        assert_eq!((&read.number, &read.currency, read.order_date), (&sent.number, &sent.currency, sent.order_date));
        let line = &read.lines.as_ref().unwrap()[0];
        let sent_line = &sent.lines.as_ref().unwrap()[0];
        assert_eq!(
            (&line.product, line.quantity, line.unit_price),
            (&sent_line.product, sent_line.quantity, sent_line.unit_price)
        );
        assert_eq!(change.canonical_hint, Some(outgoing.canonical_id), "the external-id field names the record");
    }
}

/// Zoho appends subform rows written without an id, updates rows written with one and removes rows
/// written with `_delete` (zoho/crm-oas v8.0 updateRecords operation.md). An order update therefore
/// sends the difference to the rows Zoho has: changed lines replace the old ones, fewer lines delete the
/// rest, unchanged lines are not sent, and a retried create does not double them (see also
/// `a_create_retried_after_a_lost_answer_and_a_kill_never_leaves_the_lines_doubled`).
#[tokio::test]
async fn an_order_update_replaces_its_line_items_instead_of_appending_them() {
    let running = simulator(ZohoSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let account = pushed_account(&connector).await;
    let line = |product: &str, quantity: i64| crate::canonical::OrderLine {
        product: Some(product.into()),
        sku: None,
        quantity: quantity.into(),
        unit_price: 10.into(),
        line_total: (quantity * 10).into(),
    };
    let mut order = order_with(&account, |order| order.lines = Some(vec![line("Widget", 1), line("Gadget", 2)]));
    let report = connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = report.results[0].outcome.clone() else { panic!("{report:?}") };
    let lines_in_zoho = || {
        let row = state.row(Entity::Order, external_id.as_str()).unwrap();
        let items = row["Ordered_Items"].as_array().unwrap().clone();
        let lines: Vec<(String, String)> = items
            .iter()
            .map(|item| (item["Product_Name"]["name"].as_str().unwrap().to_owned(), item["Quantity"].to_string()))
            .collect();
        (lines, row["Grand_Total"].to_string())
    };
    // A retried create (no Zoho id yet, refused as a duplicate Crmsync_Id) does not double the lines.
    connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    assert_eq!(lines_in_zoho(), (vec![("Widget".into(), "1".into()), ("Gadget".into(), "2".into())], "30".into()));
    order.external_id = Some(external_id.clone());
    let set_lines = |order: &mut Outgoing, lines| {
        if let OutgoingOp::Upsert { data: EntityData::Order(data) } = &mut order.op {
            data.lines = Some(lines);
        }
    };
    set_lines(&mut order, vec![line("Gizmo", 3)]);
    connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    assert_eq!(lines_in_zoho(), (vec![("Gizmo".into(), "3".into())], "30".into()));
    set_lines(&mut order, vec![line("Gizmo", 3), line("Widget", 5)]);
    connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    assert_eq!(lines_in_zoho(), (vec![("Gizmo".into(), "3".into()), ("Widget".into(), "5".into())], "80".into()));
    let row_ids: Vec<serde_json::Value> = state.row(Entity::Order, external_id.as_str()).unwrap()["Ordered_Items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].clone())
        .collect();
    // Unchanged lines are not sent again: the rows keep their ids.
    connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    let after: Vec<serde_json::Value> = state.row(Entity::Order, external_id.as_str()).unwrap()["Ordered_Items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].clone())
        .collect();
    assert_eq!(after, row_ids);
}

/// Issue 17: a create whose answer was lost to a kill is sent again with no Zoho id. Zoho appends the
/// subform rows of a write that matches an existing record (zoho/crm-oas v8.0 updateRecords
/// operation.md), so an upsert matched by `Crmsync_Id` doubled the lines until a second call removed
/// them: a kill between the two left them doubled, for a pull to read as the order's lines. The
/// retried create must never leave Zoho with lines other than the desired ones, wherever it is
/// interrupted, and it must settle any number of copies of them to exactly the desired lines.
#[tokio::test]
async fn a_create_retried_after_a_lost_answer_and_a_kill_never_leaves_the_lines_doubled() {
    let running = simulator(ZohoSimOptions::with_world(world(only(0, 0, 0)))).await;
    // A short retry budget: the outage below stands for the kill, not for a blip to wait out.
    let connector = connector_with(&running, Arc::new(MemoryHost::default()), |settings| {
        settings.http.retry.give_up_after = Duration::from_millis(50);
    });
    let state = running.state();
    let account = pushed_account(&connector).await;
    let line = |product: &str, quantity: i64| crate::canonical::OrderLine {
        product: Some(product.into()),
        sku: None,
        quantity: quantity.into(),
        unit_price: 10.into(),
        line_total: (quantity * 10).into(),
    };
    let order = order_with(&account, |order| order.lines = Some(vec![line("Widget", 1), line("Gadget", 2)]));
    let desired = vec![("Widget".to_owned(), "1".to_owned()), ("Gadget".to_owned(), "2".to_owned())];
    let writes = || Simulated::stats(state.as_ref()).write_calls;
    let before = writes();
    // The create reaches Zoho; its answer is lost (the outbox keeps the push without a Zoho id).
    let report = connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    assert_eq!(writes() - before, 1, "a create is one write");
    let PushOutcome::Upserted { external_id, created: true, .. } = report.results[0].outcome.clone() else {
        panic!("{report:?}")
    };
    let lines_in_zoho = || -> Vec<(String, String)> {
        let row = state.row(Entity::Order, external_id.as_str()).unwrap();
        row["Ordered_Items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| (item["Product_Name"]["name"].as_str().unwrap().to_owned(), item["Quantity"].to_string()))
            .collect()
    };
    // The retry is killed after its first call reached Zoho (every later call fails).
    Simulated::faults(state.as_ref()).apply(&FaultSettings { outage_after_calls: 1, ..FaultSettings::default() });
    assert!(connector.push(Entity::Order, std::slice::from_ref(&order)).await.is_err(), "the outage cut the retry");
    Simulated::faults(state.as_ref()).apply(&FaultSettings::default());
    assert_eq!(lines_in_zoho(), desired, "the interrupted retry left other lines in Zoho");
    // What a pull reads meanwhile (as `run` pulls while it pushes): the order's own lines.
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let read = pulled.changes.iter().find(|change| change.external_id == external_id).unwrap();
    let EntityData::Order(read) = read.data().unwrap() else { panic!() };
    assert_eq!(read.lines.as_ref().map(Vec::len), Some(2), "a pull read other lines: {read:?}");
    // The retry completes: the same record, updated, with exactly the desired lines.
    let report = connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    let PushOutcome::Upserted { external_id: again, .. } = &report.results[0].outcome else { panic!("{report:?}") };
    assert_eq!(again, &external_id);
    assert_eq!(lines_in_zoho(), desired);
    assert_eq!(state.live_ids(Entity::Order).len(), 1, "no second order");
    // Whatever Zoho holds (here three copies of the lines, as a user or an older crmsync may have
    // left them), a retried create settles them to exactly the desired lines.
    let mut tripled: Vec<serde_json::Value> = Vec::new();
    let rows = state.row(Entity::Order, external_id.as_str()).unwrap()["Ordered_Items"].as_array().unwrap().clone();
    for copy in 0..3 {
        for (index, row) in rows.iter().enumerate() {
            let mut row = row.clone();
            row["id"] = json!(format!("41508680000099{copy}{index:02}"));
            tripled.push(row);
        }
    }
    assert!(state.edit(Entity::Order, external_id.as_str(), &[("Ordered_Items", json!(tripled))]));
    assert_eq!(lines_in_zoho().len(), 6);
    connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    assert_eq!(lines_in_zoho(), desired, "the retried create settles the copies");
}

/// A create Zoho refuses because the external-id field (a unique field) already names a record is
/// read as that record's id, from the documented example (zoho/crm-oas v8.0 createRecords
/// response-400-duplicatedataerror.md, there on a field `Unique_1`); a duplicate on any other
/// field stays a refusal.
#[tokio::test]
async fn a_duplicate_external_id_on_insert_names_the_record_zoho_has() {
    let running = simulator(ZohoSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let body = r#"{"data":[{"code":"DUPLICATE_DATA","details":{"api_name":"Crmsync_Id","duplicate_record":{"Owner":{"name":"Pranav","id":"2008662000000454001","zuid":"75092197"},"id":"2008662000006256222"},"json_path":"$.data[0].Crmsync_Id","id":"2008662000006256222","more_records":false},"message":"duplicate data","status":"error"}]}"#;
    let response: wire::WriteResponse = serde_json::from_str(body).unwrap();
    assert_eq!(connector.already_created(&response.data[0]).as_deref(), Some("2008662000006256222"));
    let other: wire::WriteResponse = serde_json::from_str(&body.replace("Crmsync_Id", "Unique_1")).unwrap();
    assert_eq!(connector.already_created(&other.data[0]), None);
    assert!(
        matches!(write_outcome(other.data[0].clone()), PushOutcome::Rejected { code, .. } if code == "DUPLICATE_DATA")
    );
}

#[test]
fn line_item_changes_update_rows_in_place_and_delete_the_rest() {
    let row = |id: &str, product: &str, quantity: i64| json!({"id": id, "Product_Name": {"id": product}, "Quantity": quantity, "List_Price": 10});
    let want =
        |product: &str, quantity: i64| json!({"Product_Name": {"id": product}, "Quantity": quantity, "List_Price": 10});
    let current = [row("r1", "p1", 1), row("r2", "p2", 2)];
    assert_eq!(mapping::line_item_changes("Ordered_Items", &current, &[want("p1", 1), want("p2", 2)]), None);
    assert_eq!(
        mapping::line_item_changes("Ordered_Items", &current, &[want("p3", 3)]),
        Some(vec![
            json!({"id": "r1", "Product_Name": {"id": "p3"}, "Quantity": 3, "List_Price": 10}),
            json!({"id": "r2", "_delete": null})
        ])
    );
    assert_eq!(
        mapping::line_item_changes("Ordered_Items", &current[..1], &[want("p1", 1), want("p2", 2)]),
        Some(vec![json!({"id": "r1", "Product_Name": {"id": "p1"}, "Quantity": 1, "List_Price": 10}), want("p2", 2)])
    );
}

/// The org currency is read from `GET org` as documented (zoho/crm-oas
/// v8.0/org/operations/getOrganization/examples/response-200-orggetresponse.md: `"currency": "US Dollar - USD"`,
/// `"currency_locale": "USD"`, `"mc_status": true`).
#[test]
fn the_org_currency_is_read_from_the_documented_org_example() {
    let body = r#"{"org":[{"country":"US","mc_status":true,"currency":"US Dollar - USD","currency_symbol":"$","currency_locale":"USD","iso_code":"US","time_zone":"America/Chicago","max_per_page":200}]}"#;
    let response: wire::OrgResponse = serde_json::from_str(body).unwrap();
    assert!(response.org[0].mc_status);
    assert_eq!(response.org[0].currency_code(), Some("USD"));
    let odd: wire::Org = serde_json::from_str(r#"{"currency":"US Dollar","currency_locale":"USD"}"#).unwrap();
    assert_eq!(odd.currency_code(), Some("USD"), "falls back to currency_locale");
    let none: wire::Org = serde_json::from_str(r#"{"currency":"Dollar","currency_locale":"en_US"}"#).unwrap();
    assert_eq!(none.currency_code(), None);
}

#[tokio::test]
async fn throttling_5xx_truncated_pages_and_drifted_records_change_no_record() {
    let size = WorldSize { accounts: 450, leads: 250, opportunities: 250, orders: 250 };
    let running = simulator(ZohoSimOptions::with_world(world(size))).await;
    let state = running.state();
    testkit::faults_change_nothing(|| connector(&running), state.as_ref(), Entity::ALL).await;
    testkit::garbled_records_are_set_aside(|| connector(&running), state.as_ref(), Entity::ALL).await;
}

/// Issue 13 §1b for Zoho: an order in another currency routed to a single-currency org is written
/// with its prices converted into the org currency with `metrics.fx`, and reads back as the
/// connector's `representable` says (no echo); without a rate it is refused before the call,
/// naming why.
#[tokio::test]
async fn a_single_currency_org_gets_other_currencies_converted_with_metrics_fx_or_refused_naming_why() {
    let mut options = ZohoSimOptions::with_world(world(only(0, 0, 0)));
    options.multi_currency = false;
    let running = simulator(options).await;
    let connector = connector_with(&running, Arc::new(MemoryHost::default()), |settings| {
        settings.fx = Some(crate::canonical::FxTable::new(
            Currency::new("EUR").unwrap(),
            std::collections::BTreeMap::from([(Currency::new("USD").unwrap(), "0.5".parse().unwrap())]),
        ));
    });
    let account = pushed_account(&connector).await;
    let batch = vec![
        order_with(&account, |order| order.currency = Currency::new("USD").ok()),
        order_with(&account, |order| order.currency = Currency::new("JPY").ok()),
    ];
    let report = connector.push(Entity::Order, &batch).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = &report.results[0].outcome else { panic!("{report:?}") };
    let row = running.state().row(Entity::Order, external_id.as_str()).unwrap();
    assert!(!row.contains_key("Currency"), "a single-currency org has no Currency field");
    let OutgoingOp::Upsert { data: EntityData::Order(sent) } = &batch[0].op else { panic!() };
    let price = sent.lines.as_ref().unwrap()[0].unit_price;
    let written: rust_decimal::Decimal = row["Ordered_Items"][0]["List_Price"].to_string().parse().unwrap();
    assert_eq!(written, (price * rust_decimal::Decimal::new(5, 1)).round_dp(2), "USD at 0.5 EUR");
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let change = pulled.changes.iter().find(|change| &change.external_id == external_id).unwrap();
    let EntityData::Order(read) = change.data().unwrap() else { panic!() };
    let OutgoingOp::Upsert { data } = &batch[0].op else { panic!() };
    let EntityData::Order(expected) = connector.representable(data) else { panic!() };
    assert_eq!(read.currency, expected.currency);
    assert_eq!(read.currency.as_ref().map(Currency::as_str), Some("EUR"));
    let amounts = |order: &crate::canonical::Order| {
        order.lines.iter().flatten().map(|line| (line.quantity, line.unit_price)).collect::<Vec<_>>()
    };
    assert_eq!(amounts(read), amounts(&expected), "reads back as representable says");
    let (code, message) = rejection(&report, 1);
    assert_eq!(code, "CURRENCIES_NOT_ENABLED");
    assert!(message.contains("JPY") && message.contains("metrics.fx has no rate for JPY"), "{message}");
}
