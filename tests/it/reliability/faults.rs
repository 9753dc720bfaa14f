//! The fault matrix on all three vendors at once (issue 17, the suite): a first sync and an
//! incremental one while every transient fault is switched on together (tokens expiring mid-paging,
//! throttling, 5xx, truncated bodies, numbers drifting to strings), over Zoho records sharing one
//! Salesforce and Zoho records sharing one modification time across page boundaries, with Dataverse
//! delta tokens and Salesforce query locators expiring between passes; then, from each vendor in
//! turn, answers slower than the timeout and a renamed field. Each pass
//! either completes with the exact record set of a fault-free twin, or stops with a clear error and
//! the next pass resumes to that set.

use std::collections::BTreeSet;

use crmsync_connectors::canonical::Entity;
use crmsync_connectors::sim::{FaultSettings, Simulated, World, WorldSize};
use crmsync_connectors::testkit::SimControl;

use super::{Vendors, assert_same_sets, canonical_set};
use crate::support::{Env, ok};

/// Every transient fault at once, at rates that make most passes meet each of them.
fn storm(seed: u64) -> FaultSettings {
    FaultSettings {
        token_expiry_after_calls: 9,
        throttle_per_second: 60,
        server_error_percent: 12,
        truncate_percent: 12,
        drift_percent: 20,
        latency_ms: 1,
        seed,
        ..FaultSettings::default()
    }
}

/// Runs `sync` until a pass succeeds (at most `limit` passes); every failed pass must say why.
async fn sync_until_done(env: &Env, args: &[&str], limit: usize) -> usize {
    for pass in 1..=limit {
        let output = env.run(&[&["sync"], args].concat()).await;
        if output.status.success() {
            return pass;
        }
        let said = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        assert!(said.contains("error") || said.contains("failed"), "a failed pass must say why:\n{said}");
    }
    panic!("no pass succeeded in {limit}");
}

fn faulted_calls(vendors: &Vendors) -> [u64; 3] {
    [
        Simulated::stats(vendors.salesforce.state().as_ref()).faulted_calls,
        Simulated::stats(vendors.zoho.state().as_ref()).faulted_calls,
        Simulated::stats(vendors.dynamics.state().as_ref()).faulted_calls,
    ]
}

