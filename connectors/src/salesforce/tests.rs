//! Salesforce connector against the simulator over loopback HTTP: the shared contract suite, the
//! issue's call-count figures, and the failure modes (401 mid-paging, limits, 5xx, truncation,
//! equal stamps across pages, partial push failure, Outbound Messages, privacy, token rotation).

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;

use super::sim::{self, RunningSalesforceSim, SalesforceSimOptions};
use super::*;
use crate::canonical::{
    Account, CanonicalId, Channel, EntityData, Order, OrderStatus, RecordRef, Stage, Timestamp, ValueMap, Vocabulary,
};
use crate::connector::{ConnectorHost, MemoryHost, WebhookDelivery};
use crate::http::RetryPolicy;
use crate::sim::{FaultSettings, Simulated, World, WorldSize};
use crate::testkit::{self, SimControl};

fn anchor() -> Timestamp {
    "2026-11-01T00:00:00Z".parse().unwrap()
}

fn world(size: WorldSize) -> World {
    World::generate(7, size, anchor(), false)
}

fn only(accounts: usize, opportunities: usize, orders: usize) -> WorldSize {
    WorldSize { accounts, leads: 0, opportunities, orders }
}

async fn simulator(options: SalesforceSimOptions) -> RunningSalesforceSim {
    sim::start(options).await.unwrap()
}

fn vocabulary() -> Vocabulary {
    let overrides = Vocabulary {
        order_statuses: ValueMap::from_pairs(&[
            ("Shipped", OrderStatus::Shipped),
            ("Delivered", OrderStatus::Delivered),
            ("Invoiced", OrderStatus::Invoiced),
            ("Cancelled", OrderStatus::Cancelled),
        ]),
        ..Vocabulary::default()
    };
    Vocabulary::with_overrides(VendorKind::Salesforce, &overrides)
}

fn connector_with(
    running: &RunningSalesforceSim,
    host: SharedHost,
    tweak: impl FnOnce(&mut ConnectionSettings),
) -> SalesforceConnector {
    connector_with_threshold(running, host, 50_000, tweak)
}

fn connector_with_threshold(
    running: &RunningSalesforceSim,
    host: SharedHost,
    bulk_threshold: u64,
    tweak: impl FnOnce(&mut ConnectionSettings),
) -> SalesforceConnector {
    let mut settings = ConnectionSettings::new("sf", vocabulary());
    settings.http.retry = RetryPolicy {
        give_up_after: Duration::from_secs(20),
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
    };
    tweak(&mut settings);
    let config = SalesforceConfig {
        login_url: running.base_url().parse().unwrap(),
        api_version: "v62.0".into(),
        auth: SalesforceAuth::RefreshToken {
            client_id: sim::CLIENT_ID.into(),
            client_secret: Some(SecretString::from(sim::CLIENT_SECRET.to_owned())),
            refresh_token: SecretString::from(sim::REFRESH_TOKEN.to_owned()),
        },
        external_id_field: "Crmsync_Id__c".into(),
        bulk_threshold,
        batch_size: 2000,
        channel_field: "LeadSource".into(),
        webhook: Some(SalesforceWebhook {
            organization_id: sim::ORGANIZATION_ID.into(),
            secret: SecretString::from(sim::WEBHOOK_SECRET.to_owned()),
        }),
        push_defaults: Default::default(),
        pricebook_id: None,
    };
    SalesforceConnector::new(settings, config, host).unwrap()
}

fn connector(running: &RunningSalesforceSim) -> SalesforceConnector {
    connector_with(running, Arc::new(MemoryHost::default()), |_| {})
}

/// An empty org, a connector to it and one account pushed there (created): the setup of most push
/// tests.
struct PushedAccount {
    running: RunningSalesforceSim,
    connector: SalesforceConnector,
    state: Arc<sim::SalesforceSim>,
    account: Outgoing,
}

async fn with_pushed_account(name: &str) -> PushedAccount {
    let running = simulator(SalesforceSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let account = testkit::new_accounts(1, name).remove(0);
    let report = connector.push(Entity::Account, std::slice::from_ref(&account)).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { created: true, .. }), "{report:?}");
    PushedAccount { running, connector, state, account }
}

fn headers() -> reqwest::header::HeaderMap {
    reqwest::header::HeaderMap::new()
}

#[tokio::test]
async fn contract_suite_passes_on_accounts() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(300, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    let empty = headers();
    let forged = WebhookDelivery { headers: &empty, query: Some("secret=wrong"), body: b"<x/>" };
    testkit::run_contract_suite(&connector, state.as_ref(), Entity::Account, &forged).await;
}

#[tokio::test]
async fn full_pull_of_100k_opportunities_costs_50_queries_and_one_token_then_an_incremental_costs_one() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(100, 100_000, 0)))).await;
    // The REST path (a Bulk API first load is tested below).
    let connector = connector_with_threshold(&running, Arc::new(MemoryHost::default()), 1_000_000, |_| {});
    let state = running.state();
    let run = testkit::pull_to_end(&connector, Entity::Opportunity, None, 1000).await.unwrap();
    let ids: BTreeSet<_> = run.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!(ids.len(), 100_000);
    assert_eq!(run.changes.len(), 100_000);
    let stats = Simulated::stats(state.as_ref());
    assert_eq!(stats.token_calls, 1);
    // 50 query calls (1 query + 49 nextRecordsUrl) + 1 describe.
    assert_eq!(stats.read_calls, 51);
    assert_eq!(run.pages, 50);
    // Every page of the query says its `totalSize` (what progress and the ETA are computed from).
    assert!(run.totals.iter().all(|total| *total == Some(100_000)), "{:?}", &run.totals[..3]);

    let touched: BTreeSet<_> = SimControl::touch(state.as_ref(), Entity::Opportunity, 10).into_iter().collect();
    let incremental = testkit::pull_to_end(&connector, Entity::Opportunity, Some(run.cursor), 10).await.unwrap();
    let after = Simulated::stats(state.as_ref());
    assert_eq!(after.read_calls - stats.read_calls, 1, "one query call");
    let seen: BTreeSet<_> = incremental.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!(seen, touched);
    assert_eq!(incremental.changes.len(), 10);
    // An incremental read's total is the rows its query holds: the 10 changed and those it re-reads in
    // the overlap window (delivered once, so fewer than the total come out).
    let total = incremental.totals.first().copied().flatten();
    assert!(incremental.totals.len() == 1 && total.is_some_and(|total| total >= 10), "{:?}", incremental.totals);
}

fn order(account: CanonicalId, index: usize) -> Outgoing {
    Outgoing {
        canonical_id: CanonicalId::new(),
        external_id: None,
        expected_version: None,
        op: OutgoingOp::Upsert {
            data: EntityData::Order(Order {
                number: Some(format!("SO-PUSH-{index:05}")),
                account: Some(RecordRef::canonical(account)),
                status: Some(OrderStatus::Confirmed),
                order_date: Some("2026-11-02".parse().unwrap()),
                currency: Some(crate::canonical::Currency::new("EUR").unwrap()),
                channel: Some(Channel::Agent),
                ..Order::default()
            }),
        },
    }
}

