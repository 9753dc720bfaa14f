//! The contract suite every connector must pass, run against its simulator over loopback.
//!
//! A vendor's tests build its connector against its simulator, wrap the simulator in
//! [`SimControl`], and call [`run_contract_suite`] (or the individual checks). The checks assert what
//! the daemon relies on: paging terminates, a full pull yields every record exactly once, the cursor
//! advances so an incremental pull yields exactly what changed, deletes arrive, pushes are idempotent,
//! and a forged webhook is refused.

use std::collections::BTreeSet;

use rust_decimal::Decimal;

use crate::canonical::{
    Account, CanonicalId, Channel, Currency, Entity, EntityData, ExternalId, Order, OrderLine, OrderStatus, RecordRef,
};
use crate::connector::{
    Change, ChangeKind, Connector, Cursor, Outgoing, OutgoingOp, PushOutcome, Undecodable, WebhookDelivery,
};
use crate::error::{ConnectorError, WebhookError};
use crate::sim::{FaultSettings, Faults, SimStats};

/// In-process control over a running simulator.
pub trait SimControl: Send + Sync {
    /// Returns the number of live records of an entity.
    fn count(&self, entity: Entity) -> usize;
    /// Modifies `n` existing records (new modification time) and returns their ids.
    fn touch(&self, entity: Entity, n: usize) -> Vec<ExternalId>;
    /// Deletes `n` existing records and returns their ids.
    fn delete(&self, entity: Entity, n: usize) -> Vec<ExternalId>;
    /// Returns call counters.
    fn stats(&self) -> SimStats;
    /// Returns the fault switches.
    fn faults(&self) -> &Faults;
}

/// Everything [`pull_to_end`] read.
#[derive(Debug)]
pub struct PullRun {
    /// Every change, in order.
    pub changes: Vec<Change>,
    /// The last cursor.
    pub cursor: Cursor,
    /// Pages read.
    pub pages: usize,
    /// Records set aside as undecodable, in order.
    pub undecodable: Vec<Undecodable>,
    /// Each page's [`crate::Page::total`], in order.
    pub totals: Vec<Option<u64>>,
}

/// Pulls pages from `cursor` until `has_more` is false (at most `max_pages`, so a broken connector
/// fails the test instead of hanging it).
pub async fn pull_to_end<C: Connector>(
    connector: &C,
    entity: Entity,
    cursor: Option<Cursor>,
    max_pages: usize,
) -> Result<PullRun, ConnectorError> {
    let mut cursor = cursor;
    let mut changes = Vec::new();
    let mut undecodable = Vec::new();
    let mut pages = 0;
    let mut totals = Vec::new();
    loop {
        let page = connector.pull(entity, cursor.as_ref()).await?;
        pages += 1;
        totals.push(page.total);
        changes.extend(page.changes);
        undecodable.extend(page.undecodable);
        cursor = Some(page.cursor);
        assert!(pages <= max_pages, "paging did not terminate after {max_pages} pages");
        if !page.has_more {
            break;
        }
    }
    let cursor = cursor.expect("at least one page was read");
    Ok(PullRun { changes, cursor, pages, undecodable, totals })
}

fn distinct_ids(changes: &[Change]) -> BTreeSet<ExternalId> {
    changes.iter().map(|change| change.external_id.clone()).collect()
}

/// A full pull yields every live record exactly once, and paging terminates.
pub async fn full_pull_yields_every_record_once<C: Connector>(
    connector: &C,
    sim: &dyn SimControl,
    entity: Entity,
) -> Cursor {
    let run = pull_to_end(connector, entity, None, 10_000).await.expect("full pull");
    let ids = distinct_ids(&run.changes);
    assert_eq!(ids.len(), run.changes.len(), "a full pull yielded duplicates");
    assert_eq!(ids.len(), sim.count(entity), "a full pull missed records");
    assert!(run.changes.iter().all(|change| !change.is_delete()), "a full pull yielded deletes");
    run.cursor
}

