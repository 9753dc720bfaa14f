//! Records a CRM deleted where no delete feed shows it (issue 17): a Dataverse row deleted before
//! its delta token expired, found by the full re-read the expiry starts; and a row deleted where
//! pulls read by modification time, found by the drift sweep (`sync --sweep`), through the real
//! binary against the simulators.

use std::collections::BTreeSet;

use crmsync_connectors::canonical::Entity;
use crmsync_connectors::dynamics365::sim as d365;
use crmsync_connectors::sim::{World, WorldSize};
use crmsync_connectors::testkit::SimControl;

use super::Vendors;
use crate::support::{Env, export, ok};

/// Dataverse accounts go to Salesforce, deletes included.
const ROUTES: &str = r#"
[[routes]]
entity = "account"
from = ["dynamics365"]
to = ["salesforce"]
on_delete = "delete"
"#;

/// The canonical ids of the records of `entity` deleted in the store, and of the live ones.
async fn by_state(env: &Env, entity: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut deleted = BTreeSet::new();
    let mut live = BTreeSet::new();
    for record in export(env, entity, true).await {
        let id = record["id"].as_str().unwrap().to_owned();
        if record["deleted_at"].is_null() {
            live.insert(id)
        } else {
            deleted.insert(id)
        };
    }
    (deleted, live)
}

/// The canonical ids of the records of `entity` linked to `connection` by one of `ids`, and the
/// ids of their copies in `other`.
async fn linked(
    env: &Env,
    entity: &str,
    connection: &str,
    ids: &[String],
    other: &str,
) -> (BTreeSet<String>, Vec<String>) {
    let mut records = BTreeSet::new();
    let mut copies = Vec::new();
    for record in export(env, entity, true).await {
        let links = record["links"].as_array().unwrap();
        let link_of = |name: &str| {
            links.iter().find(|link| link["connection"] == name).and_then(|link| link["external_id"].as_str())
        };
        if link_of(connection).is_some_and(|id| ids.iter().any(|gone| gone == id)) {
            records.insert(record["id"].as_str().unwrap().to_owned());
            copies.extend(link_of(other).map(str::to_owned));
        }
    }
    (records, copies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataverse_row_deleted_before_its_delta_token_expired_is_tombstoned_by_the_full_re_read() {
    let world = World::generate(29, WorldSize::scaled(600), "2026-11-01T00:00:00Z".parse().unwrap(), true);
    let vendors = Vendors::start(world).await;
    let env = Env::with_connections(&vendors.connections(""), ROUTES);
    // The first pass pushes Dataverse accounts Salesforce lacks; the second reads them back.
    ok(env.run(&["sync"]).await);
    ok(env.run(&["sync"]).await);
    let mut before = Vec::new();
    for entity in ["account", "opportunity", "order"] {
        before.push(by_state(&env, entity).await);
    }

    // Deleted in Dataverse, then the delta tokens expire: the deletes are in no feed.
    let dynamics = vendors.dynamics.state();
    let gone = [
        ("account", SimControl::delete(dynamics.as_ref(), Entity::Account, 3)),
        ("opportunity", SimControl::delete(dynamics.as_ref(), Entity::Opportunity, 2)),
        ("order", SimControl::delete(dynamics.as_ref(), Entity::Order, 2)),
    ];
    dynamics.expire_delta_tokens();
    let salesforce_accounts_before = vendors.salesforce.state().live_ids(Entity::Account);
    let mut copies_to_delete = Vec::new();
    let mut expected = Vec::new();
    for (entity, ids) in &gone {
        let ids: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
        let (records, copies) = linked(&env, entity, "dynamics365", &ids, "salesforce").await;
        assert_eq!(records.len(), ids.len(), "{entity}: every deleted row was synced");
        if *entity == "account" {
            copies_to_delete = copies;
        }
        expected.push(records);
    }
    assert!(!copies_to_delete.is_empty(), "the deleted accounts have Salesforce copies the delete goes to");

    // One pass: the full re-read after the expiry tombstones exactly the deleted rows' records.
    ok(env.run(&["sync"]).await);
    for (((entity, _), (deleted_before, live_before)), expected) in gone.iter().zip(&before).zip(&expected) {
        let (deleted, live) = by_state(&env, entity).await;
        let newly: BTreeSet<String> = deleted.difference(deleted_before).cloned().collect();
        assert_eq!(&newly, expected, "{entity}: the records deleted in Dataverse, and no other, are tombstoned");
        let expected_live: BTreeSet<String> = live_before.difference(expected).cloned().collect();
        assert_eq!(live, expected_live, "{entity}: every other record is as it was");
    }
    // The account deletes went to Salesforce (the route's `on_delete = "delete"`), and only they.
    let salesforce_accounts: BTreeSet<String> =
        vendors.salesforce.state().live_ids(Entity::Account).into_iter().collect();
    let expected_salesforce: BTreeSet<String> =
        salesforce_accounts_before.into_iter().filter(|id| !copies_to_delete.contains(id)).collect();
    assert_eq!(salesforce_accounts, expected_salesforce, "the deletes were pushed to Salesforce, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sweep_runs_the_drift_sweep_now_and_tombstones_what_no_pull_can_see_gone() {
    let world = World::generate(
        31,
        WorldSize { accounts: 250, leads: 0, opportunities: 0, orders: 0 },
        "2026-11-01T00:00:00Z".parse().unwrap(),
        false,
    );
    let dynamics = d365::start(d365::Dynamics365SimOptions::with_world(world)).await.unwrap();
    // With a `start` instant Dataverse is read by `modifiedon`: deletions are in no pull.
    let connection = d365::connection_toml("dynamics365", &dynamics.base_url())
        + "max_page_size = 100\nstart = \"2000-01-01T00:00:00Z\"\n";
    let env = Env::with_connections(&[connection], "");
    ok(env.run(&["sync"]).await);
    let (_, live_before) = by_state(&env, "account").await;
    assert_eq!(live_before.len(), 250);
    let gone: Vec<String> = SimControl::delete(dynamics.state().as_ref(), Entity::Account, 4)
        .iter()
        .map(|id| id.as_str().to_owned())
        .collect();
    let (records, _) = linked(&env, "account", "dynamics365", &gone, "none").await;

    // A pass alone cannot see them gone.
    ok(env.run(&["sync"]).await);
    assert_eq!(by_state(&env, "account").await.1, live_before, "a pull by modification time sees no delete");

    // `sync --sweep` sweeps now, without the daemon's 5-minute minimum interval.
    let output = ok(env.run(&["sync", "--sweep"]).await);
    let line = output.lines().find(|line| line.starts_with("drift sweep dynamics365 account")).unwrap_or_else(|| {
        panic!("a line per swept connection × entity:\n{output}");
    });
    assert_eq!(
        line,
        "drift sweep dynamics365 account: 246 ids in the CRM, 250 linked here, 4 deleted, 0 fetched, 0 dead-lettered"
    );
    let (deleted, live) = by_state(&env, "account").await;
    assert_eq!(deleted, records, "the deleted rows' records are tombstoned");
    assert_eq!(live, live_before.difference(&records).cloned().collect::<BTreeSet<String>>());
    // Swept again: nothing left to repair.
    let again = ok(env.run(&["sync", "--sweep"]).await);
    assert!(again.contains("246 ids in the CRM, 246 linked here, 0 deleted, 0 fetched"), "{again}");
}