#[tokio::test]
async fn pushing_1000_orders_costs_85_composite_calls_and_pushing_them_again_creates_nothing() {
    let PushedAccount { running: _running, connector, state, account } = with_pushed_account("Order Customer").await;
    let orders: Vec<Outgoing> = (0..1000).map(|index| order(account.canonical_id, index)).collect();
    let before = Simulated::stats(state.as_ref()).write_calls;
    for chunk in orders.chunks(connector.push_batch_size()) {
        let report = connector.push(Entity::Order, chunk).await.unwrap();
        assert!(
            report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: true, .. })),
            "{report:?}"
        );
    }
    // Each order is one all-or-none group of 2 subrequests (the upsert inserting it Draft, the
    // Status-only update activating it): 12 orders per composite request (25 subrequests), so 17
    // requests per batch of 200, 85 for 1000. Nothing else writes.
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - before, 85);
    assert_eq!(state.composites().len(), 85);
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 1000);
    for chunk in orders.chunks(connector.push_batch_size()) {
        let report = connector.push(Entity::Order, chunk).await.unwrap();
        assert!(
            report.results.iter().all(|result| matches!(result.outcome, PushOutcome::Upserted { created: false, .. }))
        );
    }
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 1000, "re-push created nothing");
    // What was pushed reads back with its canonical id, number, status and channel.
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let first = pulled.changes.iter().find(|change| change.canonical_hint == Some(orders[0].canonical_id)).unwrap();
    let EntityData::Order(read) = first.data().unwrap().clone() else { panic!("not an order") };
    assert_eq!(read.number.as_deref(), Some("SO-PUSH-00000"));
    assert_eq!(read.status, Some(OrderStatus::Confirmed));
    assert_eq!(read.channel, Some(Channel::Agent));
}

#[tokio::test]
async fn a_401_in_the_middle_of_paging_refreshes_once_and_completes() {
    let mut options = SalesforceSimOptions::with_world(world(only(5000, 0, 0)));
    options.faults = FaultSettings { token_expiry_after_calls: 2, ..FaultSettings::default() };
    let running = simulator(options).await;
    let connector = connector(&running);
    let run = testkit::pull_to_end(&connector, Entity::Account, None, 100).await.unwrap();
    assert_eq!(run.changes.len(), 5000);
    assert_eq!(Simulated::stats(running.state().as_ref()).token_calls, 2, "one refresh");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_until_the_pull_completes() {
    let mut options = SalesforceSimOptions::with_world(world(only(3000, 0, 0)));
    options.faults = FaultSettings {
        rate_limit_after_calls: 1,
        rate_limit_for_calls: 2,
        server_error_every: 3,
        ..FaultSettings::default()
    };
    let running = simulator(options).await;
    let connector = connector(&running);
    let run = testkit::pull_to_end(&connector, Entity::Account, None, 100).await.unwrap();
    assert_eq!(run.changes.len(), 3000);
    let faulted = Simulated::stats(running.state().as_ref()).faulted_calls;
    assert!(faulted >= 2, "faults were served and survived: {faulted}");
}

#[tokio::test]
async fn a_truncated_page_is_an_error_and_the_cursor_stays() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(4500, 0, 0)))).await;
    let connector = connector(&running);
    let first = connector.pull(Entity::Account, None).await.unwrap();
    Simulated::faults(running.state().as_ref()).apply(&FaultSettings { truncate_next: 1, ..FaultSettings::default() });
    let error = connector.pull(Entity::Account, Some(&first.cursor)).await;
    // The retry policy re-reads once the truncation is over; force a failure by truncating every attempt.
    assert!(error.is_ok(), "a single truncated body is retried: {error:?}");
    let impatient = connector_with(&running, Arc::new(MemoryHost::default()), |settings| {
        settings.http.retry.give_up_after = Duration::from_millis(300);
    });
    Simulated::faults(running.state().as_ref())
        .apply(&FaultSettings { truncate_next: u64::MAX, ..FaultSettings::default() });
    let error = impatient.pull(Entity::Account, Some(&first.cursor)).await.unwrap_err();
    assert!(matches!(error.root(), ConnectorError::Decode { .. }), "{error}");
    Simulated::faults(running.state().as_ref()).apply(&FaultSettings::default());
    let second = connector.pull(Entity::Account, Some(&first.cursor)).await.unwrap();
    assert_eq!(second.changes.len(), 2000, "the same page is read again from the kept cursor");
}

#[tokio::test]
async fn records_sharing_one_modstamp_across_a_page_boundary_arrive_exactly_once() {
    let mut options = SalesforceSimOptions::with_world(world(only(5000, 0, 0)));
    options.shared_modstamp = 2500;
    let running = simulator(options).await;
    let connector = connector(&running);
    let first = testkit::pull_to_end(&connector, Entity::Account, None, 100).await.unwrap();
    let ids: BTreeSet<_> = first.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!((ids.len(), first.changes.len()), (5000, 5000));
    let again = testkit::pull_to_end(&connector, Entity::Account, Some(first.cursor), 100).await.unwrap();
    assert!(again.changes.is_empty(), "nothing repeated on the next incremental pull");
}

#[tokio::test]
async fn a_validation_error_rejects_one_record_not_the_batch() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let mut batch = testkit::new_accounts(3, "Partial");
    batch[1].op = OutgoingOp::Upsert {
        data: EntityData::Account(Account { number: Some("no name".into()), ..Account::default() }),
    };
    let report = connector.push(Entity::Account, &batch).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { .. }));
    match &report.results[1].outcome {
        PushOutcome::Rejected { code, message } => {
            assert_eq!(code, "REQUIRED_FIELD_MISSING");
            assert!(message.contains("Name"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(matches!(report.results[2].outcome, PushOutcome::Upserted { .. }));
}

#[tokio::test]
async fn outbound_messages_are_parsed_acknowledged_and_forgeries_refused() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(0, 0, 0)))).await;
    let connector = connector(&running);
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{}</OrganizationId><Notification><Id>04l1</Id><sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><sf:Id>006000000000001AAA</sf:Id><sf:Name>Deal</sf:Name><sf:StageName>Closed Won</sf:StageName><sf:SystemModstamp>2026-11-02T10:00:00.000+0000</sf:SystemModstamp></sObject></Notification><Notification><Id>04l2</Id><sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><sf:Id>001000000000001AAA</sf:Id></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"#,
        sim::ORGANIZATION_ID
    );
    let empty = headers();
    let query = format!("secret={}", sim::WEBHOOK_SECRET);
    let reply = connector
        .parse_webhook(&WebhookDelivery { headers: &empty, query: Some(&query), body: body.as_bytes() })
        .unwrap();
    assert!(reply.body.contains("<Ack>true</Ack>"));
    assert_eq!(reply.content_type, "text/xml; charset=utf-8");
    let changed = reply.events.iter().find_map(|event| match event {
        WebhookEvent::Changed(change) => Some(change),
        _ => None,
    });
    let EntityData::Opportunity(opportunity) = changed.unwrap().data().unwrap() else { panic!("not an opportunity") };
    assert_eq!(opportunity.stage, Some(Stage::Won));
    assert!(
        reply
            .events
            .iter()
            .any(|event| matches!(event, WebhookEvent::Fetch { entity: Entity::Account, ids } if ids.len() == 1))
    );
    let forged = connector.parse_webhook(&WebhookDelivery {
        headers: &empty,
        query: Some("secret=guess"),
        body: body.as_bytes(),
    });
    assert!(matches!(forged, Err(WebhookError::Unauthenticated(_))));
    let other_org = body.replace(sim::ORGANIZATION_ID, "00D999999999999AAA");
    let wrong_org =
        connector.parse_webhook(&WebhookDelivery { headers: &empty, query: Some(&query), body: other_org.as_bytes() });
    assert!(matches!(wrong_org, Err(WebhookError::Unauthenticated(_))));
}

#[tokio::test]
async fn a_denied_field_is_never_requested() {
    let running = simulator(SalesforceSimOptions::with_world(world(WorldSize {
        accounts: 0,
        leads: 20,
        opportunities: 0,
        orders: 0,
    })))
    .await;
    let connector = connector_with(&running, Arc::new(MemoryHost::default()), |settings| {
        settings.fields.deny.insert(Entity::Lead, BTreeSet::from(["email".to_owned()]));
    });
    let run = testkit::pull_to_end(&connector, Entity::Lead, None, 10).await.unwrap();
    assert_eq!(run.changes.len(), 20);
    let queries = running.state().queries();
    assert!(queries.iter().all(|query| !query.contains("Email")), "{queries:?}");
    assert!(
        run.changes.iter().all(|change| matches!(change.data(), Some(EntityData::Lead(lead)) if lead.email.is_none()))
    );
}