/// After `n` records change, an incremental pull from the saved cursor yields exactly those records.
pub async fn incremental_pull_yields_exactly_the_changes<C: Connector>(
    connector: &C,
    sim: &dyn SimControl,
    entity: Entity,
    cursor: Cursor,
    n: usize,
) -> Cursor {
    let touched: BTreeSet<ExternalId> = sim.touch(entity, n).into_iter().collect();
    let run = pull_to_end(connector, entity, Some(cursor), 100).await.expect("incremental pull");
    assert_eq!(distinct_ids(&run.changes), touched, "incremental pull did not yield exactly the changed records");
    let again = pull_to_end(connector, entity, Some(run.cursor.clone()), 100).await.expect("second incremental pull");
    assert!(again.changes.is_empty(), "the cursor did not advance: {} changes read again", again.changes.len());
    again.cursor
}

/// Deleted records arrive as deletes on the next incremental pull.
pub async fn deletes_arrive<C: Connector>(
    connector: &C,
    sim: &dyn SimControl,
    entity: Entity,
    cursor: Cursor,
    n: usize,
) -> Cursor {
    let deleted: BTreeSet<ExternalId> = sim.delete(entity, n).into_iter().collect();
    let run = pull_to_end(connector, entity, Some(cursor), 100).await.expect("pull after delete");
    let seen: BTreeSet<ExternalId> =
        run.changes.iter().filter(|change| change.is_delete()).map(|change| change.external_id.clone()).collect();
    assert_eq!(seen, deleted, "deletes did not arrive");
    run.cursor
}

/// Builds `n` new accounts to push.
pub fn new_accounts(n: usize, label: &str) -> Vec<Outgoing> {
    (0..n)
        .map(|index| Outgoing {
            canonical_id: CanonicalId::new(),
            external_id: None,
            expected_version: None,
            op: OutgoingOp::Upsert {
                data: EntityData::Account(Account {
                    name: Some(format!("{label} {index}")),
                    number: Some(format!("{label}-{index}")),
                    domain: Some(format!("{}-{index}.example", label.to_ascii_lowercase().replace(' ', "-"))),
                    ..Account::default()
                }),
            },
        })
        .collect()
}

/// Builds `n` confirmed EUR e-commerce orders of `account`, numbered `{label}-00000`…, each with one
/// line: 2 × Widget at 9.50 (total 19).
pub fn new_orders(account: &RecordRef, n: usize, label: &str) -> Vec<Outgoing> {
    (0..n)
        .map(|index| Outgoing {
            canonical_id: CanonicalId::new(),
            external_id: None,
            expected_version: None,
            op: OutgoingOp::Upsert {
                data: EntityData::Order(Order {
                    number: Some(format!("{label}-{index:05}")),
                    account: Some(account.clone()),
                    status: Some(OrderStatus::Confirmed),
                    order_date: "2026-11-02".parse().ok(),
                    currency: Currency::new("EUR").ok(),
                    channel: Some(Channel::Ecommerce),
                    lines: Some(vec![OrderLine {
                        product: Some("Widget".into()),
                        sku: None,
                        quantity: 2.into(),
                        unit_price: Decimal::new(950, 2),
                        line_total: 19.into(),
                    }]),
                    ..Order::default()
                }),
            },
        })
        .collect()
}

/// Pushing the same records twice creates them once: the second push only updates.
pub async fn pushes_are_idempotent<C: Connector>(connector: &C, sim: &dyn SimControl, n: usize) {
    let before = sim.count(Entity::Account);
    let batch = new_accounts(n, "Contract Push");
    let mut first_ids = Vec::new();
    for chunk in batch.chunks(connector.push_batch_size()) {
        let report = connector.push(Entity::Account, chunk).await.expect("first push");
        assert_eq!(report.results.len(), chunk.len(), "one result per record");
        for (result, outgoing) in report.results.iter().zip(chunk) {
            assert_eq!(result.canonical_id, outgoing.canonical_id, "results come in batch order");
            match &result.outcome {
                PushOutcome::Upserted { external_id, created: true, .. } => first_ids.push(external_id.clone()),
                other => panic!("first push of a new record: {other:?}"),
            }
        }
    }
    assert_eq!(sim.count(Entity::Account), before + n, "first push did not create every record");
    let mut second_ids = Vec::new();
    for chunk in batch.chunks(connector.push_batch_size()) {
        let report = connector.push(Entity::Account, chunk).await.expect("second push");
        for result in &report.results {
            match &result.outcome {
                PushOutcome::Upserted { external_id, created: false, .. } => second_ids.push(external_id.clone()),
                other => panic!("re-push of an existing record: {other:?}"),
            }
        }
    }
    assert_eq!(sim.count(Entity::Account), before + n, "re-push created duplicates");
    assert_eq!(first_ids, second_ids, "re-push hit different records");
}

