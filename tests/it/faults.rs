//! Faults make a pass slower, never failed (issue 14), with the real binary: against the three
//! simulators, each fault switched on in all three at once, one `crmsync sync` exits 0 with exactly
//! the records of a fault-free sync into another store (records whose values no reader can take for
//! numbers are dead-lettered with their vendor id and the reason, nothing else is missing, and a later
//! decoded read of such a record removes its letter); an
//! outage longer than the retry budget ends the pass with a clear error, and the next pass resumes
//! from the committed cursors. A fetch by id (the drift sweep's) with one such record among its
//! batch applies the others and dead-letters that one.

use std::collections::{BTreeMap, BTreeSet};

use crmsync::app::App;
use crmsync::config::Config;
use crmsync::scheduler::sweep::{SweepReport, sweep};
use crmsync_connectors::canonical::{ConnectionId, Entity};
use crmsync_connectors::settings::MapSecrets;
use crmsync_connectors::sim::{FaultSettings, Simulated, World, WorldSize};
use serde_json::Value;

use crate::reliability::{Vendors, assert_same_sets, canonical_set};
use crate::support::{Env, ok};

fn world(size: WorldSize) -> World {
    World::generate(14, size, "2026-11-01T00:00:00Z".parse().unwrap(), true)
}

/// A world that syncs in a few pages per entity.
const SMALL: WorldSize = WorldSize { accounts: 150, leads: 80, opportunities: 80, orders: 60 };

/// Data reads served by each simulator so far.
fn reads(vendors: &Vendors) -> [u64; 3] {
    [
        Simulated::stats(vendors.salesforce.state().as_ref()).read_calls,
        Simulated::stats(vendors.zoho.state().as_ref()).read_calls,
        Simulated::stats(vendors.dynamics.state().as_ref()).read_calls,
    ]
}

/// Calls each simulator refused with an injected fault so far.
fn faulted(vendors: &Vendors) -> [u64; 3] {
    [
        Simulated::stats(vendors.salesforce.state().as_ref()).faulted_calls,
        Simulated::stats(vendors.zoho.state().as_ref()).faulted_calls,
        Simulated::stats(vendors.dynamics.state().as_ref()).faulted_calls,
    ]
}