#[tokio::test]
async fn a_rotated_refresh_token_is_saved_before_use() {
    let mut options = SalesforceSimOptions::with_world(world(only(10, 0, 0)));
    options.rotate_refresh_tokens = true;
    let running = simulator(options).await;
    let host = Arc::new(MemoryHost::default());
    let connector = connector_with(&running, host.clone(), |_| {});
    connector.pull(Entity::Account, None).await.unwrap();
    let saved = host.load_state(&ConnectionId::new("sf"), REFRESH_TOKEN_STATE).unwrap();
    assert_eq!(saved, Some(running.state().current_refresh_token()));
    // A new connector (restart) logs in with the saved token; the configured one is dead now.
    let restarted = connector_with(&running, host, |_| {});
    assert!(restarted.pull(Entity::Account, None).await.is_ok());
}

#[tokio::test]
async fn a_renamed_mapped_field_stops_the_entity_with_a_clear_error() {
    let mut options = SalesforceSimOptions::with_world(world(only(5, 5, 0)));
    options.faults = FaultSettings { schema_drift_renamed_field: true, ..FaultSettings::default() };
    let running = simulator(options).await;
    let connector = connector(&running);
    let error = connector.pull(Entity::Opportunity, None).await.unwrap_err();
    assert!(matches!(error, ConnectorError::SchemaDrift { .. }), "{error}");
    assert!(error.to_string().contains("StageName"), "{error}");
    // An unknown new field is kept in `extra`.
    Simulated::faults(running.state().as_ref())
        .apply(&FaultSettings { schema_drift_unknown_field: true, ..FaultSettings::default() });
    let fresh = connector_with(&running, Arc::new(MemoryHost::default()), |_| {});
    let page = fresh.pull(Entity::Account, None).await.unwrap();
    assert_eq!(page.changes[0].extra.get("Region__c"), Some(&json!("EMEA")));
}

#[test]
fn every_default_stage_status_and_channel_value_maps() {
    let vocabulary = vocabulary();
    let config_currency = crate::canonical::Currency::new("USD").unwrap();
    let config = SalesforceConfig {
        login_url: "https://login.salesforce.com".parse().unwrap(),
        api_version: "v62.0".into(),
        auth: SalesforceAuth::ClientCredentials {
            client_id: "x".into(),
            client_secret: SecretString::from("y".to_owned()),
        },
        external_id_field: "Crmsync_Id__c".into(),
        bulk_threshold: 1,
        batch_size: 2000,
        channel_field: "LeadSource".into(),
        webhook: None,
        push_defaults: Default::default(),
        pricebook_id: None,
    };
    let expected_stages = [
        ("Prospecting", Stage::Qualified),
        ("Qualification", Stage::Qualified),
        ("Needs Analysis", Stage::Budget),
        ("Value Proposition", Stage::Plan),
        ("Id. Decision Makers", Stage::Plan),
        ("Perception Analysis", Stage::Plan),
        ("Proposal/Price Quote", Stage::Execute),
        ("Negotiation/Review", Stage::FollowUp),
        ("Closed Won", Stage::Won),
        ("Closed Lost", Stage::Lost),
    ];
    for (index, (stage, canonical)) in expected_stages.iter().enumerate() {
        let row = json!({"Id": format!("006{index:012}AAA"), "SystemModstamp": "2026-01-01T00:00:00.000+0000", "StageName": stage, "LeadSource": "Web", "CloseDate": "2026-02-01"});
        let change = mapping::to_change(
            Entity::Opportunity,
            row.as_object().unwrap(),
            &vocabulary,
            &config,
            Some(&config_currency),
            &mut mapping::Unmapped::default(),
        )
        .unwrap();
        let EntityData::Opportunity(opportunity) = change.data().unwrap() else { panic!() };
        assert_eq!(opportunity.stage, Some(*canonical), "{stage}");
        assert_eq!(opportunity.channel, Some(Channel::Ecommerce));
        assert_eq!(opportunity.vendor_stage.as_deref(), Some(*stage));
    }
    for (status, canonical) in [("Draft", OrderStatus::Draft), ("Activated", OrderStatus::Confirmed)] {
        assert_eq!(Vocabulary::defaults(VendorKind::Salesforce).order_statuses.get(status), Some(canonical));
    }
    for (source, channel) in [
        ("Web", Channel::Ecommerce),
        ("Phone Inquiry", Channel::Direct),
        ("Partner Referral", Channel::Agent),
        ("Purchased List", Channel::Other),
        ("Other", Channel::Other),
    ] {
        assert_eq!(vocabulary.channel(Some(source)), channel, "{source}");
    }
    let mut unmapped = mapping::Unmapped::default();
    let row = json!({"Id": "006000000000099AAA", "SystemModstamp": "2026-01-01T00:00:00.000+0000", "StageName": "Discovery", "LeadSource": "Carrier Pigeon"});
    let change = mapping::to_change(
        Entity::Opportunity,
        row.as_object().unwrap(),
        &vocabulary,
        &config,
        Some(&config_currency),
        &mut unmapped,
    )
    .unwrap();
    let EntityData::Opportunity(opportunity) = change.data().unwrap() else { panic!() };
    assert_eq!((opportunity.stage, opportunity.channel), (None, Some(Channel::Other)), "unmapped values never block");
    assert_eq!(opportunity.vendor_stage.as_deref(), Some("Discovery"));
    assert_eq!(unmapped.0.len(), 2);
}

#[tokio::test]
async fn a_large_first_load_uses_one_bulk_query_job_then_rest_incrementals() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(30_000, 0, 0)))).await;
    let connector = connector_with_threshold(&running, Arc::new(MemoryHost::default()), 10_000, |_| {});
    let state = running.state();
    let run = testkit::pull_to_end(&connector, Entity::Account, None, 100).await.unwrap();
    let ids: BTreeSet<_> = run.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!((ids.len(), run.changes.len()), (30_000, 30_000));
    assert_eq!(state.bulk_jobs_created(), 1);
    let stats = Simulated::stats(state.as_ref());
    // describe + the first REST page (its totalSize of 30,000 chooses Bulk) + create job + 1 poll +
    // 3 result pages of 10,000.
    assert_eq!(stats.read_calls, 7);
    assert_eq!(run.pages, 4);
    // The REST page's `totalSize`, then the finished job's `numberRecordsProcessed` on its first
    // result page; the later result pages say nothing new.
    assert_eq!(run.totals, [Some(30_000), Some(30_000), None, None]);
    let touched: BTreeSet<_> = SimControl::touch(state.as_ref(), Entity::Account, 10).into_iter().collect();
    let incremental = testkit::pull_to_end(&connector, Entity::Account, Some(run.cursor), 10).await.unwrap();
    assert_eq!(incremental.changes.iter().map(|change| change.external_id.clone()).collect::<BTreeSet<_>>(), touched);
    assert_eq!(
        Simulated::stats(state.as_ref()).read_calls - stats.read_calls,
        1,
        "incremental reads use one REST query"
    );
}

#[tokio::test]
async fn a_restart_resumes_the_bulk_job_instead_of_starting_over() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(25_000, 0, 0)))).await;
    let host: SharedHost = Arc::new(MemoryHost::default());
    let first = connector_with_threshold(&running, host.clone(), 10_000, |_| {});
    let page = first.pull(Entity::Account, None).await.unwrap();
    assert!(page.has_more);
    drop(first);
    // The process died before committing the page: the next start has no cursor, but the job id.
    let restarted = connector_with_threshold(&running, host, 10_000, |_| {});
    let run = testkit::pull_to_end(&restarted, Entity::Account, None, 100).await.unwrap();
    let ids: BTreeSet<_> = run.changes.iter().map(|change| change.external_id.clone()).collect();
    assert_eq!(ids.len(), 25_000);
    assert_eq!(running.state().bulk_jobs_created(), 1, "the job was resumed, not created again");
}