/// A delivery with a wrong secret is refused as unauthenticated.
pub fn forged_webhook_is_refused<C: Connector>(connector: &C, forged: &WebhookDelivery<'_>) {
    match connector.parse_webhook(forged) {
        Err(WebhookError::Unauthenticated(_)) => {}
        other => panic!("a forged webhook was not refused: {other:?}"),
    }
}

/// The fault scenarios every connector must sit out without changing a record: a vendor throttling at
/// 2 requests/s, 30 % 5xx answers, 30 % truncated pages, 30 % drifted records (numbers as strings).
pub fn fault_scenarios() -> Vec<(&'static str, FaultSettings)> {
    vec![
        ("throttled at 2 requests/s", FaultSettings { throttle_per_second: 2, ..FaultSettings::default() }),
        ("30 % 5xx", FaultSettings { server_error_percent: 30, seed: 1, ..FaultSettings::default() }),
        ("30 % truncated pages", FaultSettings { truncate_percent: 30, seed: 2, ..FaultSettings::default() }),
        ("30 % drifted records", FaultSettings { drift_percent: 30, seed: 3, ..FaultSettings::default() }),
    ]
}

/// What a full pull of some entities read: per vendor id, its modification time and canonical values
/// (vendor extras aside: a drifted record's extras are what the vendor sent).
pub type PulledState = std::collections::BTreeMap<(Entity, ExternalId), (crate::canonical::Timestamp, ChangeKind)>;

/// Pulls `entities` in full with `connector` and returns what it read; every record must decode.
pub async fn pull_everything<C: Connector>(connector: &C, entities: &[Entity]) -> Result<PulledState, ConnectorError> {
    let (state, set_aside) = pull_everything_setting_aside(connector, entities).await?;
    assert!(set_aside.is_empty(), "records were set aside as undecodable: {set_aside:?}");
    Ok(state)
}

/// Pulls `entities` in full with `connector` and returns what it read and the records it set aside
/// as undecodable (each record once, in one of the two).
pub async fn pull_everything_setting_aside<C: Connector>(
    connector: &C,
    entities: &[Entity],
) -> Result<(PulledState, std::collections::BTreeMap<(Entity, ExternalId), Undecodable>), ConnectorError> {
    let mut state = PulledState::new();
    let mut set_aside = std::collections::BTreeMap::new();
    for entity in entities {
        let run = pull_to_end(connector, *entity, None, 10_000).await?;
        for change in run.changes {
            let previous = state.insert((*entity, change.external_id.clone()), (change.modified_at, change.kind));
            assert!(previous.is_none(), "{entity} {} read twice", change.external_id);
        }
        for record in run.undecodable {
            let key = (*entity, record.external_id.clone());
            assert!(!state.contains_key(&key), "{entity} {} both read and set aside", record.external_id);
            let previous = set_aside.insert(key, record);
            assert!(previous.is_none(), "{entity} set aside twice");
        }
    }
    Ok((state, set_aside))
}

