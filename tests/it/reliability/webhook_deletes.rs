//! Webhook deletes of records crmsync never stored (issue 17 §7): a Zoho notification and a Dataverse
//! `Delete` context naming an unknown id are ignored with a log line, no empty deleted record is
//! stored, and a delete of a stored record in the same delivery still tombstones it. (Salesforce
//! outbound messages carry no deletes, crm-apis.md §1.10: its deletes come from pulls, through the
//! same ingest path.)

use std::process::Stdio;

use crmsync_connectors::canonical::{Entity, ExternalId, Timestamp};
use crmsync_connectors::sim::{World, WorldSize};
use crmsync_connectors::testkit::SimControl;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::Vendors;
use crate::support::{Env, bound_ports, export, ok, signal};

/// The stored account linked to `connection`/`id`, if any (tombstones included).
fn linked<'a>(accounts: &'a [Value], connection: &str, id: &str) -> Option<&'a Value> {
    accounts.iter().find(|record| {
        record["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|link| link["connection"] == connection && link["external_id"] == id)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deletes_of_ids_never_stored_are_ignored_with_a_log_line_in_every_vendor() {
    let world = World::generate(
        5,
        WorldSize { accounts: 40, leads: 0, opportunities: 0, orders: 0 },
        "2026-11-01T00:00:00Z".parse().unwrap(),
        true,
    );
    let vendors = Vendors::start(world).await;
    let env = Env::with_connections(&vendors.connections(""), "");
    ok(env.run(&["sync"]).await);
    let before = export(&env, "account", true).await;
    // One account deleted in each CRM, which then notifies crmsync of it (with an id it never saw).
    let zoho_known = SimControl::delete(vendors.zoho.state().as_ref(), Entity::Account, 1).remove(0);
    let dataverse_known = SimControl::delete(vendors.dynamics.state().as_ref(), Entity::Account, 1).remove(0);
    assert!(linked(&before, "zoho", zoho_known.as_str()).is_some(), "the Zoho account was synced");
    assert!(linked(&before, "dynamics365", dataverse_known.as_str()).is_some(), "the Dataverse account was synced");
    let (zoho_unknown, dataverse_unknown) =
        (ExternalId::new("4150868999999999001"), ExternalId::new("00000000-dead-4000-8000-00000000beef"));

    let mut daemon =
        env.command(&["run"]).env("RUST_LOG", "info").stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut logs = BufReader::new(daemon.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let mut port = None;
    while let Some(line) = logs.next_line().await.unwrap() {
        log.push_str(&line);
        log.push('\n');
        port = bound_ports(&line).map(|(public, _)| public);
        if port.is_some() {
            break;
        }
    }
    let port = port.unwrap_or_else(|| panic!("the daemon did not start:\n{log}"));
    let collected = tokio::spawn(async move {
        while let Ok(Some(line)) = logs.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let http = reqwest::Client::new();
    let now = Timestamp::now().unix_millis();
    // crm-apis.md §2 (Zoho notifications): module, ids, operation, token, server_time.
    let zoho = http
        .post(format!("http://127.0.0.1:{port}/webhooks/zoho"))
        .json(&json!({
            "module": "Accounts",
            "ids": [zoho_unknown.as_str(), zoho_known.as_str()],
            "operation": "delete",
            "token": crmsync_connectors::zoho::sim::WEBHOOK_TOKEN,
            "server_time": now,
        }))
        .send()
        .await
        .unwrap();
    assert!(zoho.status().is_success(), "Zoho delivery: {}", zoho.status());
    // crm-apis.md §3.8 (Dataverse webhooks): a RemoteExecutionContext per deleted row.
    for id in [&dataverse_unknown, &dataverse_known] {
        let dataverse = http
            .post(format!("http://127.0.0.1:{port}/webhooks/dynamics365"))
            .header(
                crmsync_connectors::dynamics365::sim::WEBHOOK_HEADER,
                crmsync_connectors::dynamics365::sim::WEBHOOK_KEY,
            )
            .json(&json!({
                "MessageName": "Delete",
                "PrimaryEntityName": "account",
                "PrimaryEntityId": id.as_str(),
                "OperationCreatedOn": format!("/Date({now})/"),
            }))
            .send()
            .await
            .unwrap();
        assert!(dataverse.status().is_success(), "Dataverse delivery: {}", dataverse.status());
    }
    signal(&daemon, "TERM").await;
    assert!(daemon.wait().await.unwrap().success(), "SIGTERM must exit 0");
    let log = collected.await.unwrap();

    for (connection, unknown) in [("zoho", &zoho_unknown), ("dynamics365", &dataverse_unknown)] {
        let said = log.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()).any(|event| {
            event["message"] == "deletes of records crmsync never stored ignored"
                && event["connection"] == connection
                && event["first.external_id"] == unknown.as_str()
        });
        assert!(said, "{connection}: no log line for the ignored delete of {unknown}:\n{log}");
    }
    let after = export(&env, "account", true).await;
    assert_eq!(after.len(), before.len(), "no record was added for a delete");
    assert!(linked(&after, "zoho", zoho_unknown.as_str()).is_none(), "an empty deleted record was stored");
    assert!(linked(&after, "dynamics365", dataverse_unknown.as_str()).is_none(), "an empty deleted record was stored");
    for (connection, known) in [("zoho", &zoho_known), ("dynamics365", &dataverse_known)] {
        let record = linked(&after, connection, known.as_str()).unwrap();
        assert!(!record["deleted_at"].is_null(), "{connection}: the stored record's delete was applied: {record}");
    }
}