#[tokio::test]
async fn the_jwt_bearer_flow_signs_an_assertion_the_org_accepts_and_a_wrong_user_is_refused() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(10, 0, 0)))).await;
    let pem = running.state().jwt_private_key_pem().unwrap();
    let jwt_connector = |username: &str| {
        let mut settings = ConnectionSettings::new("sf", vocabulary());
        settings.http.retry = RetryPolicy {
            give_up_after: Duration::from_secs(20),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        };
        let config = SalesforceConfig {
            login_url: running.base_url().parse().unwrap(),
            api_version: "v62.0".into(),
            auth: SalesforceAuth::JwtBearer {
                client_id: sim::CLIENT_ID.into(),
                username: username.into(),
                private_key: SecretString::from(pem.clone()),
                audience: None,
            },
            external_id_field: "Crmsync_Id__c".into(),
            bulk_threshold: 50_000,
            batch_size: 2000,
            channel_field: "LeadSource".into(),
            webhook: None,
            push_defaults: Default::default(),
            pricebook_id: None,
        };
        SalesforceConnector::new(settings, config, Arc::new(MemoryHost::default())).unwrap()
    };
    let page = jwt_connector(sim::JWT_USERNAME).pull(Entity::Account, None).await.unwrap();
    assert_eq!(page.changes.len(), 10);
    let error = jwt_connector("someone@else.example").pull(Entity::Account, None).await.unwrap_err();
    assert!(matches!(error, ConnectorError::InvalidGrant { .. }), "{error}");
    assert!(error.to_string().contains("invalid_grant: user hasn't approved this consumer"), "{error}");
    assert!(!error.to_string().contains("PRIVATE KEY"));
}

#[tokio::test]
async fn an_expired_query_locator_resumes_after_the_last_record_delivered() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(5000, 0, 0)))).await;
    let connector = connector(&running);
    let first = connector.pull(Entity::Account, None).await.unwrap();
    assert!(first.has_more);
    running.state().expire_locators();
    let rest = testkit::pull_to_end(&connector, Entity::Account, Some(first.cursor), 10).await.unwrap();
    let mut ids: Vec<_> = first.changes.iter().chain(&rest.changes).map(|change| change.external_id.clone()).collect();
    let delivered = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), delivered), (5000, 5000), "every account once: nothing re-read from the start");
}

#[tokio::test]
async fn throttling_5xx_truncated_pages_and_drifted_records_change_no_record() {
    let size = WorldSize { accounts: 2100, leads: 150, opportunities: 150, orders: 150 };
    let running = simulator(SalesforceSimOptions::with_world(world(size))).await;
    let state = running.state();
    testkit::faults_change_nothing(|| connector(&running), state.as_ref(), Entity::ALL).await;
    testkit::garbled_records_are_set_aside(|| connector(&running), state.as_ref(), Entity::ALL).await;
}

#[tokio::test]
async fn total_requests_limit_exceeded_pauses_the_org_while_concurrent_limits_are_retried() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(50, 0, 0)))).await;
    let connector = connector(&running);
    let state = running.state();
    Simulated::faults(state.as_ref()).apply(&FaultSettings {
        rate_limit_after_calls: 1,
        rate_limit_for_calls: 3,
        ..FaultSettings::default()
    });
    let page = connector.pull(Entity::Account, None).await.unwrap();
    assert_eq!(page.changes.len(), 50, "ConcurrentRequests is transient: backed off and retried");
    assert_eq!(connector.usage().throttling.throttled, 3);

    Simulated::faults(state.as_ref()).apply(&FaultSettings { daily_limit_exhausted: true, ..FaultSettings::default() });
    let error = connector.pull(Entity::Account, None).await.unwrap_err();
    assert!(
        matches!(&error, ConnectorError::QuotaExhausted { message, .. } if message.contains("TotalRequests")),
        "{error:?}"
    );
    let throttling = connector.usage().throttling;
    assert!(throttling.paused_until.is_some(), "{throttling:?}");
    let calls = Simulated::stats(state.as_ref()).faulted_calls;
    let again = connector.pull(Entity::Account, None).await.unwrap_err();
    assert!(matches!(again, ConnectorError::QuotaExhausted { .. }), "{again:?}");
    assert_eq!(Simulated::stats(state.as_ref()).faulted_calls, calls, "no call reaches a paused org");
}

fn opportunity(account: Option<CanonicalId>, amount: &str, close_date: Option<&str>) -> Outgoing {
    Outgoing {
        canonical_id: CanonicalId::new(),
        external_id: None,
        expected_version: None,
        op: OutgoingOp::Upsert {
            data: EntityData::Opportunity(crate::canonical::Opportunity {
                name: Some("Big deal".into()),
                account: account.map(RecordRef::canonical),
                amount: Some(amount.parse().unwrap()),
                stage: Some(Stage::Qualified),
                close_date: close_date.map(|day| day.parse().unwrap()),
                ..crate::canonical::Opportunity::default()
            }),
        },
    }
}

fn fx_eur_usd(settings: &mut ConnectionSettings) {
    settings.fx = Some(crate::canonical::FxTable::new(
        crate::canonical::Currency::new("EUR").unwrap(),
        std::collections::BTreeMap::from([(crate::canonical::Currency::new("USD").unwrap(), "0.5".parse().unwrap())]),
    ));
}

#[tokio::test]
async fn a_single_currency_org_is_read_in_its_corporate_currency_and_never_sent_currency_iso_code() {
    let options = SalesforceSimOptions::with_world(world(only(20, 50, 20))).single_currency("GBP");
    let running = simulator(options).await;
    let connector = connector_with(&running, Arc::new(MemoryHost::default()), fx_eur_usd);
    let state = running.state();
    let run = testkit::pull_to_end(&connector, Entity::Opportunity, None, 100).await.unwrap();
    assert_eq!(run.changes.len(), 50);
    for change in &run.changes {
        let EntityData::Opportunity(read) = change.data().unwrap() else { panic!("not an opportunity") };
        assert_eq!(read.amount.as_ref().unwrap().currency.as_str(), "GBP", "the corporate currency, not USD");
    }
    let orders = testkit::pull_to_end(&connector, Entity::Order, None, 100).await.unwrap();
    let EntityData::Order(order) = orders.changes[0].data().unwrap() else { panic!("not an order") };
    assert_eq!(order.currency.as_ref().map(|currency| currency.as_str()), Some("GBP"));
    let queries = state.queries();
    assert_eq!(queries.iter().filter(|query| query.contains("FROM Organization")).count(), 1, "read once: {queries:?}");
    assert!(
        queries
            .iter()
            .filter(|query| !query.contains("FROM Organization"))
            .all(|query| !query.contains("CurrencyIsoCode")),
        "never selected: {queries:?}"
    );

    // Pushes: a GBP amount as is, a EUR amount refused (no EUR→GBP rate), no CurrencyIsoCode sent.
    let account = testkit::new_accounts(1, "Currency Customer").remove(0);
    connector.push(Entity::Account, std::slice::from_ref(&account)).await.unwrap();
    let batch = [
        opportunity(Some(account.canonical_id), "1200.50 GBP", Some("2026-12-31")),
        opportunity(Some(account.canonical_id), "1000 EUR", Some("2026-12-31")),
    ];
    let writes = Simulated::stats(state.as_ref()).write_calls;
    let report = connector.push(Entity::Opportunity, &batch).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = &report.results[0].outcome else { panic!("{report:?}") };
    let row = state.row(Entity::Opportunity, external_id.as_str()).unwrap();
    assert_eq!(row.get("Amount"), Some(&json!(1200.5)));
    assert!(!row.contains_key("CurrencyIsoCode"));
    match &report.results[1].outcome {
        PushOutcome::Rejected { code, message } => {
            assert_eq!(code, "CURRENCY_NOT_CONVERTIBLE");
            assert!(message.contains("Opportunity.Amount is in EUR") && message.contains("GBP"), "{message}");
        }
        other => panic!("expected a rejection before the call, got {other:?}"),
    }
    assert_eq!(Simulated::stats(state.as_ref()).write_calls - writes, 1, "one call, for the valid record only");
}

