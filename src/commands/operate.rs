//! Operator commands: `orders`, `metrics`, `dlq`, `conflicts`, `identity`. They parse and print; the
//! work is done by one of two back ends that give the same results:
//!
//! - the store is free (no daemon): it is opened here, reads come from [`crate::queries`] and
//!   changes are operator batches applied by an ingest writer started for the command (queued pushes
//!   go out with the next `sync` or `run`);
//! - a daemon holds the store: its REST API does the same ([`ApiClient`]; URL and token from the
//!   config, or `--url`/`--token`).

use std::process::ExitCode;

use anyhow::{Context, bail};
use crmsync_connectors::canonical::{CanonicalId, ConnectionId, Entity, EntityData, Record};
use tokio::task::JoinHandle;

use super::{load_config, print};
use crate::cli::{
    ClientArgs, ConflictSide, ConflictsAction, ConflictsArgs, DlqAction, DlqArgs, IdentityAction, IdentityArgs,
    MetricsArgs, OrdersAction, OrdersArgs,
};
use crate::config::Config;
use crate::http::api::OrderChange;
use crate::http::client::{ApiClient, api_url};
use crate::ingest::operator::{
    DeadLetterSelection, LineInput, OperatorAction, OperatorOutcome, OrderInput, OrderPatch, Side,
};
use crate::ingest::{IngestHandle, IngestRules, Ingestor};
use crate::metrics::{self, MetricsReport, Scope};
use crate::queries::{self, ListQuery, QueuePage, RecordPage, Versioned};
use crate::store::{ConflictEntry, DeadLetter, Store, StoreError};

/// Where a command does its work.
pub enum Backend {
    /// The store, opened by this process, with a writer of its own.
    Local {
        /// The store.
        store: Store,
        /// The writer's handle.
        ingest: IngestHandle,
        /// The writer.
        writer: JoinHandle<()>,
        /// The configuration.
        config: Box<Config>,
    },
    /// A running daemon's API.
    Remote(ApiClient),
}

impl Backend {
    /// Opens the store, or, when a daemon holds it (or `--url` is given), connects to its API.
    pub fn open(config: &Config, client: &ClientArgs) -> anyhow::Result<Self> {
        if let Some(url) = &client.url {
            return Ok(Self::Remote(ApiClient::new(url, token(config, client, url)?)));
        }
        match crate::app::open_store(config) {
            Ok(store) => {
                let (writer, ingest) = Ingestor::new(store.clone(), IngestRules::from_config(config), 4);
                let writer = tokio::spawn(writer.run());
                Ok(Self::Local { store, ingest, writer, config: Box::new(config.clone()) })
            }
            Err(StoreError::Locked { .. }) => {
                let url = api_url(config.daemon.listen);
                Ok(Self::Remote(ApiClient::new(&url, token(config, client, &url)?)))
            }
            Err(error) => Err(crate::app::open_error(config, error)),
        }
    }

    /// Stops the local writer (after what it was given) and flushes.
    pub async fn close(self) -> anyhow::Result<()> {
        if let Self::Local { store, ingest, writer, .. } = self {
            drop(ingest);
            writer.await.context("ingest writer failed")?;
            store.flush()?;
        }
        Ok(())
    }

    async fn operate(&self, action: OperatorAction) -> anyhow::Result<OperatorOutcome> {
        match self {
            Self::Local { ingest, .. } => Ok(ingest.operate(action).await?),
            Self::Remote(_) => bail!("internal: an operator action was sent to the local writer of a remote back end"),
        }
    }

    /// Reads on a blocking thread (store scans must not hold the async workers).
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, queries::QueryError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let Self::Local { store, .. } = self else { bail!("internal: a store read on a remote back end") };
        let store = store.clone();
        Ok(tokio::task::spawn_blocking(move || work(&store)).await.context("store read task failed")??)
    }

    /// Runs `command` against this back end, closing it afterwards whatever the result.
    async fn run<T>(self, command: impl AsyncFnOnce(&Self) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let result = command(&self).await;
        let closed = self.close().await;
        let value = result?;
        closed?;
        Ok(value)
    }
}

/// The API token: `--token` (or `CRMSYNC_API_TOKEN`), else `api.token` of the config.
fn token(config: &Config, client: &ClientArgs, url: &str) -> anyhow::Result<secrecy::SecretString> {
    match (&client.token, &config.api.token) {
        (Some(token), _) => Ok(secrecy::SecretString::from(token.clone())),
        (None, Some(token)) => Ok(token.clone()),
        (None, None) => bail!(
            "the store is in use by a running daemon; its API at {url} needs a token: set api.token in the \
             configuration or pass --token"
        ),
    }
}

fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(value)?))
}

/// Checks a scope name against the configured connections.
fn scope(config: &Config, name: &str) -> anyhow::Result<Scope> {
    if name == "unified" {
        return Ok(Scope::Unified);
    }
    let id = ConnectionId::new(name);
    if !config.connections.contains_key(&id) {
        let names: Vec<&str> = config.connections.keys().map(ConnectionId::as_str).collect();
        bail!("unknown scope {name:?} (use unified or one of: {})", names.join(", "));
    }
    Ok(Scope::Connection(id))
}

/// The metrics table of the unified scope over a store (`demo` prints it).
pub fn metrics_text(store: &Store, config: &Config) -> anyhow::Result<String> {
    Ok(metrics::render_table(&metrics::scan::report(store, &config.metrics, Scope::Unified, None, None)?))
}

/// `crmsync metrics`.
pub async fn metrics(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    if args.explain {
        print(metrics::explain());
        return Ok(ExitCode::SUCCESS);
    }
    let config = load_config(&args.config)?;
    let (since, until) = metrics::parse_window(args.since.as_deref(), args.until.as_deref(), ("--since", "--until"))
        .map_err(anyhow::Error::msg)?;
    let scope = scope(&config, &args.scope)?;
    let backend = Backend::open(&config, &args.client)?;
    let report: MetricsReport = backend
        .run(async |backend| match backend {
            Backend::Local { store, config, .. } => {
                let (store, config) = (store.clone(), config.metrics.clone());
                Ok(tokio::task::spawn_blocking(move || metrics::scan::report(&store, &config, scope, since, until))
                    .await
                    .context("metrics task failed")??)
            }
            Backend::Remote(client) => Ok(client.metrics(&scope.label(), since, until).await?),
        })
        .await?;
    if args.json {
        print(&json(&report)?);
    } else {
        print(&metrics::render_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn selection(ids: &[String]) -> anyhow::Result<DeadLetterSelection> {
    if ids.is_empty() {
        bail!("give dead-letter ids, or `all`");
    }
    if ids.iter().any(|id| id == "all") {
        return Ok(DeadLetterSelection::All);
    }
    Ok(DeadLetterSelection::Ids(ids.to_vec()))
}

/// Every entry of a queue, page by page.
async fn all_pages<T, F>(mut page: F) -> anyhow::Result<Vec<T>>
where
    F: AsyncFnMut(Option<String>) -> anyhow::Result<QueuePage<T>>,
{
    let (mut entries, mut after) = (Vec::new(), None);
    loop {
        let next = page(after.take()).await?;
        entries.extend(next.entries);
        match next.next {
            Some(cursor) => after = Some(cursor),
            None => return Ok(entries),
        }
    }
}

async fn list_dead_letters(backend: &Backend) -> anyhow::Result<Vec<DeadLetter>> {
    all_pages(async |after: Option<String>| match backend {
        Backend::Local { .. } => {
            backend.read(move |store| queries::dead_letters(store, after.as_deref(), Some(queries::MAX_LIMIT))).await
        }
        Backend::Remote(client) => Ok(client.dead_letters(after.as_deref(), queries::MAX_LIMIT).await?),
    })
    .await
}

/// The text of an action's outcome (the same whichever back end did it).
fn describe(outcome: &OperatorOutcome) -> String {
    let queued = |connections: &[ConnectionId]| {
        if connections.is_empty() {
            "not queued anywhere (nothing changed or no route)".to_owned()
        } else {
            format!("queued for {}", connections.iter().map(ConnectionId::as_str).collect::<Vec<_>>().join(", "))
        }
    };
    match outcome {
        OperatorOutcome::Order { record, version, queued: to } => {
            format!("order {} ({}) version {version}; {}\n", number(record), record.id, queued(to))
        }
        OperatorOutcome::ConflictResolved { conflict, queued: to } => {
            format!("resolved {}; the value is {}\n", conflict.id, queued(to))
        }
        OperatorOutcome::DeadLettersRetried { requeued, reapplied } => format!(
            "retried {} dead letters: {requeued} pushes queued again (they go out with the next push), {reapplied} \
             pulled changes applied again\n",
            requeued + reapplied
        ),
        OperatorOutcome::DeadLettersDropped { dropped } => format!("dropped {dropped} dead letters\n"),
        OperatorOutcome::Merged { record, absorbed, queued: to } => format!(
            "merged {absorbed} into {}: {} copies ({}); {}\n",
            record.id,
            record.links.len(),
            record.links.iter().map(|link| link.connection.as_str()).collect::<Vec<_>>().join(", "),
            queued(to)
        ),
        OperatorOutcome::Split { remaining, detached } => {
            let connection = detached.links.first().map_or("?", |link| link.connection.as_str());
            format!("split the {connection} copy of {remaining} into new record {}\n", detached.id)
        }
    }
}

/// `crmsync dlq list|retry|drop`.
pub async fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let backend = Backend::open(&config, &args.client)?;
    let text = backend
        .run(async |backend| match &args.action {
            DlqAction::List { json: as_json } => {
                let letters = list_dead_letters(backend).await?;
                if *as_json {
                    return json(&letters);
                }
                if letters.is_empty() {
                    return Ok("the dead-letter queue is empty\n".to_owned());
                }
                Ok(letters
                    .iter()
                    .map(|letter| {
                        format!(
                            "{}  {}  {}  {}  {}\n",
                            letter.id, letter.at, letter.connection, letter.entity, letter.reason
                        )
                    })
                    .collect())
            }
            DlqAction::Retry { ids } | DlqAction::Drop { ids } => {
                let selection = selection(ids)?;
                let retry = matches!(args.action, DlqAction::Retry { .. });
                let outcome = match backend {
                    Backend::Local { .. } => {
                        backend
                            .operate(if retry {
                                OperatorAction::RetryDeadLetters(selection)
                            } else {
                                OperatorAction::DropDeadLetters(selection)
                            })
                            .await?
                    }
                    Backend::Remote(client) => {
                        let ids = match &selection {
                            DeadLetterSelection::All => None,
                            DeadLetterSelection::Ids(ids) => Some(ids.as_slice()),
                        };
                        client.dead_letter_action(if retry { "retry" } else { "drop" }, ids).await?
                    }
                };
                Ok(describe(&outcome))
            }
        })
        .await?;
    print(&text);
    Ok(ExitCode::SUCCESS)
}

fn conflict_line(conflict: &ConflictEntry) -> String {
    format!(
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
    )
}

/// `crmsync conflicts list|resolve`.
pub async fn conflicts(args: ConflictsArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let backend = Backend::open(&config, &args.client)?;
    let text = backend
        .run(async |backend| match &args.action {
            ConflictsAction::List { all, json: as_json } => {
                let all = *all;
                let conflicts = all_pages(async |after: Option<String>| match backend {
                    Backend::Local { .. } => {
                        backend
                            .read(move |store| {
                                queries::conflicts(store, all, after.as_deref(), Some(queries::MAX_LIMIT))
                            })
                            .await
                    }
                    Backend::Remote(client) => Ok(client.conflicts(all, after.as_deref(), queries::MAX_LIMIT).await?),
                })
                .await?;
                if *as_json {
                    return json(&conflicts);
                }
                if conflicts.is_empty() {
                    return Ok("no conflicts\n".to_owned());
                }
                Ok(conflicts.iter().map(conflict_line).collect())
            }
            ConflictsAction::Resolve { id, take } => {
                let take = match take {
                    ConflictSide::Current => Side::Current,
                    ConflictSide::Incoming => Side::Incoming,
                };
                let outcome = match backend {
                    Backend::Local { .. } => {
                        backend.operate(OperatorAction::ResolveConflict { id: id.clone(), take }).await?
                    }
                    Backend::Remote(client) => client.resolve(id, take).await?,
                };
                Ok(describe(&outcome))
            }
        })
        .await?;
    print(&text);
    Ok(ExitCode::SUCCESS)
}

fn canonical_id(text: &str) -> anyhow::Result<CanonicalId> {
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a canonical id (a UUID, as `crmsync export` shows)"))
}

/// `crmsync identity merge|split`.
pub async fn identity(args: IdentityArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let backend = Backend::open(&config, &args.client)?;
    let outcome = backend
        .run(async |backend| match (&args.action, backend) {
            (IdentityAction::Merge { keep, other }, Backend::Local { .. }) => {
                let action = OperatorAction::MergeRecords { keep: canonical_id(keep)?, other: canonical_id(other)? };
                backend.operate(action).await
            }
            (IdentityAction::Merge { keep, other }, Backend::Remote(client)) => {
                canonical_id(keep)?;
                canonical_id(other)?;
                Ok(client.merge(keep, other).await?)
            }
            (IdentityAction::Split { id, connection }, Backend::Local { .. }) => {
                let action =
                    OperatorAction::SplitRecord { id: canonical_id(id)?, connection: ConnectionId::new(connection) };
                backend.operate(action).await
            }
            (IdentityAction::Split { id, connection }, Backend::Remote(client)) => {
                canonical_id(id)?;
                Ok(client.split(id, connection).await?)
            }
        })
        .await?;
    print(&describe(&outcome));
    Ok(ExitCode::SUCCESS)
}

fn number(record: &Record) -> String {
    match &record.data {
        EntityData::Order(order) => order.number.clone().unwrap_or_else(|| "(no number)".to_owned()),
        _ => record.id.to_string(),
    }
}

/// One line of `orders list`.
fn order_line(order: &Versioned) -> String {
    let EntityData::Order(data) = &order.record.data else { return String::new() };
    format!(
        "{}  {:<22} {:<10} {:<9} {:>12} {:<3}  {}  {}{}\n",
        order.record.id,
        data.number.as_deref().unwrap_or("-"),
        data.status.map_or("-", |status| status.as_str()),
        data.channel.map_or("-", |channel| channel.as_str()),
        data.total_amount.map(|total| total.to_string()).unwrap_or_default(),
        data.currency.as_ref().map_or("", |currency| currency.as_str()),
        data.order_date.map(|date| date.to_string()).unwrap_or_else(|| "-".to_owned()),
        data.account.as_ref().and_then(|account| account.canonical).map(|id| id.to_string()).unwrap_or_default(),
        if order.record.is_deleted() { "  (deleted)" } else { "" },
    )
}

/// The details of one order (`orders get`, and after a change).
fn order_details(order: &Versioned) -> String {
    let record = &order.record;
    let EntityData::Order(data) = &record.data else { return String::new() };
    let mut out = format!("order {} ({})\n", data.number.as_deref().unwrap_or("-"), record.id);
    out.push_str(&format!("  version   {}\n", order.version));
    out.push_str(&format!("  status    {}\n", data.status.map_or("-", |status| status.as_str())));
    out.push_str(&format!("  channel   {}\n", data.channel.map_or("-", |channel| channel.as_str())));
    out.push_str(&format!(
        "  customer  {}\n",
        data.account.as_ref().and_then(|account| account.canonical).map(|id| id.to_string()).unwrap_or_default()
    ));
    out.push_str(&format!("  date      {}\n", data.order_date.map(|date| date.to_string()).unwrap_or_default()));
    out.push_str(&format!(
        "  total     {} {}\n",
        data.total_amount.map(|total| total.to_string()).unwrap_or_default(),
        data.currency.as_ref().map_or("", |currency| currency.as_str())
    ));
    for line in data.lines.iter().flatten() {
        out.push_str(&format!(
            "  line      {} x {}{} @ {} = {}\n",
            line.quantity,
            line.product.as_deref().unwrap_or("-"),
            line.sku.as_deref().map(|sku| format!(" [{sku}]")).unwrap_or_default(),
            line.unit_price,
            line.line_total
        ));
    }
    if let Some(details) = &data.details {
        out.push_str(&format!("  details   {details}\n"));
    }
    for link in &record.links {
        out.push_str(&format!("  in {:<14} {} {}\n", link.connection.as_str(), link.object, link.external_id));
    }
    if let Some(at) = record.deleted_at {
        out.push_str(&format!("  deleted   {at}\n"));
    }
    out
}

/// Parses `PRODUCT:QUANTITY:UNIT_PRICE[:SKU]`.
fn parse_line(text: &str) -> anyhow::Result<LineInput> {
    let parts: Vec<&str> = text.split(':').collect();
    let (product, quantity, unit_price, sku) = match parts.as_slice() {
        [product, quantity, unit_price] => (product, quantity, unit_price, None),
        [product, quantity, unit_price, sku] => (product, quantity, unit_price, Some(sku)),
        _ => bail!("--line {text:?}: expected PRODUCT:QUANTITY:UNIT_PRICE or PRODUCT:QUANTITY:UNIT_PRICE:SKU"),
    };
    Ok(LineInput {
        product: Some((*product).to_owned()),
        sku: sku.map(|sku| (*sku).to_owned()),
        quantity: Some(serde_json::Value::String((*quantity).to_owned())),
        unit_price: Some(serde_json::Value::String((*unit_price).to_owned())),
    })
}

fn order_change(outcome: OperatorOutcome) -> anyhow::Result<OrderChange> {
    match outcome {
        OperatorOutcome::Order { record, version, queued } => {
            Ok(OrderChange { order: Versioned { record: *record, version }, queued })
        }
        other => bail!("internal: an order action answered {other:?}"),
    }
}

fn print_change(change: &OrderChange, verb: &str, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        print(&json(change)?);
        return Ok(());
    }
    let queued = if change.queued.is_empty() {
        "not queued anywhere (nothing changed or no route)".to_owned()
    } else {
        format!("queued for {}", change.queued.iter().map(ConnectionId::as_str).collect::<Vec<_>>().join(", "))
    };
    print(&format!("{verb} order {} ({}); {queued}\n", number(&change.order.record), change.order.record.id));
    print(&order_details(&change.order));
    Ok(())
}

/// `crmsync orders list|get|create|set-status|delete`.
pub async fn orders(args: OrdersArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let backend = Backend::open(&config, &args.client)?;
    backend
        .run(async |backend| match &args.action {
            OrdersAction::List {
                status,
                channel,
                account,
                connection,
                since,
                until,
                limit,
                cursor,
                newest_first,
                include_deleted,
                json: as_json,
            } => {
                let query = ListQuery {
                    limit: Some(*limit),
                    after: None,
                    cursor: cursor.clone(),
                    include_deleted: *include_deleted,
                    newest_first: *newest_first,
                    status: status.clone(),
                    channel: channel.clone(),
                    account: account.clone(),
                    connection: connection.clone(),
                    since: since.clone(),
                    until: until.clone(),
                };
                let page: RecordPage = match backend {
                    Backend::Local { .. } => {
                        backend.read(move |store| queries::record_page(store, Entity::Order, &query)).await?
                    }
                    Backend::Remote(client) => client.record_page(Entity::Order, &query).await?,
                };
                if *as_json {
                    print(&json(&page)?);
                } else if page.records.is_empty() {
                    print("no orders\n");
                } else {
                    print(&page.records.iter().map(order_line).collect::<String>());
                    if let Some(next) = &page.next {
                        print(&format!("more: crmsync orders list --cursor {next}\n"));
                    }
                }
                Ok(())
            }
            OrdersAction::Get { id, json: as_json } => {
                let order = match backend {
                    Backend::Local { .. } => {
                        let id = id.clone();
                        backend.read(move |store| queries::order(store, &id)).await?
                    }
                    Backend::Remote(client) => client.order(canonical_id(id)?.to_string().as_str()).await?,
                };
                print(&if *as_json { json(&order)? } else { order_details(&order) });
                Ok(())
            }
            OrdersAction::Create {
                account,
                account_connection,
                channel,
                currency,
                lines,
                number,
                status,
                order_date,
                opportunity,
                details,
                json: as_json,
            } => {
                let input = OrderInput {
                    account: Some(account.clone()),
                    account_connection: account_connection.clone(),
                    channel: Some(channel.clone()),
                    currency: Some(currency.clone()),
                    lines: Some(lines.iter().map(|line| parse_line(line)).collect::<anyhow::Result<_>>()?),
                    number: number.clone(),
                    status: status.clone(),
                    order_date: order_date.clone(),
                    opportunity: opportunity.clone(),
                    details: details.clone(),
                };
                let change = match backend {
                    Backend::Local { .. } => order_change(backend.operate(OperatorAction::CreateOrder(input)).await?)?,
                    Backend::Remote(client) => client.create_order(&input).await?,
                };
                print_change(&change, "created", *as_json)
            }
            OrdersAction::SetStatus { id, status, if_version, json: as_json } => {
                let id = canonical_id(id)?;
                let patch = OrderPatch { status: Some(status.clone()), ..OrderPatch::default() };
                let change = match backend {
                    Backend::Local { .. } => order_change(
                        backend
                            .operate(OperatorAction::UpdateOrder { id, if_version: if_version.clone(), patch })
                            .await?,
                    )?,
                    Backend::Remote(client) => client.update_order(id, &patch, if_version.as_deref()).await?,
                };
                print_change(&change, "changed", *as_json)
            }
            OrdersAction::Delete { id, if_version, json: as_json } => {
                let id = canonical_id(id)?;
                let change = match backend {
                    Backend::Local { .. } => order_change(
                        backend.operate(OperatorAction::DeleteOrder { id, if_version: if_version.clone() }).await?,
                    )?,
                    Backend::Remote(client) => client.delete_order(id, if_version.as_deref()).await?,
                };
                print_change(&change, "deleted", *as_json)
            }
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
