//! A user's edit is never lost to crmsync's own copies or to whole-second modification times (issue
//! 17; found by `kill.rs`, where a Zoho deal's amount edited twice kept the first amount). Zoho's
//! `Modified_Time` has whole seconds: two edits within one second carry one stamp, and an edit made in
//! the second after crmsync wrote a copy elsewhere is stamped before that copy's millisecond
//! `SystemModstamp`. Neither may make the later edit lose.

use crmsync_connectors::canonical::{Entity, Timestamp};
use crmsync_connectors::sim::{World, WorldSize};
use serde_json::{Value, json};

use super::{Vendors, routes_everywhere};
use crate::support::{Env, export, ok};

/// The canonical amount of the deal linked to `zoho`/`deal`, its Salesforce copy's, and that copy's id.
async fn amounts(env: &Env, vendors: &Vendors, deal: &str) -> (Value, Option<f64>, String) {
    let records = export(env, "opportunity", false).await;
    let record = records
        .iter()
        .find(|record| {
            record["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|link| link["connection"] == "zoho" && link["external_id"] == deal)
        })
        .unwrap_or_else(|| panic!("deal {deal} is stored"));
    let in_salesforce = record["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|link| link["connection"] == "salesforce")
        .and_then(|link| link["external_id"].as_str())
        .expect("the deal has a Salesforce copy");
    let copy = vendors.salesforce.state().row(Entity::Opportunity, in_salesforce).unwrap();
    (record["data"]["fields"]["amount"]["amount"].clone(), copy["Amount"].as_f64(), in_salesforce.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoho_edits_stamped_in_one_second_or_before_our_copy_are_never_lost() {
    let world = World::generate(
        23,
        WorldSize { accounts: 8, leads: 0, opportunities: 6, orders: 0 },
        "2026-11-01T00:00:00Z".parse().unwrap(),
        true,
    );
    let vendors = Vendors::start(world).await;
    let env = Env::with_connections(&vendors.connections(""), &routes_everywhere(&["account", "opportunity"]));
    ok(env.run(&["sync"]).await);
    ok(env.run(&["sync"]).await);
    let deal = vendors.zoho.state().live_ids(Entity::Opportunity).remove(0);
    // This whole second: no write crmsync made to the deal is stamped after it.
    let second = Timestamp::from_unix_millis(Timestamp::now().unix_millis().div_euclid(1000) * 1000).unwrap();
    let modified = || vendors.zoho.state().modified_time(Entity::Opportunity, &deal).unwrap();

    // Two edits within that second, a pull between them: the second one carries the first's stamp.
    assert!(vendors.zoho.state().edit_at(Entity::Opportunity, &deal, &[("Amount", json!(1190))], second));
    let stamp = modified();
    ok(env.run(&["sync"]).await);
    let (canonical, copy, in_salesforce) = amounts(&env, &vendors, &deal).await;
    assert_eq!((canonical, copy), (json!("1190"), Some(1190.0)));
    assert_eq!(modified(), stamp, "crmsync wrote nothing to the deal since the edit");
    assert!(vendors.zoho.state().edit_at(Entity::Opportunity, &deal, &[("Amount", json!(1220))], second));
    assert_eq!(modified(), stamp, "the second edit has the first one's Modified_Time");
    ok(env.run(&["sync"]).await);
    ok(env.run(&["sync"]).await);
    let (canonical, copy, _) = amounts(&env, &vendors, &deal).await;
    assert_eq!((canonical, copy), (json!("1220"), Some(1220.0)), "the second edit of that second arrived");

    // A Salesforce user renames the copy (a millisecond stamp), and the Zoho user then changes the
    // amount within the same second: Zoho stamps that edit with the whole second, before the rename.
    assert!(vendors.salesforce.state().edit(Entity::Opportunity, &in_salesforce, &[("Name", json!("Renamed"))]));
    let renamed_at = vendors.salesforce.state().modstamp(Entity::Opportunity, &in_salesforce).unwrap();
    let zoho_second = Timestamp::from_unix_millis(renamed_at.unix_millis().div_euclid(1000) * 1000).unwrap();
    assert!(vendors.zoho.state().edit_at(Entity::Opportunity, &deal, &[("Amount", json!(1250))], zoho_second));
    // crmsync reads the rename, with the amount it wrote there, before the Zoho edit.
    ok(env.run(&["sync", "--connection", "salesforce"]).await);
    ok(env.run(&["sync"]).await);
    ok(env.run(&["sync"]).await);
    let (canonical, copy, _) = amounts(&env, &vendors, &deal).await;
    assert_eq!(
        (canonical, copy),
        (json!("1250"), Some(1250.0)),
        "the Zoho edit is the only change of the amount since crmsync wrote the copy"
    );
    let renamed = vendors.salesforce.state().row(Entity::Opportunity, &in_salesforce).unwrap();
    assert_eq!(renamed["Name"], "Renamed", "the rename stays");
}
