//! The reliability suite (issue 17): `kill -9` at random moments of the daemon, the canonical result
//! whatever the order pages arrive in. Helpers shared by its scenarios live here.

mod arrival_order;
mod faults;
mod full_read;
mod kill;
mod lost_edits;
mod parsers;
mod storage;
mod webhook_deletes;

use std::collections::{BTreeMap, BTreeSet};

use crmsync_connectors::canonical::Entity;
use crmsync_connectors::dynamics365::sim::{self as d365, Dynamics365SimOptions, RunningDynamics365Sim};
use crmsync_connectors::salesforce::sim::{self as sf, RunningSalesforceSim};
use crmsync_connectors::sim::{FaultSettings, Simulated, World};
use crmsync_connectors::zoho::sim::{self as zoho, RunningZohoSim, ZohoSimOptions};
use serde_json::Value;

use crate::support::{Env, export};

/// The four entities, as the CLI names them.
pub(crate) const ENTITIES: [&str; 4] = ["account", "lead", "opportunity", "order"];

/// The three simulated CRMs over one shared world.
pub(crate) struct Vendors {
    pub(crate) salesforce: RunningSalesforceSim,
    pub(crate) zoho: RunningZohoSim,
    pub(crate) dynamics: RunningDynamics365Sim,
}

impl Vendors {
    pub(crate) async fn start(world: World) -> Self {
        Self::start_with(world, 0).await
    }

    /// Starts the three with the first `shared_modstamp` records of each Salesforce object and each
    /// Zoho module sharing one modification time (more than a page of them: equal modstamps across a
    /// page boundary; Dataverse reads changes by delta token, not by modification time).
    pub(crate) async fn start_with(world: World, shared_modstamp: usize) -> Self {
        let zoho_options =
            ZohoSimOptions { shared_modified_time: shared_modstamp, ..ZohoSimOptions::with_world(world.clone()) };
        let salesforce_options =
            sf::SalesforceSimOptions { shared_modstamp, ..sf::SalesforceSimOptions::with_world(world.clone()) };
        Self {
            salesforce: sf::start(salesforce_options).await.unwrap(),
            zoho: zoho::start(zoho_options).await.unwrap(),
            dynamics: d365::start(Dynamics365SimOptions::with_world(world)).await.unwrap(),
        }
    }

    /// `[connections.*]` tables for the three, with pages small enough that a sync takes many.
    pub(crate) fn connections(&self, extra: &str) -> Vec<String> {
        vec![
            sf::connection_toml("salesforce", &self.salesforce.base_url()) + "batch_size = 200\n" + extra,
            zoho::connection_toml("zoho", &self.zoho.base_url()) + extra,
            d365::connection_toml("dynamics365", &self.dynamics.base_url()) + "max_page_size = 100\n" + extra,
        ]
    }

    /// Sets the same faults on the three.
    pub(crate) fn faults(&self, settings: &FaultSettings) {
        self.salesforce.state().faults().apply(settings);
        self.zoho.state().faults().apply(settings);
        self.dynamics.state().faults().apply(settings);
    }

    /// Writes the three have served (pushes).
    pub(crate) fn writes(&self) -> u64 {
        Simulated::stats(self.salesforce.state().as_ref()).write_calls
            + Simulated::stats(self.zoho.state().as_ref()).write_calls
            + Simulated::stats(self.dynamics.state().as_ref()).write_calls
    }

    /// Every live vendor id, per `vendor/entity`, with the canonical id crmsync wrote into the
    /// record's external-id field (when it created the record there).
    pub(crate) fn rows(&self) -> BTreeMap<String, Vec<(String, Option<String>)>> {
        let mut rows = BTreeMap::new();
        for entity in Entity::ALL {
            let (sf_state, zoho_state, d365_state) =
                (self.salesforce.state(), self.zoho.state(), self.dynamics.state());
            let read = |ids: Vec<String>, row: &dyn Fn(&str) -> Option<serde_json::Map<String, Value>>, field: &str| {
                ids.into_iter()
                    .map(|id| {
                        let stamped =
                            row(&id).and_then(|fields| fields.get(field).and_then(Value::as_str).map(str::to_owned));
                        (id, stamped)
                    })
                    .collect::<Vec<_>>()
            };
            rows.insert(
                format!("salesforce/{entity}"),
                read(sf_state.live_ids(*entity), &|id| sf_state.row(*entity, id), "Crmsync_Id__c"),
            );
            rows.insert(
                format!("zoho/{entity}"),
                read(zoho_state.live_ids(*entity), &|id| zoho_state.row(*entity, id), "Crmsync_Id"),
            );
            rows.insert(
                format!("dynamics365/{entity}"),
                read(d365_state.live_ids(*entity), &|id| d365_state.row(*entity, id), "crmsync_id"),
            );
        }
        rows
    }
}