#[tokio::test]
async fn a_single_currency_org_receives_amounts_converted_with_the_fx_table() {
    let options = SalesforceSimOptions::with_world(world(only(0, 0, 0))).single_currency("USD");
    let running = simulator(options).await;
    let connector = connector_with(&running, Arc::new(MemoryHost::default()), fx_eur_usd);
    let account = testkit::new_accounts(1, "Fx Customer").remove(0);
    connector.push(Entity::Account, std::slice::from_ref(&account)).await.unwrap();
    let deal = opportunity(Some(account.canonical_id), "100.01 EUR", Some("2026-12-31"));
    let report = connector.push(Entity::Opportunity, std::slice::from_ref(&deal)).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = &report.results[0].outcome else { panic!("{report:?}") };
    // 1 EUR = 1 EUR (reporting), 1 USD = 0.5 EUR: 100.01 EUR = 200.02 USD.
    let row = running.state().row(Entity::Opportunity, external_id.as_str()).unwrap();
    assert_eq!(row.get("Amount"), Some(&json!(200.02)));
    // What reading it back yields is what the daemon hashes as pushed: no echo.
    let OutgoingOp::Upsert { data } = &deal.op else { unreachable!() };
    let EntityData::Opportunity(expected) = connector.representable(data) else { panic!() };
    let pulled = testkit::pull_to_end(&connector, Entity::Opportunity, None, 10).await.unwrap();
    let EntityData::Opportunity(read) = pulled.changes[0].data().unwrap() else { panic!() };
    assert_eq!(read.amount, expected.amount);
    assert_eq!(read.amount.as_ref().map(ToString::to_string).as_deref(), Some("200.02 USD"));
}

#[tokio::test]
async fn a_multi_currency_org_gets_currency_iso_code_and_check_names_fields_a_single_currency_org_lacks() {
    let PushedAccount { running, connector, state: _, account } = with_pushed_account("Multi Customer").await;
    let deal = opportunity(Some(account.canonical_id), "70 GBP", Some("2026-12-31"));
    let report = connector.push(Entity::Opportunity, std::slice::from_ref(&deal)).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = &report.results[0].outcome else { panic!("{report:?}") };
    let row = running.state().row(Entity::Opportunity, external_id.as_str()).unwrap();
    assert_eq!(row.get("CurrencyIsoCode"), Some(&json!("GBP")));
    assert!(!connector.check().await.unwrap().notes.iter().any(|note| note.contains("CurrencyIsoCode")));

    let single = simulator(SalesforceSimOptions::with_world(world(only(0, 0, 0))).single_currency("EUR")).await;
    let notes = self::connector(&single).check().await.unwrap().notes;
    for object in ["Opportunity", "Order"] {
        let expected = format!("{object}: mapped field CurrencyIsoCode is not in this org");
        assert!(notes.iter().any(|note| note.starts_with(&expected)), "{expected} in {notes:?}");
    }
    assert!(notes.iter().any(|note| note.contains("corporate currency EUR")), "{notes:?}");
}

#[tokio::test]
async fn a_create_missing_a_required_field_is_rejected_before_the_call_naming_it() {
    let PushedAccount { running, connector, state, account } = with_pushed_account("Required Customer").await;
    let mut order_without_date = order(account.canonical_id, 1);
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut order_without_date.op {
        order.order_date = None;
    }
    let mut order_without_account = order(account.canonical_id, 2);
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut order_without_account.op {
        order.account = None;
    }
    let writes = Simulated::stats(state.as_ref()).write_calls;
    let report =
        connector.push(Entity::Opportunity, &[opportunity(Some(account.canonical_id), "5 EUR", None)]).await.unwrap();
    let orders = connector.push(Entity::Order, &[order_without_date, order_without_account]).await.unwrap();
    assert_eq!(Simulated::stats(state.as_ref()).write_calls, writes, "nothing was sent");
    let reasons: Vec<String> = report
        .results
        .iter()
        .chain(&orders.results)
        .map(|result| match &result.outcome {
            PushOutcome::Rejected { code, message } => format!("{code}: {message}"),
            other => panic!("expected a rejection, got {other:?}"),
        })
        .collect();
    assert!(reasons[0].starts_with("REQUIRED_FIELD_MISSING: Opportunity.CloseDate is required"), "{}", reasons[0]);
    assert!(reasons[1].contains("Order.EffectiveDate is required"), "{}", reasons[1]);
    // AccountId is nillable in describe but required by the Order object reference.
    assert!(reasons[2].contains("Order.AccountId is required"), "{}", reasons[2]);

    // A documented default in config fills the gap.
    let filled = connector_with(&running, Arc::new(MemoryHost::default()), |_| {});
    let mut config_default = filled;
    config_default.config.push_defaults.insert("Opportunity.CloseDate".into(), "2026-12-31".into());
    let report = config_default
        .push(Entity::Opportunity, &[opportunity(Some(account.canonical_id), "5 EUR", None)])
        .await
        .unwrap();
    let PushOutcome::Upserted { external_id, .. } = &report.results[0].outcome else { panic!("{report:?}") };
    assert_eq!(
        state.row(Entity::Opportunity, external_id.as_str()).unwrap().get("CloseDate"),
        Some(&json!("2026-12-31"))
    );
}