/// The same user edits in both twins: 450 Zoho accounts in one burst (Zoho's modification times
/// have second precision: a burst shares a few of them, across the 200-record pages), a few records
/// in the other two, and Salesforce and Dataverse deletes. The Dataverse deletes are made before
/// the faulty twin's delta tokens expire: they are in no feed its full re-read sees, which must
/// infer them from the rows it did not deliver (before that fix, only the drift sweep found them).
fn edit(vendors: &Vendors) {
    SimControl::touch(vendors.zoho.state().as_ref(), Entity::Account, 450);
    SimControl::touch(vendors.zoho.state().as_ref(), Entity::Opportunity, 30);
    SimControl::touch(vendors.salesforce.state().as_ref(), Entity::Account, 40);
    SimControl::touch(vendors.dynamics.state().as_ref(), Entity::Order, 40);
    SimControl::delete(vendors.salesforce.state().as_ref(), Entity::Lead, 5);
    SimControl::delete(vendors.dynamics.state().as_ref(), Entity::Account, 3);
    SimControl::delete(vendors.dynamics.state().as_ref(), Entity::Opportunity, 3);
    SimControl::delete(vendors.dynamics.state().as_ref(), Entity::Order, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_faults_at_once_on_three_crms_lose_and_duplicate_nothing() {
    let world = World::generate(23, WorldSize::scaled(3_000), "2026-11-01T00:00:00Z".parse().unwrap(), true);
    // The first 450 records of each Salesforce object and Zoho module share one modification time:
    // equal modstamps across their 200-record pages.
    let clean = Vendors::start_with(world.clone(), 450).await;
    let faulty = Vendors::start_with(world, 450).await;
    // The twins' simulators started at different instants, so their creation times differ: only
    // propagating fields are compared (`world_ids`).
    let world_ids: BTreeSet<String> = clean.rows().into_values().flatten().map(|(id, _)| id).collect();
    let clean_env = Env::with_connections(&clean.connections(""), "");
    let faulty_env = Env::with_connections(&faulty.connections("timeout = \"2s\"\n"), "");
    // A call gives up after 4 s of retries (the default budget is minutes).
    let config = std::fs::read_to_string(&faulty_env.config)
        .unwrap()
        .replace("give_up_after = \"60s\"", "give_up_after = \"4s\"");
    std::fs::write(&faulty_env.config, config).unwrap();

    // First sync.
    ok(clean_env.run(&["sync"]).await);
    faulty.faults(&storm(1));
    let passes = sync_until_done(&faulty_env, &[], 6).await;
    let [salesforce_faults, zoho_faults, dynamics_faults] = faulted_calls(&faulty);
    assert!(salesforce_faults > 0 && zoho_faults > 0 && dynamics_faults > 0, "every vendor met faults");
    assert_same_sets(
        &format!("first sync under every fault ({passes} passes)"),
        &canonical_set(&clean_env, Some(&world_ids)).await,
        &canonical_set(&faulty_env, Some(&world_ids)).await,
    );

    // Incremental: the same edits and deletes in both; in the faulty twin, Dataverse's delta tokens
    // and Salesforce's query locators expire first.
    edit(&clean);
    edit(&faulty);
    faulty.dynamics.state().expire_delta_tokens();
    faulty.salesforce.state().expire_locators();
    ok(clean_env.run(&["sync"]).await);
    faulty.faults(&storm(2));
    let passes = sync_until_done(&faulty_env, &[], 6).await;
    assert_same_sets(
        &format!("incremental sync under every fault ({passes} passes)"),
        &canonical_set(&clean_env, Some(&world_ids)).await,
        &canonical_set(&faulty_env, Some(&world_ids)).await,
    );

    // Answers slower than the 2 s timeout, from each vendor in turn: its pass fails, saying so, and
    // the next one resumes.
    SimControl::touch(clean.zoho.state().as_ref(), Entity::Account, 5);
    SimControl::touch(faulty.zoho.state().as_ref(), Entity::Account, 5);
    let slow = FaultSettings { latency_ms: 2_500, ..FaultSettings::default() };
    for (connection, faults) in [
        ("salesforce", Simulated::faults(faulty.salesforce.state().as_ref())),
        ("zoho", Simulated::faults(faulty.zoho.state().as_ref())),
        ("dynamics365", Simulated::faults(faulty.dynamics.state().as_ref())),
    ] {
        faulty.faults(&FaultSettings::default());
        faults.apply(&slow);
        let output = faulty_env.run(&["sync", "--connection", connection, "--entity", "account"]).await;
        assert!(!output.status.success(), "{connection}: a pass whose calls all time out cannot succeed");
        let said = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        assert!(
            said.contains("timed out") || said.contains("timeout"),
            "{connection}: the error names the timeout:\n{said}"
        );
    }

    // A field the mapping needs renamed in each vendor's answers: that sync stops with a clear error.
    for (connection, faults) in [
        ("salesforce", Simulated::faults(faulty.salesforce.state().as_ref())),
        ("zoho", Simulated::faults(faulty.zoho.state().as_ref())),
        ("dynamics365", Simulated::faults(faulty.dynamics.state().as_ref())),
    ] {
        faulty.faults(&FaultSettings::default());
        faults.apply(&FaultSettings { schema_drift_renamed_field: true, ..FaultSettings::default() });
        let drifted = faulty_env.run(&["sync", "--connection", connection, "--entity", "opportunity"]).await;
        assert!(!drifted.status.success(), "{connection}: a renamed field a mapping needs must stop the sync");
        let said = String::from_utf8_lossy(&drifted.stderr).into_owned() + &String::from_utf8_lossy(&drifted.stdout);
        // Dataverse says "column", as its API does.
        assert!(said.contains("field") || said.contains("column"), "{connection}: the error names the field:\n{said}");
    }

    // Faults gone: the next pass resumes to the fault-free twin's set, with Dataverse deletes read
    // from the delta feed this time.
    faulty.faults(&FaultSettings::default());
    SimControl::delete(clean.dynamics.state().as_ref(), Entity::Account, 3);
    SimControl::delete(faulty.dynamics.state().as_ref(), Entity::Account, 3);
    ok(clean_env.run(&["sync"]).await);
    ok(faulty_env.run(&["sync"]).await);
    assert_same_sets(
        "after the faults",
        &canonical_set(&clean_env, Some(&world_ids)).await,
        &canonical_set(&faulty_env, Some(&world_ids)).await,
    );
}
