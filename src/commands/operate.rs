//! Operator commands on the store: `metrics`, `dlq list|retry|drop`, `conflicts list|resolve`,
//! `identity merge|split`.
//! They open the store directly (the daemon must be stopped; its API serves the same reads while it runs).

use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;

use anyhow::{Context, bail};
use crmsync_connectors::Change;
use crmsync_connectors::canonical::{ConnectionId, Timestamp};

use super::{load_config, print};
use crate::cli::{
    ConflictSide, ConflictsAction, ConflictsArgs, DlqAction, DlqArgs, IdentityAction, IdentityArgs, MetricsArgs,
};
use crate::config::Config;
use crate::ingest::{self, Batch, IngestRules};
use crate::metrics::{self, Scope};
use crate::reconcile;
use crate::store::{Commit, OutboxEntry, OutboxOp, Store};

fn open(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.daemon.data_dir).map_err(anyhow::Error::new)
}

/// Computes the metrics report for a scope name and window.
pub fn metrics_report(
    store: &Store,
    config: &Config,
    scope: &str,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> anyhow::Result<metrics::MetricsReport> {
    let scope = if scope == "unified" {
        Scope::Unified
    } else {
        let id = ConnectionId::new(scope);
        if !config.connections.contains_key(&id) {
            let names: Vec<&str> = config.connections.keys().map(ConnectionId::as_str).collect();
            bail!("unknown scope {scope:?} (use unified or one of: {})", names.join(", "));
        }
        Scope::Connection(id)
    };
    Ok(metrics::scan::report(store, &config.metrics, scope, since, until)?)
}

/// The metrics table for a scope (used by `metrics` and `demo`).
pub fn metrics_text(
    store: &Store,
    config: &Config,
    scope: &str,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> anyhow::Result<String> {
    Ok(metrics::render_table(&metrics_report(store, config, scope, since, until)?))
}

/// `crmsync metrics`.
pub fn metrics(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    if args.explain {
        print(metrics::explain());
        return Ok(ExitCode::SUCCESS);
    }
    let config = load_config(&args.config)?;
    let store = open(&config)?;
    let (since, until) = metrics::parse_window(args.since.as_deref(), args.until.as_deref(), ("--since", "--until"))
        .map_err(anyhow::Error::msg)?;
    let report = metrics_report(&store, &config, &args.scope, since, until)?;
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        print(&metrics::render_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn ingest_rules(config: &Config) -> IngestRules {
    IngestRules::from_config(config)
}

fn select_ids(requested: &[String], available: impl Iterator<Item = String>) -> anyhow::Result<BTreeSet<String>> {
    if requested.is_empty() {
        bail!("give dead-letter ids, or `all`");
    }
    let available: BTreeSet<String> = available.collect();
    if requested.iter().any(|id| id == "all") {
        return Ok(available);
    }
    for id in requested {
        if !available.contains(id) {
            bail!("no dead letter {id:?}");
        }
    }
    Ok(requested.iter().cloned().collect())
}

/// `crmsync dlq list|retry|drop`.
pub fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let store = open(&config)?;
    let letters = store.dead_letters(usize::MAX)?;
    match args.action {
        DlqAction::List { json } => {
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&letters)?));
            } else if letters.is_empty() {
                print("the dead-letter queue is empty\n");
            } else {
                for letter in &letters {
                    print(&format!(
                        "{}  {}  {}  {}  {}\n",
                        letter.id, letter.at, letter.connection, letter.entity, letter.reason
                    ));
                }
            }
        }
        DlqAction::Drop { ids } => {
            let selected = select_ids(&ids, letters.iter().map(|letter| letter.id.clone()))?;
            let mut commit = Commit::default();
            commit.dead_letters_remove.extend(selected.iter().cloned());
            store.commit(commit)?;
            store.flush()?;
            print(&format!("dropped {} dead letters\n", selected.len()));
        }
        DlqAction::Retry { ids } => {
            let selected = select_ids(&ids, letters.iter().map(|letter| letter.id.clone()))?;
            let rules = ingest_rules(&config);
            let mut requeued = 0;
            for letter in letters.iter().filter(|letter| selected.contains(&letter.id)) {
                let mut commit = Commit::default();
                match letter.canonical_id {
                    // A rejected push: queue the record for that connection again.
                    Some(id) => {
                        commit.outbox.push((
                            letter.connection.clone(),
                            OutboxEntry::new(letter.entity, id, OutboxOp::Upsert, Timestamp::now()),
                        ));
                    }
                    // A change that could not be applied: apply it again.
                    None => {
                        let change: Change = serde_json::from_value(letter.payload.clone())
                            .with_context(|| format!("dead letter {} does not hold a change", letter.id))?;
                        ingest::apply_batch(
                            &store,
                            &rules,
                            Batch::Delivered { connection: letter.connection.clone(), changes: vec![change] },
                            Timestamp::now(),
                        )?;
                    }
                }
                commit.dead_letters_remove.push(letter.id.clone());
                store.commit(commit)?;
                requeued += 1;
            }
            store.flush()?;
            print(&format!("retried {requeued} dead letters (pushes run with the next sync)\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `crmsync conflicts list|resolve`.
pub fn conflicts(args: ConflictsArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let store = open(&config)?;
    match args.action {
        ConflictsAction::List { all, json } => {
            let conflicts = store.conflicts(!all)?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&conflicts)?));
            } else if conflicts.is_empty() {
                print("no conflicts\n");
            } else {
                for conflict in &conflicts {
                    print(&format!(
                        "{}  {} {} .{}: current {} (from {}) vs incoming {} (from {})  policy {}{}\n",
                        conflict.id,
                        conflict.entity,
                        conflict.canonical_id,
                        conflict.field,
                        conflict.current.value,
                        conflict.current.connection.as_ref().map_or("local", ConnectionId::as_str),
                        conflict.incoming.value,
                        conflict.incoming.connection.as_ref().map_or("local", ConnectionId::as_str),
                        conflict.policy,
                        if conflict.resolved {
                            " (resolved)"
                        } else if conflict.held {
                            " HELD"
                        } else {
                            ""
                        },
                    ));
                }
            }
        }
        ConflictsAction::Resolve { id, take } => {
            let conflicts = store.conflicts(false)?;
            let Some(conflict) = conflicts.iter().find(|conflict| conflict.id == id) else {
                bail!("no conflict {id:?}");
            };
            if conflict.resolved {
                bail!("conflict {id} is already resolved");
            }
            let Some(mut record) = store.record(conflict.canonical_id)? else {
                bail!("the record of conflict {id} no longer exists");
            };
            let value = match take {
                ConflictSide::Current => conflict.current.value.clone(),
                ConflictSide::Incoming => conflict.incoming.value.clone(),
            };
            let now = Timestamp::now();
            reconcile::resolve_field(&mut record, &conflict.field, value, now)?;
            let rules = reconcile::Rules::from_config(&config);
            let mut commit = Commit::default();
            let mut queued = BTreeSet::new();
            ingest::queue_fan_out(&store, &rules, &record, None, &HashMap::new(), &mut queued, &mut commit, now)?;
            let keys = reconcile::index_keys(&rules, &record.data);
            commit.records.push((record, keys));
            commit.conflicts_resolved.push(conflict.id.clone());
            store.commit(commit)?;
            store.flush()?;
            print(&format!("resolved {id}; the value is queued for {} connections\n", queued.len()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn canonical_id(text: &str) -> anyhow::Result<crmsync_connectors::canonical::CanonicalId> {
    text.parse().map_err(|_| anyhow::anyhow!("{text:?} is not a canonical id (a UUID, as `crmsync export` shows)"))
}

/// `crmsync identity merge|split`.
pub fn identity(args: IdentityArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let store = open(&config)?;
    let rules = reconcile::Rules::from_config(&config);
    let now = Timestamp::now();
    let load = |id| -> anyhow::Result<crmsync_connectors::canonical::Record> {
        store.record(id)?.ok_or_else(|| anyhow::anyhow!("no record {id} in the store"))
    };
    let mut commit = Commit::default();
    match args.action {
        IdentityAction::Merge { keep, other } => {
            let (keep, other) = (load(canonical_id(&keep)?)?, load(canonical_id(&other)?)?);
            let (merged, absorbed) = reconcile::merge_records(&keep, &other, now)?;
            let mut queued = BTreeSet::new();
            ingest::queue_fan_out(&store, &rules, &merged, None, &HashMap::new(), &mut queued, &mut commit, now)?;
            // The absorbed record first: writing it releases its links, which the merged record takes.
            commit.records.push((absorbed, Vec::new()));
            let keys = reconcile::index_keys(&rules, &merged.data);
            let summary = format!(
                "merged {} into {}: {} copies ({}); queued for {} connections\n",
                other.id,
                merged.id,
                merged.links.len(),
                merged.links.iter().map(|link| link.connection.as_str()).collect::<Vec<_>>().join(", "),
                queued.len()
            );
            commit.records.push((merged, keys));
            store.commit(commit)?;
            store.flush()?;
            print(&summary);
        }
        IdentityAction::Split { id, connection } => {
            let record = load(canonical_id(&id)?)?;
            let connection = ConnectionId::new(connection);
            let (remaining, detached) =
                reconcile::split_record(&record, &connection, crmsync_connectors::canonical::CanonicalId::new(), now)?;
            let summary = format!("split the {connection} copy of {} into new record {}\n", remaining.id, detached.id);
            // The remaining record first: writing it releases the link the detached record takes.
            let keys = reconcile::index_keys(&rules, &remaining.data);
            commit.records.push((remaining, keys.clone()));
            commit.records.push((detached, keys));
            store.commit(commit)?;
            store.flush()?;
            print(&summary);
        }
    }
    Ok(ExitCode::SUCCESS)
}