#[tokio::test]
async fn orders_are_inserted_draft_then_activated_once_and_the_org_refuses_an_activated_insert() {
    let PushedAccount { running, connector, state, account } = with_pushed_account("Status Customer").await;
    let mut statuses = Vec::new();
    for (index, status) in [OrderStatus::Draft, OrderStatus::Confirmed, OrderStatus::Shipped, OrderStatus::Cancelled]
        .into_iter()
        .enumerate()
    {
        let mut outgoing = order(account.canonical_id, index);
        if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut outgoing.op {
            order.status = Some(status);
        }
        statuses.push(outgoing);
    }
    let report = connector.push(Entity::Order, &statuses).await.unwrap();
    let mut ids = Vec::new();
    for (result, expected) in report.results.iter().zip(["Draft", "Activated", "Shipped", "Cancelled"]) {
        let PushOutcome::Upserted { external_id, created: true, .. } = &result.outcome else { panic!("{report:?}") };
        assert_eq!(state.row(Entity::Order, external_id.as_str()).unwrap().get("Status"), Some(&json!(expected)));
        ids.push(external_id.clone());
    }
    // The confirmed order moves on to shipped: one Status-only update; re-pushing changes nothing.
    let mut shipped = statuses[1].clone();
    shipped.external_id = Some(ids[1].clone());
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut shipped.op {
        order.status = Some(OrderStatus::Shipped);
    }
    for _ in 0..2 {
        let report = connector.push(Entity::Order, std::slice::from_ref(&shipped)).await.unwrap();
        assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { created: false, .. }), "{report:?}");
        assert_eq!(state.row(Entity::Order, ids[1].as_str()).unwrap().get("Status"), Some(&json!("Shipped")));
    }
    // A retried create (its answer lost: crmsync has no id) updates the order instead of re-inserting it.
    let report = connector.push(Entity::Order, std::slice::from_ref(&statuses[2])).await.unwrap();
    assert!(
        matches!(&report.results[0].outcome, PushOutcome::Upserted { external_id, created: false, .. } if *external_id == ids[2])
    );
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 4);
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let read: Vec<Option<OrderStatus>> = ids
        .iter()
        .map(|id| {
            let change = pulled.changes.iter().find(|change| &change.external_id == id).unwrap();
            let EntityData::Order(order) = change.data().unwrap() else { panic!() };
            order.status
        })
        .collect();
    assert_eq!(
        read,
        [
            Some(OrderStatus::Draft),
            Some(OrderStatus::Shipped),
            Some(OrderStatus::Shipped),
            Some(OrderStatus::Cancelled)
        ]
    );

    // The org itself refuses an Activated insert and an activation that changes other fields.
    let client = reqwest::Client::new();
    let base = running.base_url();
    let bearer = raw_token(&client, &base).await;
    let account_id = state.live_ids(Entity::Account).remove(0);
    let body = json!({"allOrNone": false, "records": [
        {"attributes": {"type": "Order"}, "Crmsync_Id__c": "direct-1", "AccountId": account_id, "EffectiveDate": "2026-11-02", "Status": "Activated"}
    ]});
    let results: serde_json::Value = client
        .patch(format!("{base}/services/data/v62.0/composite/sobjects/Order/Crmsync_Id__c"))
        .bearer_auth(&bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(results[0]["errors"][0]["statusCode"], "FIELD_INTEGRITY_EXCEPTION", "{results}");
    let body = json!({"allOrNone": false, "records": [
        {"attributes": {"type": "Order"}, "id": ids[0].as_str(), "Status": "Activated", "Description": "and more"}
    ]});
    let results: serde_json::Value = client
        .patch(format!("{base}/services/data/v62.0/composite/sobjects"))
        .bearer_auth(&bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(results[0]["success"], false, "{results}");
    assert_eq!(results[0]["errors"][0]["fields"][0], "Description", "{results}");
}

#[tokio::test]
async fn order_lines_become_order_items_before_activation_and_read_back_without_change() {
    let PushedAccount { running: _running, connector, state, account } = with_pushed_account("Items Customer").await;
    let mut orders = testkit::new_orders(&RecordRef::canonical(account.canonical_id), 2, "SO-ITEMS");
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut orders[1].op {
        order.lines.as_mut().unwrap()[0].product = Some("Flux capacitor".into());
    }
    let report = connector.push(Entity::Order, &orders).await.unwrap();
    let PushOutcome::Upserted { external_id, created: true, .. } = &report.results[0].outcome else {
        panic!("{report:?}")
    };
    match &report.results[1].outcome {
        PushOutcome::Rejected { code, message } => {
            assert_eq!(code, "PRICEBOOK_ENTRY_MISSING");
            assert!(message.contains("Flux capacitor"), "{message}");
        }
        other => panic!("expected a rejection before the call, got {other:?}"),
    }
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 1, "the unpriceable order was never sent");
    let row = state.row(Entity::Order, external_id.as_str()).unwrap();
    assert_eq!(row.get("Status"), Some(&json!("Activated")), "activated after its products exist");
    assert_eq!(row.get("TotalAmount"), Some(&json!(19)), "rolled up from 2 × 9.50");
    // What reads back is what was pushed: lines, total, status.
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let EntityData::Order(read) = pulled.changes[0].data().unwrap() else { panic!("not an order") };
    let OutgoingOp::Upsert { data: EntityData::Order(sent) } = &orders[0].op else { unreachable!() };
    let line = &read.lines.as_ref().unwrap()[0];
    assert_eq!((line.product.as_deref(), line.sku.as_deref()), (Some("Widget"), Some("W-100")));
    assert_eq!(
        (line.quantity, line.unit_price, line.line_total),
        (sent.lines.as_ref().unwrap()[0].quantity, sent.lines.as_ref().unwrap()[0].unit_price, 19.into())
    );
    assert_eq!(read.total_amount, Some(19.into()));
    assert_eq!(read.status, Some(OrderStatus::Confirmed));
    // Pushing it again adds no second set of products.
    let mut again = orders[0].clone();
    again.external_id = Some(external_id.clone());
    connector.push(Entity::Order, std::slice::from_ref(&again)).await.unwrap();
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let EntityData::Order(read) = pulled.changes[0].data().unwrap() else { panic!("not an order") };
    assert_eq!(read.lines.as_ref().map(Vec::len), Some(1));
}

#[tokio::test]
async fn the_org_refuses_order_products_outside_the_order_price_book_or_without_an_entry() {
    let PushedAccount { running, connector, state, account } = with_pushed_account("Raw Customer").await;
    // An order without lines has no price book.
    let report = connector.push(Entity::Order, &[order(account.canonical_id, 7)]).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = &report.results[0].outcome else { panic!("{report:?}") };
    let client = reqwest::Client::new();
    let base = running.base_url();
    let bearer = raw_token(&client, &base).await;
    let entry = price_book_entry(&client, &base, &bearer, "W-100").await;
    let body = json!({"allOrNone": false, "records": [
        {"attributes": {"type": "OrderItem"}, "OrderId": external_id.as_str(), "PricebookEntryId": entry, "Quantity": 1, "UnitPrice": 5},
        {"attributes": {"type": "OrderItem"}, "OrderId": external_id.as_str(), "Quantity": 1, "UnitPrice": 5}
    ]});
    let results: serde_json::Value = client
        .post(format!("{base}/services/data/v62.0/composite/sobjects"))
        .bearer_auth(&bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(results[0]["errors"][0]["statusCode"], "FIELD_INTEGRITY_EXCEPTION", "{results}");
    assert_eq!(results[1]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING", "{results}");
    assert_eq!(results[1]["errors"][0]["fields"][0], "PricebookEntryId", "{results}");
    assert!(state.row(Entity::Order, external_id.as_str()).unwrap().get("TotalAmount") == Some(&json!(0)));
}

/// Issue 13 follow-up: new lines on an order that already has products. An activated order's
/// products cannot be deleted (Salesforce Help, "Editing and Deletion Considerations for Order
/// Products"), so the order goes back to Draft, its products are replaced, and it is activated
/// again; the read-back carries the new lines (no echo). The same lines again cost no item call.
#[tokio::test]
async fn changed_lines_replace_the_products_of_an_activated_order_through_draft() {
    let PushedAccount { running: _running, connector, state, account } = with_pushed_account("Lines Customer").await;
    let mut order = testkit::new_orders(&RecordRef::canonical(account.canonical_id), 1, "SO-LINES").remove(0);
    let report = connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    let PushOutcome::Upserted { external_id, .. } = report.results[0].outcome.clone() else { panic!("{report:?}") };
    assert_eq!(state.row(Entity::Order, external_id.as_str()).unwrap()["Status"], "Activated");
    order.external_id = Some(external_id.clone());
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut order.op {
        let lines = order.lines.as_mut().unwrap();
        lines[0].quantity = 3.into();
        lines.push(crate::canonical::OrderLine {
            product: Some("Widget".into()),
            sku: Some("W-100".into()),
            quantity: 1.into(),
            unit_price: "9.50".parse().unwrap(),
            line_total: "9.50".parse().unwrap(),
        });
    }
    let report = connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { .. }), "{report:?}");
    let row = state.row(Entity::Order, external_id.as_str()).unwrap();
    assert_eq!(row["Status"], "Activated", "activated again");
    assert_eq!(row["TotalAmount"], json!(38), "3 × 9.50 + 1 × 9.50");
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    let EntityData::Order(read) = pulled.changes[0].data().unwrap() else { panic!("not an order") };
    let OutgoingOp::Upsert { data } = &order.op else { unreachable!() };
    let EntityData::Order(sent) = connector.representable(data) else { panic!() };
    let quantities = |order: &Order| {
        let mut lines: Vec<_> =
            order.lines.iter().flatten().map(|line| (line.quantity.normalize(), line.unit_price.normalize())).collect();
        lines.sort();
        lines
    };
    assert_eq!(quantities(read), quantities(&sent), "reads back as pushed");
    assert_eq!(read.status, Some(OrderStatus::Confirmed));
    // The same lines again: no product is deleted or added.
    let writes = Simulated::stats(state.as_ref()).write_calls;
    connector.push(Entity::Order, std::slice::from_ref(&order)).await.unwrap();
    let calls = Simulated::stats(state.as_ref()).write_calls - writes;
    assert_eq!(calls, 1, "one composite request");
    let sent: Vec<String> = state.composites().last().unwrap().iter().map(|(name, _, _)| name.clone()).collect();
    assert_eq!(sent, ["o0", "o0_status"], "the order update and its status, nothing for its products");
}