/// With 30 % of the records garbled (numbers as text that is not a number), a full pull with a
/// fresh connector from `make` reads every other record exactly as the fault-free pull did, and sets
/// the garbled ones aside with their vendor id, modification time and a reason naming the field:
/// none is lost, none is read with an altered value. Returns the connector's figures.
pub async fn garbled_records_are_set_aside<C: Connector>(
    make: impl Fn() -> C,
    sim: &dyn SimControl,
    entities: &[Entity],
) -> crate::connector::ApiUsage {
    sim.faults().apply(&FaultSettings::default());
    let baseline = pull_everything(&make(), entities).await.expect("fault-free pull");
    sim.faults().apply(&FaultSettings { garble_percent: 30, seed: 4, ..FaultSettings::default() });
    let connector = make();
    let pulled = pull_everything_setting_aside(&connector, entities).await;
    let garbled: BTreeSet<String> = sim.faults().garbled_records().into_iter().collect();
    sim.faults().apply(&FaultSettings::default());
    let (pulled, set_aside) = pulled.unwrap_or_else(|error| panic!("garbled records: the pull failed: {error}"));
    assert!(!set_aside.is_empty(), "no record was set aside ({} garbled)", garbled.len());
    for ((entity, id), record) in &set_aside {
        assert!(garbled.contains(id.as_str()), "{entity} {id} was set aside but not garbled: {}", record.reason);
        let (stamp, _) =
            baseline.get(&(*entity, id.clone())).unwrap_or_else(|| panic!("{entity} {id} is not a record"));
        assert_eq!(&record.modified_at, stamp, "{entity} {id}: the set-aside record's time");
        assert!(record.reason.contains("field"), "the reason names the field: {}", record.reason);
    }
    for (key, read) in &pulled {
        assert_eq!(baseline.get(key), Some(read), "{} {}: read with other values than without faults", key.0, key.1);
    }
    let accounted: BTreeSet<&(Entity, ExternalId)> = pulled.keys().chain(set_aside.keys()).collect();
    assert_eq!(accounted, baseline.keys().collect(), "every record is either read or set aside");
    connector.usage()
}

/// Under each of [`fault_scenarios`], a full pull with a fresh connector from `make` reads exactly
/// what the fault-free pull read, and the fault really happened. Returns, per scenario, the calls
/// the pull made and its connection's throttling figures, next to the fault-free run's.
pub async fn faults_change_nothing<C: Connector>(
    make: impl Fn() -> C,
    sim: &dyn SimControl,
    entities: &[Entity],
) -> Vec<(&'static str, crate::connector::ApiUsage)> {
    sim.faults().apply(&FaultSettings::default());
    let calm = make();
    let baseline = pull_everything(&calm, entities).await.expect("fault-free pull");
    assert!(!baseline.is_empty(), "the simulator has records to read");
    let mut figures = vec![("fault-free", calm.usage())];
    for (name, settings) in fault_scenarios() {
        sim.faults().apply(&settings);
        let faulted_before = sim.stats().faulted_calls;
        let connector = make();
        let pulled = pull_everything(&connector, entities).await;
        let (truncated, drifted) = (sim.faults().truncated_responses(), sim.faults().drifted_records());
        let faulted = sim.stats().faulted_calls - faulted_before;
        sim.faults().apply(&FaultSettings::default());
        let pulled = pulled.unwrap_or_else(|error| panic!("{name}: the pull failed: {error}"));
        assert!(pulled == baseline, "{name}: the records differ from the fault-free run");
        let happened = match settings {
            FaultSettings { truncate_percent: 1.., .. } => truncated,
            FaultSettings { drift_percent: 1.., .. } => drifted,
            _ => faulted,
        };
        assert!(happened > 0, "{name}: the simulator injected nothing");
        figures.push((name, connector.usage()));
    }
    figures
}

/// Runs every contract check on one entity (`account` pushes) against a simulator.
pub async fn run_contract_suite<C: Connector>(
    connector: &C,
    sim: &dyn SimControl,
    entity: Entity,
    forged: &WebhookDelivery<'_>,
) {
    let cursor = full_pull_yields_every_record_once(connector, sim, entity).await;
    let cursor = incremental_pull_yields_exactly_the_changes(connector, sim, entity, cursor, 10).await;
    deletes_arrive(connector, sim, entity, cursor, 2).await;
    pushes_are_idempotent(connector, sim, 25).await;
    forged_webhook_is_refused(connector, forged);
}
