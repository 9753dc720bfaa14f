//! `sync` reads every connection's accounts before its deals and orders; `run` pulls every
//! connection × entity at once, so a deal or an order often arrives before its account. Both must
//! give the same canonical set (SPEC §7), whatever the interleaving.

use std::collections::BTreeSet;
use std::process::Stdio;

use crmsync_connectors::sim::{FaultSettings, Simulated, World, WorldSize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Vendors, assert_same_sets, canonical_set};
use crate::support::{Env, ok, signal};

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
        if event["message"] == "pull pass" {
            passed.insert((event["connection"].to_string(), event["entity"].to_string()));
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
    let vendors = Vendors::start(world).await;
    let connections = vendors.connections("");
    let synced_env = Env::with_connections(&connections, "");
    ok(synced_env.run(&["sync"]).await);
    let synced = canonical_set(&synced_env, None).await;
    assert!(synced["account"].len() > 100 && synced["order"].len() > 100, "the world is not trivial");

    // The daemon as is, then with one vendor answering slower than the others (its pages arrive
    // later relative to the rest: other interleavings).
    for (label, latencies) in
        [("as is", [0, 0, 0]), ("Salesforce slow", [4, 0, 0]), ("Zoho and Dataverse slow", [0, 3, 5])]
    {
        let slow = |latency_ms| FaultSettings { latency_ms, ..FaultSettings::default() };
        vendors.salesforce.state().faults().apply(&slow(latencies[0]));
        vendors.zoho.state().faults().apply(&slow(latencies[1]));
        vendors.dynamics.state().faults().apply(&slow(latencies[2]));
        let daemon_env = Env::with_connections(&connections, "");
        run_until_caught_up(&daemon_env, 12).await;
        assert_same_sets(label, &synced, &canonical_set(&daemon_env, None).await);
    }
}