/// Asserts that no canonical record was created twice in any CRM (two vendor records carrying the
/// same canonical id in the external-id field) and returns the live record count per vendor/entity.
pub(crate) fn vendor_counts_without_duplicates(vendors: &Vendors) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (table, rows) in vendors.rows() {
        let mut seen = BTreeSet::new();
        for (id, stamped) in &rows {
            if let Some(canonical) = stamped {
                assert!(seen.insert(canonical.clone()), "{table}: {canonical} was pushed twice (again as {id})");
            }
        }
        counts.insert(table, rows.len());
    }
    counts
}

/// The exported canonical set, by entity, with what depends on arrival order taken out: canonical ids
/// are replaced by what each record is (the vendor copies it links). With `world_ids` (the vendor ids
/// the CRMs held before any push), a copy crmsync created by a push, whose vendor id depends on push
/// order, shows as `connection:pushed`, and only propagating fields are kept (vendor-local fields
/// such as a pushed copy's creation time depend on when the push happened). A reference to a record
/// that is not exported shows as dangling.
pub(crate) async fn canonical_set(
    env: &Env,
    world_ids: Option<&BTreeSet<String>>,
) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut exported = BTreeMap::new();
    for entity in ENTITIES {
        exported.insert(entity, export(env, entity, true).await);
    }
    let copies = |record: &Value| {
        let mut links: Vec<String> = record["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|link| {
                let id = link["external_id"].as_str().unwrap();
                let shown = if world_ids.is_none_or(|ids| ids.contains(id)) { id } else { "pushed" };
                format!("{}:{shown}", link["connection"].as_str().unwrap())
            })
            .collect();
        links.sort();
        links.join(",")
    };
    let names: BTreeMap<String, String> =
        exported.values().flatten().map(|record| (record["id"].as_str().unwrap().to_owned(), copies(record))).collect();
    exported
        .into_iter()
        .map(|(entity, records)| {
            let parsed: Entity = entity.parse().unwrap();
            let set = records
                .iter()
                .map(|record| {
                    let mut fields = record["data"]["fields"].as_object().unwrap().clone();
                    if world_ids.is_some() {
                        fields.retain(|field, _| crmsync::reconcile::propagates(parsed, field));
                    }
                    for value in fields.values_mut() {
                        if let Some(id) = value.get("canonical").and_then(Value::as_str) {
                            *value = Value::String(names.get(id).cloned().unwrap_or_else(|| format!("dangling {id}")));
                        }
                    }
                    format!(
                        "[{}] {} deleted={}",
                        names[record["id"].as_str().unwrap()],
                        Value::Object(fields),
                        !record["deleted_at"].is_null()
                    )
                })
                .collect();
            (entity, set)
        })
        .collect()
}

/// Asserts two canonical sets are equal, showing a few differences per entity.
pub(crate) fn assert_same_sets(
    label: &str,
    expected: &BTreeMap<&'static str, BTreeSet<String>>,
    actual: &BTreeMap<&'static str, BTreeSet<String>>,
) {
    for entity in ENTITIES {
        let only_expected: Vec<&String> = expected[entity].difference(&actual[entity]).take(3).collect();
        let only_actual: Vec<&String> = actual[entity].difference(&expected[entity]).take(3).collect();
        assert!(
            only_expected.is_empty() && only_actual.is_empty(),
            "{label}: {entity}: expected {} records, got {}; only expected: {only_expected:#?}; only got: {only_actual:#?}",
            expected[entity].len(),
            actual[entity].len(),
        );
    }
}

/// Routes that send every change of each of `entities` from every connection to every other one.
pub(crate) fn routes_everywhere(entities: &[&str]) -> String {
    entities
        .iter()
        .map(|entity| format!("\n[[routes]]\nentity = \"{entity}\"\nfrom = [\"*\"]\nto = [\"*\"]\n"))
        .collect()
}

/// Iterations multiplier: `CRMSYNC_SOAK=10` runs the randomised parts ten times as often.
pub(crate) fn soak() -> u64 {
    std::env::var("CRMSYNC_SOAK").ok().and_then(|value| value.parse().ok()).unwrap_or(1).max(1)
}

/// A small seeded generator (xorshift64), so a failing sequence of kill points or damages can be
/// replayed.
pub(crate) struct Dice(pub(crate) u64);

impl Dice {
    pub(crate) fn roll(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// A Salesforce outbound message for one account's industry (crm-apis.md §1.10).
pub(crate) fn outbound_message(account: &str, industry: &str, stamp: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{}</OrganizationId><Notification><Id>04l{account}</Id><sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><sf:Id>{account}</sf:Id><sf:Industry>{industry}</sf:Industry><sf:SystemModstamp>{stamp}</sf:SystemModstamp></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"#,
        crmsync_connectors::salesforce::sim::ORGANIZATION_ID
    )
}

/// The industry of the account linked to a Salesforce id, as the store has it.
pub(crate) async fn stored_industry(env: &Env, account: &str) -> Option<String> {
    let accounts = crate::support::export(env, "account", true).await;
    let record = accounts.iter().find(|record| {
        record["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|link| link["connection"] == "salesforce" && link["external_id"] == account)
    })?;
    record["data"]["fields"]["industry"].as_str().map(str::to_owned)
}