/// Issue 13 §3: whether an order is activated is its `StatusCode` (the status category, Draft or
/// Activated: Order object reference, OrderStatus.StatusCode), not "its Status is not the Draft
/// value". A Cancelled order is in the Draft category here: its products are replaced without
/// moving it to Draft first, and an activated one still goes through Draft.
#[tokio::test]
async fn an_order_is_activated_by_its_status_code_not_by_its_status_value() {
    let PushedAccount { running: _running, connector, state, account } =
        with_pushed_account("Status Code Customer").await;
    let mut orders = testkit::new_orders(&RecordRef::canonical(account.canonical_id), 2, "SO-CODE");
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut orders[0].op {
        order.status = Some(OrderStatus::Cancelled);
    }
    let report = connector.push(Entity::Order, &orders).await.unwrap();
    for (order, result) in orders.iter_mut().zip(&report.results) {
        let PushOutcome::Upserted { external_id, .. } = result.outcome.clone() else { panic!("{report:?}") };
        order.external_id = Some(external_id);
    }
    let ids: Vec<String> = orders.iter().map(|order| order.external_id.clone().unwrap().to_string()).collect();
    let id = |index: usize| ids[index].clone();
    assert_eq!(state.row(Entity::Order, id(0).as_str()).unwrap()["Status"], "Cancelled");
    assert_eq!(state.row(Entity::Order, id(1).as_str()).unwrap()["Status"], "Activated");
    // The org answers StatusCode as the category of each status.
    let pulled = testkit::pull_to_end(&connector, Entity::Order, None, 10).await.unwrap();
    assert_eq!(pulled.changes.len(), 2);
    for order in &mut orders {
        if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut order.op {
            order.lines.as_mut().unwrap()[0].quantity = 5.into();
        }
    }
    // The cancelled (Draft-category) order: its update, its products deleted and added, its status.
    let writes = Simulated::stats(state.as_ref()).write_calls;
    let report = connector.push(Entity::Order, std::slice::from_ref(&orders[0])).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { .. }), "{report:?}");
    let calls = Simulated::stats(state.as_ref()).write_calls - writes;
    assert_eq!(calls, 1, "one composite request");
    let sent: Vec<String> = state.composites().last().unwrap().iter().map(|(name, _, _)| name.clone()).collect();
    assert_eq!(
        sent,
        ["o0", "o0_del0", "o0_item0", "o0_status"],
        "no move to Draft for an order already in the Draft category"
    );
    let row = state.row(Entity::Order, id(0).as_str()).unwrap();
    assert_eq!(row["Status"], "Cancelled");
    assert_eq!(row["TotalAmount"], json!(47.5), "5 × 9.50");
    // The activated order goes back to Draft first (one more call), then is activated again.
    let writes = Simulated::stats(state.as_ref()).write_calls;
    let report = connector.push(Entity::Order, std::slice::from_ref(&orders[1])).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { .. }), "{report:?}");
    let calls = Simulated::stats(state.as_ref()).write_calls - writes;
    assert_eq!(calls, 1, "one composite request");
    let sent: Vec<String> = state.composites().last().unwrap().iter().map(|(name, _, _)| name.clone()).collect();
    assert_eq!(
        sent,
        ["o0", "o0_draft", "o0_del0", "o0_item0", "o0_status"],
        "moved to Draft, products replaced, activated again"
    );
    assert!(
        !state.order_history().iter().any(|(order, status)| *order == id(1) && status.as_deref() == Some("Draft")),
        "the Draft step was never visible"
    );
    let row = state.row(Entity::Order, id(1).as_str()).unwrap();
    assert_eq!(row["Status"], "Activated");
    assert_eq!(row["TotalAmount"], json!(47.5));
}

/// Issue 17, defect "a Salesforce order's Draft read back mid-write": an order crmsync pushes as
/// activated is written as Draft, given its products and activated in one composite request with
/// `allOrNone`, so no state in between is ever committed where a reader (a pull under `run`) could
/// see it — neither for a new order nor for one whose products are replaced through Draft. An
/// order the org refuses rolls its request back: the others are sent again without it, and an
/// order whose product fails after its insert leaves no Draft order behind.
#[tokio::test]
async fn an_order_pushed_as_activated_is_never_committed_in_draft_and_a_failed_write_leaves_nothing() {
    let PushedAccount { running, connector, state, account } = with_pushed_account("Atomic Customer").await;
    let never_pushed = testkit::new_accounts(1, "Elsewhere Customer").remove(0);
    let mut orders = testkit::new_orders(&RecordRef::canonical(account.canonical_id), 3, "SO-ATOMIC");
    orders[1] = testkit::new_orders(&RecordRef::canonical(never_pushed.canonical_id), 1, "SO-NOWHERE").remove(0);
    let report = connector.push(Entity::Order, &orders).await.unwrap();
    // The order whose account is not in the org is refused by the org, naming the step; the
    // request it was in was rolled back and the two others sent again without it.
    match &report.results[1].outcome {
        PushOutcome::Rejected { code, message } => {
            assert_eq!(code, "INVALID_FIELD");
            assert!(message.contains("the order failed") && message.contains("nothing of it was kept"), "{message}");
        }
        other => panic!("expected the org to refuse the order, got {other:?}"),
    }
    let composites = state.composites();
    assert_eq!(composites.len(), 2, "one request rolled back, one again without the refused order");
    let names = |index: usize| composites[index].iter().map(|(name, _, _)| name.clone()).collect::<Vec<_>>();
    assert_eq!(names(0).len(), 9, "three orders of 3 subrequests share a request: {:?}", names(0));
    assert_eq!(names(1), ["o0", "o0_item0", "o0_status", "o2", "o2_item0", "o2_status"]);
    let mut ids = Vec::new();
    for index in [0, 2] {
        let PushOutcome::Upserted { external_id, created: true, .. } = &report.results[index].outcome else {
            panic!("{report:?}")
        };
        let row = state.row(Entity::Order, external_id.as_str()).unwrap();
        assert_eq!((row["Status"].as_str(), row["TotalAmount"].clone()), (Some("Activated"), json!(19)));
        ids.push(external_id.to_string());
    }
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 2, "nothing of the refused order is left");
    // Changed lines of an activated order: through Draft and back, in one request.
    let mut changed = orders[0].clone();
    changed.external_id = Some(ExternalId::new(ids[0].clone()));
    if let OutgoingOp::Upsert { data: EntityData::Order(order) } = &mut changed.op {
        order.lines.as_mut().unwrap()[0].quantity = 4.into();
    }
    let report = connector.push(Entity::Order, std::slice::from_ref(&changed)).await.unwrap();
    assert!(matches!(report.results[0].outcome, PushOutcome::Upserted { created: false, .. }), "{report:?}");
    assert_eq!(state.row(Entity::Order, &ids[0]).unwrap()["TotalAmount"], json!(38));
    // Every state a reader could have seen: activated, with its products, each time.
    let history = state.order_history();
    let seen: Vec<&Option<String>> =
        history.iter().filter(|(id, _)| ids.contains(id)).map(|(_, status)| status).collect();
    assert_eq!(seen.len(), 3, "{history:?}");
    assert!(seen.iter().all(|status| status.as_deref() == Some("Activated")), "{history:?}");

    // A product the org refuses after the order's insert succeeded (its price-book entry was
    // deleted after crmsync read the price book): the whole order is rolled back, no Draft left.
    let client = reqwest::Client::new();
    let base = running.base_url();
    let bearer = raw_token(&client, &base).await;
    let entry = price_book_entry(&client, &base, &bearer, "W-100").await;
    let deleted: serde_json::Value = client
        .delete(format!("{base}/services/data/v62.0/composite/sobjects"))
        .query(&[("ids", entry.as_str()), ("allOrNone", "false")])
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deleted[0]["success"], true, "{deleted}");
    let late = testkit::new_orders(&RecordRef::canonical(account.canonical_id), 1, "SO-LATE").remove(0);
    let history_before = state.order_history().len();
    let report = connector.push(Entity::Order, std::slice::from_ref(&late)).await.unwrap();
    match &report.results[0].outcome {
        PushOutcome::Rejected { code, message } => {
            assert_eq!(code, "INVALID_CROSS_REFERENCE_KEY");
            assert!(message.contains("adding its products failed"), "{message}");
        }
        other => panic!("expected the product to be refused, got {other:?}"),
    }
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 2, "no Draft order left behind");
    assert_eq!(state.order_history().len(), history_before, "nothing of it was ever committed");
    let last = state.composites().last().unwrap().clone();
    assert_eq!(last.iter().map(|(name, _, _)| name.as_str()).collect::<Vec<_>>(), ["o0", "o0_item0", "o0_status"]);
}

