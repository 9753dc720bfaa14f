//! `sync` reads every connection's accounts before its deals and orders; `run` pulls every
//! connection × entity at once, so a deal or an order often arrives before its account. Both must
//! give the same canonical set (SPEC §7), whatever the interleaving.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use crmsync_connectors::dynamics365::sim::{self as d365, Dynamics365SimOptions};
use crmsync_connectors::salesforce::sim as sf;
use crmsync_connectors::sim::{FaultSettings, Simulated, World, WorldSize};
use crmsync_connectors::zoho::sim::{self as zoho, ZohoSimOptions};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{Env, export, ok, salesforce, signal};

const ENTITIES: [&str; 4] = ["account", "lead", "opportunity", "order"];

/// The exported canonical set with canonical ids (which depend on arrival order) replaced by what
/// each record is: the vendor copies it links. A reference to a record that is not exported (a
/// merged-away placeholder) shows as dangling and makes the sets differ.
async fn canonical_set(env: &Env) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut exported = BTreeMap::new();
    for entity in ENTITIES {
        exported.insert(entity, export(env, entity, true).await);
    }
    let copies = |record: &Value| {
        let mut links: Vec<String> = record["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|link| format!("{}:{}", link["connection"].as_str().unwrap(), link["external_id"].as_str().unwrap()))
            .collect();
        links.sort();
        links.join(",")
    };
    let names: BTreeMap<String, String> =
        exported.values().flatten().map(|record| (record["id"].as_str().unwrap().to_owned(), copies(record))).collect();
    exported
        .into_iter()
        .map(|(entity, records)| {
            let set = records
                .iter()
                .map(|record| {
                    let mut fields = record["data"]["fields"].as_object().unwrap().clone();
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

/// Runs the daemon until every connection × entity has finished its first pull pass, then stops it.
async fn run_until_caught_up(env: &Env, pairs: usize) {
    let mut daemon =
        env.command(&["run"]).env("RUST_LOG", "info").stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut logs = BufReader::new(daemon.stderr.take().unwrap()).lines();
    let mut passed = BTreeSet::new();
    while passed.len() < pairs {
        let line = logs.next_line().await.unwrap().expect("the daemon exited before catching up");
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        assert_ne!(event["level"], "ERROR", "{line}");
        if event["fields"]["message"] == "pull pass" {
            passed.insert((event["fields"]["connection"].to_string(), event["fields"]["entity"].to_string()));
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });
    signal(&daemon, "TERM").await;
    assert!(daemon.wait().await.unwrap().success(), "SIGTERM must exit 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_run_give_the_same_canonical_set_whatever_order_the_pages_arrive_in() {
    // Issue 17 §1 reproduced small: a shared world (customers in one, two or three CRMs, deals and
    // orders in one), small pages so the daemon's concurrent pulls interleave, no routes (pull only,
    // so every pass reads the same world).
    let world = World::generate(7, WorldSize::scaled(3_000), "2026-11-01T00:00:00Z".parse().unwrap(), true);
    let salesforce = salesforce(world.clone(), FaultSettings::default(), None).await;
    let zoho = zoho::start(ZohoSimOptions::with_world(world.clone())).await.unwrap();
    let dynamics = d365::start(Dynamics365SimOptions::with_world(world)).await.unwrap();
    let connections = [
        sf::connection_toml("salesforce", &salesforce.base_url()) + "batch_size = 200\n",
        zoho::connection_toml("zoho", &zoho.base_url()),
        d365::connection_toml("dynamics365", &dynamics.base_url()) + "max_page_size = 100\n",
    ];
    let synced_env = Env::with_connections(&connections, "");
    ok(synced_env.run(&["sync"]).await);
    let synced = canonical_set(&synced_env).await;
    assert!(synced["account"].len() > 100 && synced["order"].len() > 100, "the world is not trivial");

    // The daemon as is, then with one vendor answering slower than the others (its pages arrive
    // later relative to the rest: other interleavings).
    let slow = |vendor: &dyn Simulated, latency_ms| {
        vendor.faults().apply(&FaultSettings { latency_ms, ..FaultSettings::default() })
    };
    for (label, latencies) in
        [("as is", [0, 0, 0]), ("Salesforce slow", [4, 0, 0]), ("Zoho and Dataverse slow", [0, 3, 5])]
    {
        slow(salesforce.state().as_ref(), latencies[0]);
        slow(zoho.state().as_ref(), latencies[1]);
        slow(dynamics.state().as_ref(), latencies[2]);
        let daemon_env = Env::with_connections(&connections, "");
        run_until_caught_up(&daemon_env, 12).await;
        let daemon = canonical_set(&daemon_env).await;
        for entity in ENTITIES {
            let (only_sync, only_run): (Vec<_>, Vec<_>) = (
                synced[entity].difference(&daemon[entity]).collect(),
                daemon[entity].difference(&synced[entity]).collect(),
            );
            assert!(
                only_sync.is_empty() && only_run.is_empty(),
                "{label}: {entity}: sync {} records, run {}; only after sync: {:?}; only after run: {:?}",
                synced[entity].len(),
                daemon[entity].len(),
                only_sync.iter().take(3).collect::<Vec<_>>(),
                only_run.iter().take(3).collect::<Vec<_>>()
            );
        }
    }
}