/// Dead letters as `(connection, vendor id, reason)`.
async fn dead_letters(env: &Env) -> Vec<(String, String, String)> {
    let listed: serde_json::Value = serde_json::from_str(&ok(env.run(&["dlq", "list", "--json"]).await)).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|letter| {
            (
                letter["connection"].as_str().unwrap().to_owned(),
                letter["external_id"].as_str().unwrap_or_default().to_owned(),
                letter["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Vendor ids linked in the store, per connection.
async fn linked(env: &Env) -> BTreeMap<String, BTreeSet<String>> {
    let mut linked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entity in crate::reliability::ENTITIES {
        for record in crate::support::export(env, entity, true).await {
            for link in record["links"].as_array().unwrap() {
                linked
                    .entry(link["connection"].as_str().unwrap().to_owned())
                    .or_default()
                    .insert(link["external_id"].as_str().unwrap().to_owned());
            }
        }
    }
    linked
}

/// The `dead-lettered` column of `crmsync sync`'s summary table, per `(connection, entity)`.
fn dead_lettered_column(stdout: &str) -> BTreeMap<(String, String), u64> {
    let mut lines = stdout.lines().skip_while(|line| !line.starts_with("connection"));
    let header: Vec<&str> = lines.next().expect("a summary table").split_whitespace().collect();
    assert_eq!(header[6], "dead-lettered", "{header:?}");
    lines
        .take_while(|line| !line.trim().is_empty())
        .map(|row| {
            let columns: Vec<&str> = row.split_whitespace().collect();
            ((columns[0].to_owned(), columns[1].to_owned()), columns[6].parse().unwrap())
        })
        .collect()
}

fn said(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_5xx_truncated_pages_and_drifted_records_end_with_the_fault_free_records_and_exit_0() {
    let vendors = Vendors::start(world(SMALL)).await;
    let baseline = Env::with_connections(&vendors.connections(""), "");
    ok(baseline.run(&["sync"]).await);
    let expected = canonical_set(&baseline, None).await;
    assert!(expected.values().all(|records| !records.is_empty()), "every entity has records");
    let scenarios = [
        ("throttled at 2 requests/s", FaultSettings { throttle_per_second: 2, ..FaultSettings::default() }),
        ("30 % 5xx", FaultSettings { server_error_percent: 30, seed: 1, ..FaultSettings::default() }),
        ("30 % truncated pages", FaultSettings { truncate_percent: 30, seed: 2, ..FaultSettings::default() }),
        ("30 % drifted records", FaultSettings { drift_percent: 30, seed: 3, ..FaultSettings::default() }),
    ];
    for (name, settings) in scenarios {
        let env = Env::with_connections(&vendors.connections(""), "");
        let before = faulted(&vendors);
        vendors.faults(&settings);
        let output = env.run(&["sync"]).await;
        let hit = [
            (
                vendors.salesforce.state().faults().truncated_responses(),
                vendors.salesforce.state().faults().drifted_records(),
            ),
            (vendors.zoho.state().faults().truncated_responses(), vendors.zoho.state().faults().drifted_records()),
            (
                vendors.dynamics.state().faults().truncated_responses(),
                vendors.dynamics.state().faults().drifted_records(),
            ),
        ];
        let after = faulted(&vendors);
        vendors.faults(&FaultSettings::default());
        assert!(output.status.success(), "{name}: crmsync sync failed:\n{}", said(&output));
        for (vendor, ((truncated, drifted), (before, after))) in
            ["salesforce", "zoho", "dynamics365"].into_iter().zip(hit.into_iter().zip(before.into_iter().zip(after)))
        {
            let happened = match settings {
                FaultSettings { truncate_percent: 1.., .. } => truncated,
                FaultSettings { drift_percent: 1.., .. } => drifted,
                _ => after - before,
            };
            assert!(happened > 0, "{name}: {vendor} injected nothing");
        }
        assert_same_sets(name, &expected, &canonical_set(&env, None).await);
        assert_eq!(dead_letters(&env).await, Vec::new(), "{name}: nothing is dead-lettered");
    }
    assert_eq!(vendors.writes(), 0, "no route: nothing was pushed, every run read the same data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_no_reader_can_decode_are_dead_lettered_with_their_id_and_the_pull_goes_on() {
    let vendors = Vendors::start(world(SMALL)).await;
    let baseline = Env::with_connections(&vendors.connections(""), "");
    ok(baseline.run(&["sync"]).await);
    let expected = linked(&baseline).await;

    let env = Env::with_connections(&vendors.connections(""), "");
    vendors.faults(&FaultSettings { garble_percent: 30, seed: 5, ..FaultSettings::default() });
    let output = env.run(&["sync"]).await;
    let garbled: BTreeMap<&str, BTreeSet<String>> = [
        ("salesforce", vendors.salesforce.state().faults().garbled_records()),
        ("zoho", vendors.zoho.state().faults().garbled_records()),
        ("dynamics365", vendors.dynamics.state().faults().garbled_records()),
    ]
    .into_iter()
    .map(|(connection, ids)| (connection, ids.into_iter().collect()))
    .collect();
    vendors.faults(&FaultSettings::default());
    assert!(output.status.success(), "garbled records must not fail the pass:\n{}", said(&output));
    let table = dead_lettered_column(&String::from_utf8_lossy(&output.stdout));
    let said = said(&output);
    assert!(said.contains("dead-lettered"), "a WARN line names each set-aside record:\n{said}");

    let letters = dead_letters(&env).await;
    let mut set_aside: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (connection, id, reason) in &letters {
        assert!(garbled[connection.as_str()].contains(id), "{connection} {id} was dead-lettered but not garbled");
        assert!(reason.contains("undecodable") && reason.contains(id) && reason.contains("field"), "{reason}");
        assert!(set_aside.entry(connection.clone()).or_default().insert(id.clone()), "{connection} {id} twice");
    }
    // The summary's dead-lettered column counts them per connection × entity.
    let listed: serde_json::Value = serde_json::from_str(&ok(env.run(&["dlq", "list", "--json"]).await)).unwrap();
    let mut per_entity: BTreeMap<(String, String), u64> = table.keys().map(|key| (key.clone(), 0)).collect();
    for letter in listed.as_array().unwrap() {
        let key = (letter["connection"].as_str().unwrap().to_owned(), letter["entity"].as_str().unwrap().to_owned());
        *per_entity.get_mut(&key).unwrap_or_else(|| panic!("{key:?} has no row in the summary")) += 1;
    }
    assert_eq!(table, per_entity, "the summary's dead-lettered column: one per letter, per connection × entity");
    let got = linked(&env).await;
    for (connection, ids) in &expected {
        let letters = set_aside.get(connection).cloned().unwrap_or_default();
        assert!(!letters.is_empty(), "{connection}: some records were garbled and dead-lettered");
        let read = got.get(connection).cloned().unwrap_or_default();
        assert!(read.is_disjoint(&letters), "{connection}: a dead-lettered record was also stored");
        let accounted: BTreeSet<String> = read.union(&letters).cloned().collect();
        assert_eq!(&accounted, ids, "{connection}: every record is stored or dead-lettered");
    }
    // A retry has nothing to apply for them: they stay until the record changes in the vendor.
    ok(env.run(&["dlq", "retry", "all"]).await);
    assert_eq!(dead_letters(&env).await.len(), letters.len());
    // Read again decoded (the values fixed in the vendor; here a full re-read without the fault):
    // their letters go, and the store has every record.
    ok(env.run(&["sync", "--full"]).await);
    assert_eq!(dead_letters(&env).await, Vec::new(), "a record read and decoded again leaves no letter");
    assert_eq!(linked(&env).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_budget_fails_the_pass_clearly_and_the_next_resumes() {
    // Several pages per entity in every vendor (Salesforce's smallest batch is 200 records), so an
    // outage halfway through leaves committed pages to resume after.
    let vendors =
        Vendors::start(world(WorldSize { accounts: 1_500, leads: 800, opportunities: 500, orders: 300 })).await;
    let baseline = Env::with_connections(&vendors.connections(""), "");
    let before = reads(&vendors);
    ok(baseline.run(&["sync"]).await);
    let full: Vec<u64> = reads(&vendors).iter().zip(before).map(|(after, before)| after - before).collect();
    let expected = canonical_set(&baseline, None).await;

    let env = Env::with_connections(&vendors.connections(""), "");
    // A call gives up after 2 s of retries.
    let config =
        std::fs::read_to_string(&env.config).unwrap().replace("give_up_after = \"60s\"", "give_up_after = \"2s\"");
    std::fs::write(&env.config, config).unwrap();
    // Each vendor goes down halfway through the first sync.
    for (faults, calls) in [
        (vendors.salesforce.state().faults() as &crmsync_connectors::sim::Faults, full[0]),
        (vendors.zoho.state().faults(), full[1]),
        (vendors.dynamics.state().faults(), full[2]),
    ] {
        faults.apply(&FaultSettings { outage_after_calls: calls / 2, ..FaultSettings::default() });
    }
    let down = env.run(&["sync"]).await;
    vendors.faults(&FaultSettings::default());
    assert!(!down.status.success(), "a pass cannot succeed through an outage longer than its retry budget");
    let said = said(&down);
    assert!(said.contains("gave up after"), "the error says the retries ran out:\n{said}");
    assert!(said.contains("vendor error 5"), "the error names what the vendor answered:\n{said}");
    let status = ok(env.run(&["status"]).await);
    assert!(status.contains("gave up after"), "status shows the pass's error as the last error:\n{status}");

    let before = reads(&vendors);
    ok(env.run(&["sync"]).await);
    let resumed: Vec<u64> = reads(&vendors).iter().zip(before).map(|(after, before)| after - before).collect();
    assert_same_sets("after the outage", &expected, &canonical_set(&env, None).await);
    let status = ok(env.run(&["status"]).await);
    assert!(!status.contains("gave up after"), "a successful pass clears the last error:\n{status}");
    for (vendor, (resumed, full)) in ["salesforce", "zoho", "dynamics365"].into_iter().zip(resumed.iter().zip(&full)) {
        assert!(
            resumed < full,
            "{vendor}: the next pass resumed from the committed cursors ({resumed} reads, a full sync {full})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_by_ids_applies_the_good_records_and_dead_letters_the_one_undecodable_record() {
    let vendors = Vendors::start(world(SMALL)).await;
    // In each vendor, a user renames two opportunities, and one of them (and only it) gets an amount
    // no reader can take for a number (a column whose type was changed, holding text).
    let (sf, zoho, d365) = (vendors.salesforce.state(), vendors.zoho.state(), vendors.dynamics.state());
    let first_two = |mut ids: Vec<String>| {
        ids.sort();
        (ids[0].clone(), ids[1].clone())
    };
    let (sf_bad, sf_good) = first_two(sf.live_ids(Entity::Opportunity));
    let (zoho_bad, zoho_good) = first_two(zoho.live_ids(Entity::Opportunity));
    let (d365_bad, d365_good) = first_two(d365.live_ids(Entity::Opportunity));
    let garbled = Value::from("about 1112.5");
    for (id, amount) in [(&sf_bad, Some(&garbled)), (&sf_good, None)] {
        let mut edit = vec![("Name", Value::from(format!("Renamed {id}")))];
        edit.extend(amount.map(|amount| ("Amount", amount.clone())));
        assert!(sf.edit(Entity::Opportunity, id, &edit));
    }
    for (id, amount) in [(&zoho_bad, Some(&garbled)), (&zoho_good, None)] {
        let mut edit = vec![("Deal_Name", Value::from(format!("Renamed {id}")))];
        edit.extend(amount.map(|amount| ("Amount", amount.clone())));
        assert!(zoho.edit(Entity::Opportunity, id, &edit));
    }
    for (id, amount) in [(&d365_bad, Some(&garbled)), (&d365_good, None)] {
        let mut edit = vec![("name", Value::from(format!("Renamed {id}")))];
        edit.extend(amount.map(|amount| ("estimatedvalue", amount.clone())));
        assert!(d365.edit(Entity::Opportunity, id, &edit));
    }
    let bad: BTreeMap<&str, (&str, &str)> = [
        ("salesforce", (sf_bad.as_str(), "Amount")),
        ("zoho", (zoho_bad.as_str(), "Amount")),
        ("dynamics365", (d365_bad.as_str(), "estimatedvalue")),
    ]
    .into();
    let good: BTreeMap<&str, &str> =
        [("salesforce", sf_good.as_str()), ("zoho", zoho_good.as_str()), ("dynamics365", d365_good.as_str())].into();
    let live: BTreeMap<&str, BTreeSet<String>> = [
        ("salesforce", sf.live_ids(Entity::Opportunity)),
        ("zoho", zoho.live_ids(Entity::Opportunity)),
        ("dynamics365", d365.live_ids(Entity::Opportunity)),
    ]
    .into_iter()
    .map(|(connection, ids)| (connection, ids.into_iter().collect()))
    .collect();

    // The daemon's fetch-by-id path: its drift sweep over an empty store fetches every opportunity
    // by id, in one batch per vendor.
    let env = Env::with_connections(&vendors.connections(""), "");
    let secrets = crmsync_connectors::salesforce::sim::demo_secrets()
        .into_iter()
        .chain(crmsync_connectors::zoho::sim::demo_secrets())
        .chain(crmsync_connectors::dynamics365::sim::demo_secrets())
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let config = Config::load(Some(&env.config), Some(std::collections::HashMap::new()), &MapSecrets(secrets)).unwrap();
    let app = App::build(config).unwrap();
    for (connection, ids) in &live {
        let connector = &app.connectors[&ConnectionId::new(*connection)];
        let report = sweep(connector.as_ref(), &app.store, &app.ingest, Entity::Opportunity)
            .await
            .unwrap_or_else(|error| panic!("{connection}: one undecodable record failed the sweep: {error:?}"));
        let count = ids.len() as u64;
        assert_eq!(
            report,
            SweepReport { vendor_ids: count, store_ids: 0, deletes_repaired: 0, fetched: count - 1, dead_lettered: 1 },
            "{connection}"
        );
    }
    app.shutdown().await.unwrap();

    // Exactly the bad record of each vendor is dead-lettered, named by its id and the field.
    let letters = dead_letters(&env).await;
    assert_eq!(letters.len(), 3, "one letter per vendor: {letters:?}");
    for (connection, id, reason) in &letters {
        let (bad_id, field) = bad[connection.as_str()];
        assert_eq!(id, bad_id, "{connection}: the letter names the undecodable record");
        assert!(reason.contains("undecodable") && reason.contains(bad_id) && reason.contains(field), "{reason}");
    }
    // Every other opportunity is stored, the renamed one with its new name; the bad one is not.
    let mut stored: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for record in crate::support::export(&env, "opportunity", false).await {
        let name = record["data"]["fields"]["name"].as_str().unwrap_or_default().to_owned();
        for link in record["links"].as_array().unwrap() {
            stored
                .entry(link["connection"].as_str().unwrap().to_owned())
                .or_default()
                .insert(link["external_id"].as_str().unwrap().to_owned(), name.clone());
        }
    }
    for (connection, ids) in &live {
        let got = &stored[*connection];
        let (bad_id, _) = bad[connection];
        let expected: BTreeSet<String> = ids.iter().filter(|id| id.as_str() != bad_id).cloned().collect();
        assert_eq!(
            got.keys().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{connection}: every good record is applied"
        );
        let good_id = good[connection];
        assert_eq!(got[good_id], format!("Renamed {good_id}"), "{connection}: the good record's change is applied");
    }
}