/// The simulator's Composite resource as documented: subrequests refer to earlier results with
/// `@{ref.id}`; with `allOrNone` a failing subrequest keeps its error, every other one answers 400
/// `PROCESSING_HALTED`, the top-level status is 200 and nothing is committed.
#[tokio::test]
async fn a_composite_request_with_all_or_none_commits_everything_or_nothing() {
    let PushedAccount { running, connector: _, state, account: _ } =
        with_pushed_account("Raw Composite Customer").await;
    let account_id = state.live_ids(Entity::Account).remove(0);
    let client = reqwest::Client::new();
    let base = running.base_url();
    let bearer = raw_token(&client, &base).await;
    let request = |item_entry: &str| {
        json!({"allOrNone": true, "collateSubrequests": false, "compositeRequest": [
            {"method": "POST", "url": "/services/data/v62.0/sobjects/Order", "referenceId": "newOrder",
             "body": {"AccountId": account_id, "EffectiveDate": "2026-11-02", "Status": "Draft", "Pricebook2Id": "01s000000000001AAA"}},
            {"method": "POST", "url": "/services/data/v62.0/sobjects/OrderItem", "referenceId": "newItem",
             "body": {"OrderId": "@{newOrder.id}", "PricebookEntryId": item_entry, "Quantity": 2, "UnitPrice": 9.5}},
            {"method": "PATCH", "url": "/services/data/v62.0/sobjects/Order/@{newOrder.id}", "referenceId": "activate",
             "body": {"Status": "Activated"}}
        ]})
    };
    let send = |body: serde_json::Value| {
        let (client, base, bearer) = (client.clone(), base.clone(), bearer.clone());
        async move {
            let response = client
                .post(format!("{base}/services/data/v62.0/composite"))
                .bearer_auth(&bearer)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let failed = send(request("01u000000000000AAA")).await;
    let results = failed["compositeResponse"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{failed}");
    assert_eq!(
        (results[0]["httpStatusCode"].as_u64(), results[0]["body"][0]["errorCode"].as_str()),
        (Some(400), Some("PROCESSING_HALTED")),
        "{failed}"
    );
    assert_eq!(
        (results[1]["httpStatusCode"].as_u64(), results[1]["body"][0]["errorCode"].as_str()),
        (Some(400), Some("INVALID_CROSS_REFERENCE_KEY")),
        "{failed}"
    );
    assert_eq!(results[2]["body"][0]["errorCode"], "PROCESSING_HALTED", "{failed}");
    assert_eq!(results[1]["referenceId"], "newItem");
    assert_eq!(SimControl::count(state.as_ref(), Entity::Order), 0, "the Draft order was rolled back");
    assert!(state.order_history().is_empty());
    // The same with a real entry: one call, the order inserted, given its product and activated.
    let done = send(request(&price_book_entry(&client, &base, &bearer, "W-100").await)).await;
    let results = done["compositeResponse"].as_array().unwrap();
    let statuses: Vec<u64> = results.iter().map(|result| result["httpStatusCode"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 201, 204], "{done}");
    let id = results[0]["body"]["id"].as_str().unwrap();
    assert_eq!(results[0]["httpHeaders"]["Location"], format!("/services/data/v62.0/sobjects/Order/{id}"));
    let row = state.row(Entity::Order, id).unwrap();
    assert_eq!((row["Status"].clone(), row["TotalAmount"].clone()), (json!("Activated"), json!(19)));
    assert_eq!(state.order_history(), [(id.to_owned(), Some("Activated".to_owned()))], "one state committed");
}

/// A bearer token for raw calls to the simulator.
/// The id of the price-book entry of the product with `code`, read with a raw SOQL query.
async fn price_book_entry(client: &reqwest::Client, base: &str, bearer: &str, code: &str) -> String {
    let entries: serde_json::Value = client
        .get(format!("{base}/services/data/v62.0/query/"))
        .query(&[("q", format!("SELECT Id FROM PricebookEntry WHERE ProductCode = '{code}'"))])
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    entries["records"][0]["Id"].as_str().unwrap().to_owned()
}

async fn raw_token(client: &reqwest::Client, base: &str) -> String {
    let token: serde_json::Value = client
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
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
    token["access_token"].as_str().unwrap().to_owned()
}

/// Issue 13 §2, found with Airbyte's Salesforce source: it looks a Bulk API result's encoding up
/// as `content-type` in a plain dict of the response headers, and with the lower-case names hyper
/// writes by default it read no Bulk API object. The simulator writes header names as Salesforce
/// does (`Content-Type`, `Sforce-Locator`): checked on the raw bytes of a response.
#[tokio::test]
async fn the_simulator_writes_header_names_title_cased_as_salesforce_does() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let running = simulator(SalesforceSimOptions::with_world(world(only(1, 0, 0)))).await;
    let address = running.base_url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!("GET /services/data HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let head = answer.split("\r\n\r\n").next().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("\r\nContent-Type: application/json"), "{head}");
    assert!(!head.contains("\r\ncontent-type:"), "{head}");
}

/// Bulk API 2.0 "Delete a Query Job": a finished job is deleted (204, then 404), an unfinished one
/// is refused with 400 `API_ERROR`. Airbyte's Salesforce source deletes each job it has read.
#[tokio::test]
async fn a_finished_bulk_query_job_can_be_deleted_and_an_unfinished_one_cannot() {
    let running = simulator(SalesforceSimOptions::with_world(world(only(5, 0, 0)))).await;
    let client = reqwest::Client::new();
    let base = running.base_url();
    let bearer = raw_token(&client, &base).await;
    let jobs = format!("{base}/services/data/v62.0/jobs/query");
    let create = || async {
        let job: serde_json::Value = client
            .post(&jobs)
            .bearer_auth(&bearer)
            .json(&json!({"operation": "query", "query": "SELECT Id FROM Account"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        job["id"].as_str().unwrap().to_owned()
    };
    let unfinished = create().await;
    let refused = client.delete(format!("{jobs}/{unfinished}")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "API_ERROR", "{body}");
    let info: serde_json::Value =
        client.get(format!("{jobs}/{unfinished}")).bearer_auth(&bearer).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["state"], "JobComplete", "{info}");
    let deleted = client.delete(format!("{jobs}/{unfinished}/")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(deleted.bytes().await.unwrap().is_empty());
    let gone = client.get(format!("{jobs}/{unfinished}")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}
