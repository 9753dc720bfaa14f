//! End to end: the real `crmsync` binary against simulated Salesforce orgs over loopback, with a real
//! sled store on disk. Waits are on simulator progress or process exit, never on the clock.

use std::collections::{BTreeMap, BTreeSet};

use crmsync_connectors::canonical::{Entity, VendorKind};
use crmsync_connectors::sim::{FaultSettings, Simulated, World, WorldSize};
use crmsync_connectors::testkit::SimControl;
use serde_json::Value;

use crate::support::{Env, accounts, export, ok, salesforce, signal};

const ROUTE_EVERYTHING: &str = "[[routes]]\nentity = \"*\"\nfrom = [\"*\"]\nto = [\"*\"]\n";

fn link_of<'a>(record: &'a Value, connection: &str) -> Option<&'a Value> {
    record["links"].as_array()?.iter().find(|link| link["connection"] == connection)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_joins_two_orgs_pushes_both_ways_reaches_a_fixed_point_and_carries_edits() {
    let world = World::generate(
        5,
        WorldSize { accounts: 30, leads: 20, opportunities: 20, orders: 40 },
        "2026-11-01T00:00:00Z".parse().unwrap(),
        true,
    );
    let a = salesforce(world.clone(), FaultSettings::default(), Some(World::bit(VendorKind::Salesforce))).await;
    let b = salesforce(world, FaultSettings::default(), Some(World::bit(VendorKind::Zoho))).await;
    let env = Env::new(&[("sf_a", &a.base_url()), ("sf_b", &b.base_url())], ROUTE_EVERYTHING);

    let first = ok(env.run(&["sync"]).await);
    assert!(first.contains("sf_a") && first.contains("sf_b"), "{first}");
    assert_eq!(ok(env.run(&["dlq", "list"]).await), "the dead-letter queue is empty\n");
    let (state_a, state_b) = (a.state(), b.state());
    for entity in [Entity::Account, Entity::Opportunity, Entity::Order] {
        assert_eq!(
            SimControl::count(state_a.as_ref(), entity),
            SimControl::count(state_b.as_ref(), entity),
            "{entity} in both orgs"
        );
    }
    let accounts = export(&env, "account", false).await;
    assert_eq!(
        accounts.len(),
        SimControl::count(state_a.as_ref(), Entity::Account),
        "one canonical account per customer"
    );
    assert!(accounts.iter().all(|record| link_of(record, "sf_a").is_some() && link_of(record, "sf_b").is_some()));

    // A second pass finds the orgs in agreement: nothing is written anywhere.
    let writes = (Simulated::stats(state_a.as_ref()).write_calls, Simulated::stats(state_b.as_ref()).write_calls);
    ok(env.run(&["sync"]).await);
    assert_eq!(
        writes,
        (Simulated::stats(state_a.as_ref()).write_calls, Simulated::stats(state_b.as_ref()).write_calls),
        "no ping-pong"
    );

    // An edit in one org reaches the other on the next pass.
    let record = &accounts[0];
    let in_a = link_of(record, "sf_a").unwrap()["external_id"].as_str().unwrap().to_owned();
    let in_b = link_of(record, "sf_b").unwrap()["external_id"].as_str().unwrap().to_owned();
    assert!(state_a.edit(Entity::Account, &in_a, &[("Industry", Value::String("Aerospace".into()))]));
    ok(env.run(&["sync", "--entity", "account"]).await);
    assert_eq!(state_b.row(Entity::Account, &in_b).unwrap()["Industry"], "Aerospace");

    let status: Value = serde_json::from_str(&ok(env.run(&["status", "--json"]).await)).unwrap();
    let connections = status["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 2);
    assert!(connections.iter().all(|connection| connection["outbox_depth"] == 0));
    let csv = ok(env.run(&["export", "--entity", "order", "--format", "csv"]).await);
    assert!(csv.lines().next().unwrap().starts_with("id,number,account"), "{csv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_then_resume_loses_nothing_duplicates_nothing_and_misses_no_delete() {
    let a = salesforce(accounts(12_000), FaultSettings { latency_ms: 2, ..FaultSettings::default() }, None).await;
    let env = Env::new(&[("sf", &a.base_url())], "");
    // Small pages: many commits to land a kill between.
    let config = std::fs::read_to_string(&env.config).unwrap().replace("retry = {", "batch_size = 200\nretry = {");
    std::fs::write(&env.config, config).unwrap();
    let state = a.state();
    let mut progress = state.progress();
    let mut deleted = BTreeSet::new();
    for round in 0..10u64 {
        if round == 4 {
            deleted
                .extend(SimControl::delete(state.as_ref(), Entity::Account, 25).into_iter().map(|id| id.to_string()));
        }
        let mut child = env.command(&["sync"]).kill_on_drop(true).spawn().unwrap();
        let start = *progress.borrow();
        let target = start + 2 + (round * 7919 + 13) % 40;
        tokio::select! {
            reached = progress.wait_for(|calls| *calls >= target) => { reached.unwrap(); }
            _ = child.wait() => {}
        }
        // SIGKILL (the child may have finished on its own: then there is nothing to kill).
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    ok(env.run(&["sync"]).await);
    let exported = export(&env, "account", true).await;
    let live: BTreeSet<String> = state.live_ids(Entity::Account).into_iter().collect();
    let mut by_link: BTreeMap<String, usize> = BTreeMap::new();
    for record in &exported {
        let links = record["links"].as_array().unwrap();
        assert_eq!(links.len(), 1, "one vendor copy per record");
        *by_link.entry(links[0]["external_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert!(by_link.values().all(|count| *count == 1), "a vendor record became two canonical records");
    let stored_live: BTreeSet<String> = exported
        .iter()
        .filter(|record| record["deleted_at"].is_null())
        .map(|record| link_of(record, "sf").unwrap()["external_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored_live, live, "the store equals the org");
    let tombstones: BTreeSet<String> = exported
        .iter()
        .filter(|record| !record["deleted_at"].is_null())
        .map(|record| link_of(record, "sf").unwrap()["external_id"].as_str().unwrap().to_owned())
        .collect();
    // Records deleted after they were stored are tombstones; ones deleted before were never stored.
    assert!(deleted.iter().all(|id| !stored_live.contains(id)), "a delete was missed");
    assert!(tombstones.is_subset(&deleted), "only deleted records are tombstones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_large_sync_exits_zero_and_the_next_sync_resumes() {
    let a = salesforce(accounts(10_000), FaultSettings { latency_ms: 3, ..FaultSettings::default() }, None).await;
    let env = Env::new(&[("sf", &a.base_url())], "");
    let config = std::fs::read_to_string(&env.config).unwrap().replace("retry = {", "batch_size = 200\nretry = {");
    std::fs::write(&env.config, config).unwrap();
    let state = a.state();
    let mut progress = state.progress();
    let mut daemon = env.command(&["run"]).kill_on_drop(true).spawn().unwrap();
    progress.wait_for(|calls| *calls >= 8).await.unwrap();
    signal(&daemon, "TERM").await;
    let status = daemon.wait().await.unwrap();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
    let before = export(&env, "account", false).await.len();
    assert!(before > 0, "pages committed before the signal are kept");
    ok(env.run(&["sync"]).await);
    let after = export(&env, "account", false).await;
    assert_eq!(after.len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_rate_limits_and_server_errors_lose_nothing_and_the_budget_holds() {
    let faults = FaultSettings {
        token_expiry_after_calls: 4,
        rate_limit_after_calls: 6,
        rate_limit_for_calls: 2,
        server_error_every: 5,
        ..FaultSettings::default()
    };
    let a = salesforce(accounts(4000), faults, None).await;
    let env = Env::new(&[("sf", &a.base_url())], "");
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("retry = {", "batch_size = 500\nrate_limit = { per_second = 1000, daily_budget = 200 }\nretry = {");
    std::fs::write(&env.config, config).unwrap();
    ok(env.run(&["sync"]).await);
    assert_eq!(export(&env, "account", false).await.len(), 4000);
    let stats = Simulated::stats(a.state().as_ref());
    let calls = stats.token_calls + stats.read_calls + stats.write_calls + stats.faulted_calls;
    assert!(calls <= 200, "{calls} calls exceed the daily budget of 200");

    // A budget too small for the work: the sync fails clearly and never goes over.
    let b = salesforce(accounts(4000), FaultSettings::default(), None).await;
    let tight = Env::new(&[("sf", &b.base_url())], "");
    let config = std::fs::read_to_string(&tight.config)
        .unwrap()
        .replace("retry = {", "batch_size = 200\nrate_limit = { per_second = 1000, daily_budget = 5 }\nretry = {");
    std::fs::write(&tight.config, config).unwrap();
    let output = tight.run(&["sync"]).await;
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("daily API budget exhausted (5 of 5 calls used)"), "{stdout}");
    let stats = Simulated::stats(b.state().as_ref());
    assert!(stats.token_calls + stats.read_calls + stats.write_calls <= 5);
}

/// Issue 6 and 7 "done when": all three vendors at once, over loopback, with the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_vendors_reach_a_fixed_point_a_zoho_order_lands_once_everywhere_and_a_double_edit_is_one_conflict() {
    use crmsync_connectors::dynamics365::sim::{self as d365, Dynamics365SimOptions};
    use crmsync_connectors::salesforce::sim as sf;
    use crmsync_connectors::zoho::sim::{self as zoho, ZohoSimOptions};

    let world = World::generate(
        8,
        WorldSize { accounts: 20, leads: 15, opportunities: 15, orders: 25 },
        "2026-11-01T00:00:00Z".parse().unwrap(),
        true,
    );
    let salesforce = salesforce(world.clone(), FaultSettings::default(), None).await;
    let zoho = zoho::start(ZohoSimOptions::with_world(world.clone())).await.unwrap();
    let dynamics = d365::start(Dynamics365SimOptions::with_world(world)).await.unwrap();
    let env = Env::with_connections(
        &[
            sf::connection_toml("salesforce", &salesforce.base_url()),
            zoho::connection_toml("zoho", &zoho.base_url()),
            d365::connection_toml("dynamics365", &dynamics.base_url()),
        ],
        &format!(
            "{ROUTE_EVERYTHING}\n[reconcile]\nsource_priority = [\"dynamics365\", \"salesforce\", \"zoho\"]\nconflict = \"priority\"\n"
        ),
    );
    let (sf_state, zoho_state, d365_state) = (salesforce.state(), zoho.state(), dynamics.state());
    let writes = || {
        (
            Simulated::stats(sf_state.as_ref()).write_calls,
            Simulated::stats(zoho_state.as_ref()).write_calls,
            Simulated::stats(d365_state.as_ref()).write_calls,
        )
    };

    let first = ok(env.run(&["sync"]).await);
    assert!(first.contains("dynamics365") && first.contains("zoho") && first.contains("salesforce"), "{first}");
    assert_eq!(ok(env.run(&["dlq", "list"]).await), "the dead-letter queue is empty\n");
    let accounts = export(&env, "account", false).await;
    assert!(
        accounts.iter().all(|record| ["salesforce", "zoho", "dynamics365"]
            .iter()
            .all(|connection| link_of(record, connection).is_some())),
        "every customer is one canonical account with a link in each CRM"
    );
    for entity in [Entity::Account, Entity::Opportunity, Entity::Order] {
        let counts = (
            SimControl::count(sf_state.as_ref(), entity),
            SimControl::count(zoho_state.as_ref(), entity),
            SimControl::count(d365_state.as_ref(), entity),
        );
        assert!(counts.0 == counts.1 && counts.1 == counts.2, "{entity}: {counts:?}");
    }
    let before = writes();
    ok(env.run(&["sync"]).await);
    assert_eq!(writes(), before, "the second pass writes nothing anywhere: no ping-pong");

    // One set of numbers: an order every CRM holds counts once in the unified scope.
    let unified: Value =
        serde_json::from_str(&ok(env.run(&["metrics", "--json", "--since", "2000-01-01T00:00:00Z"]).await)).unwrap();
    let orders = export(&env, "order", false).await;
    // Orders counts every order in the window but cancelled ones (drafts included).
    let not_cancelled = orders.iter().filter(|record| record["data"]["fields"]["status"] != "cancelled").count();
    assert_eq!(unified["totals"]["orders"], not_cancelled, "{unified:#}");
    assert_eq!(unified["funnel"].as_array().unwrap().len(), 7);
    for scope in ["salesforce", "zoho", "dynamics365"] {
        let per_connection: Value = serde_json::from_str(&ok(env
            .run(&["metrics", "--json", "--scope", scope, "--since", "2000-01-01T00:00:00Z"])
            .await))
        .unwrap();
        assert_eq!(per_connection["scope"], scope);
        assert_eq!(per_connection["totals"]["orders"], unified["totals"]["orders"], "every CRM holds every order");
    }

    // An order created in Zoho appears in Salesforce and Dynamics 365 exactly once each.
    let record = &accounts[0];
    let zoho_account = link_of(record, "zoho").unwrap()["external_id"].as_str().unwrap().to_owned();
    let widget = zoho_state.product_id("Widget").unwrap();
    zoho_state.create(
        Entity::Order,
        serde_json::json!({
            "Subject": "SO-ZOHO-NEW", "Account_Name": {"id": zoho_account}, "Status": "Approved", "Currency": "EUR",
            "Due_Date": "2026-11-20", "Lead_Source": "Web", "Grand_Total": 38,
            "Ordered_Items": [{"Product_Name": {"name": "Widget", "id": widget}, "Product_Code": "W-100", "Quantity": 2, "List_Price": 19, "Total": 38}],
        }),
    );
    ok(env.run(&["sync"]).await);
    ok(env.run(&["sync"]).await);
    let count_number = |rows: Vec<serde_json::Map<String, Value>>, field: &str| {
        rows.iter().filter(|row| row.get(field).and_then(Value::as_str) == Some("SO-ZOHO-NEW")).count()
    };
    let sf_orders: Vec<_> =
        sf_state.live_ids(Entity::Order).iter().filter_map(|id| sf_state.row(Entity::Order, id)).collect();
    let d365_orders: Vec<_> =
        d365_state.live_ids(Entity::Order).iter().filter_map(|id| d365_state.row(Entity::Order, id)).collect();
    assert_eq!(count_number(sf_orders, "Crmsync_Order_Number__c"), 1, "once in Salesforce");
    assert_eq!(count_number(d365_orders, "name"), 1, "once in Dynamics 365");
    let new_order = d365_state
        .live_ids(Entity::Order)
        .into_iter()
        .find(|id| d365_state.row(Entity::Order, id).is_some_and(|row| row["name"] == "SO-ZOHO-NEW"))
        .unwrap();
    assert_eq!(d365_state.order_lines(&new_order).len(), 1);

    // The same field edited in two CRMs between syncs: one conflict, the configured winner everywhere.
    let in_sf = link_of(record, "salesforce").unwrap()["external_id"].as_str().unwrap().to_owned();
    let in_d365 = link_of(record, "dynamics365").unwrap()["external_id"].as_str().unwrap().to_owned();
    let in_zoho = link_of(record, "zoho").unwrap()["external_id"].as_str().unwrap().to_owned();
    assert!(sf_state.edit(Entity::Account, &in_sf, &[("Name", Value::String("Renamed in Salesforce".into()))]));
    // Dataverse keeps seconds only: its edit is said to happen two seconds later, so it is after
    // everything Salesforce reported (no waiting on the clock).
    let later = crmsync_connectors::canonical::Timestamp::now().saturating_add(std::time::Duration::from_secs(2), true);
    assert!(d365_state.edit_at(
        Entity::Account,
        &in_d365,
        &[("name", Value::String("Renamed in Dynamics".into()))],
        later
    ));
    ok(env.run(&["sync", "--entity", "account"]).await);
    ok(env.run(&["sync", "--entity", "account"]).await);
    let conflicts: Value = serde_json::from_str(&ok(env.run(&["conflicts", "list", "--all", "--json"]).await)).unwrap();
    let on_name: Vec<&Value> =
        conflicts.as_array().unwrap().iter().filter(|conflict| conflict["field"] == "name").collect();
    if on_name.len() != 1 {
        let now: Vec<Value> = export(&env, "account", false).await;
        let record = now.iter().find(|candidate| candidate["id"] == record["id"]).cloned();
        panic!(
            "{} conflicts on name: {conflicts:#}\nrecord before: {record_before:#}\nrecord now: {record:#?}",
            on_name.len(),
            record_before = accounts[0]
        );
    }
    assert_eq!(sf_state.row(Entity::Account, &in_sf).unwrap()["Name"], "Renamed in Dynamics");
    assert_eq!(zoho_state.row(Entity::Account, &in_zoho).unwrap()["Account_Name"], "Renamed in Dynamics");
    assert_eq!(d365_state.row(Entity::Account, &in_d365).unwrap()["name"], "Renamed in Dynamics");
}

/// Issue 7: a wrong merge undone (`identity split`) and a missed one joined (`identity merge`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_split_and_merge_undo_and_redo_a_match_without_duplicating_anything() {
    let world = World::generate(
        6,
        WorldSize { accounts: 12, leads: 0, opportunities: 0, orders: 0 },
        "2026-11-01T00:00:00Z".parse().unwrap(),
        true,
    );
    let a = salesforce(world.clone(), FaultSettings::default(), Some(World::bit(VendorKind::Salesforce))).await;
    let b = salesforce(world, FaultSettings::default(), Some(World::bit(VendorKind::Zoho))).await;
    let env = Env::new(&[("sf_a", &a.base_url()), ("sf_b", &b.base_url())], ROUTE_EVERYTHING);
    ok(env.run(&["sync"]).await);
    let accounts = export(&env, "account", false).await;
    let joined = accounts.iter().find(|record| record["links"].as_array().unwrap().len() == 2).unwrap();
    let id = joined["id"].as_str().unwrap().to_owned();

    let said = ok(env.run(&["identity", "split", &id, "--connection", "sf_b"]).await);
    let new_id = said.trim_end().rsplit(' ').next().unwrap().to_owned();
    let after_split = export(&env, "account", false).await;
    let find = |records: &[Value], wanted: &str| records.iter().find(|record| record["id"] == wanted).cloned();
    let kept = find(&after_split, &id).unwrap();
    let detached = find(&after_split, &new_id).unwrap();
    assert!(link_of(&kept, "sf_b").is_none() && link_of(&kept, "sf_a").is_some());
    assert_eq!(link_of(&detached, "sf_b").unwrap()["matched_by"]["by"], "manual");
    assert_eq!(after_split.len(), accounts.len() + 1);

    // A nonsensical merge is refused with a clear reason.
    let refused = env.run(&["identity", "merge", &new_id, &new_id]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot be merged into itself"));

    ok(env.run(&["identity", "merge", &id, &new_id]).await);
    let after_merge = export(&env, "account", false).await;
    assert_eq!(after_merge.len(), accounts.len(), "the detached record is folded back");
    let merged = find(&after_merge, &id).unwrap();
    assert!(link_of(&merged, "sf_a").is_some() && link_of(&merged, "sf_b").is_some());
    let counts = (
        SimControl::count(a.state().as_ref(), Entity::Account),
        SimControl::count(b.state().as_ref(), Entity::Account),
    );
    ok(env.run(&["sync"]).await);
    ok(env.run(&["sync"]).await);
    assert_eq!(
        counts,
        (
            SimControl::count(a.state().as_ref(), Entity::Account),
            SimControl::count(b.state().as_ref(), Entity::Account)
        ),
        "nothing was created in either org"
    );
    assert_eq!(export(&env, "account", false).await.len(), accounts.len());
}
