//! Pushing records to Dataverse as its documented write rules allow, decided before any write is
//! sent:
//!
//! - **Required columns.** A create must carry every column the table's definition marks
//!   `SystemRequired` or `ApplicationRequired` (and valid for create, and not filled by the platform:
//!   the key, owner, state, status, the order number and the transaction currency, which defaults to
//!   the org's base currency). A value comes from the canonical record or from the connection's
//!   `create_defaults`; a record that has neither is rejected here, naming the column, and never sent.
//! - **Writable columns.** A create sends only columns valid for create, an update only columns valid
//!   for update (a salesorder's `transactioncurrencyid` is not: ce/developer/entities/salesorder.md).
//! - **States.** One `$batch` of GETs reads the current state of the opportunities and orders being
//!   pushed (and which lines the orders have). Won and lost opportunities are read-only and are never
//!   PATCHed; `WinOpportunity` / `LoseOpportunity` is sent only to an open one (closing a closed one is
//!   `0x80040515` OpportunityIsAlreadyClosed). Orders are created active (`statecode` is not valid
//!   on create), their fields and lines are written only while they are active ("Only active orders
//!   can be edited"), and then they move to the state their status maps to, each step once and
//!   through the documented message: SetState (`PATCH statecode/statuscode`) to Submitted,
//!   `FulfillSalesOrder` to Fulfilled, SetState from Fulfilled to Invoiced, `CancelSalesOrder` to
//!   Canceled. A move Dataverse has no message for (back to Active, out of Canceled or Invoiced) is
//!   rejected with the reason.
//! - **Lines.** An order's lines are written by their alternate key `{canonical}:{n}`: created with
//!   `If-None-Match: *`, updated (without the create-only `isproductoverridden`) with `If-Match: *`,
//!   and lines the order no longer has are deleted.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::mapping::{self, Close, OrderState, RowWrite};
use super::wire::{self, AttributeDefinition, BatchRequest, BatchResponse};
use super::{Described, Dynamics365Connector, error_of, main_id, part_failure};
use crate::canonical::{Entity, ExternalId};
use crate::connector::{Outgoing, OutgoingOp, PushOutcome};
use crate::error::ConnectorError;
use crate::row::RowText;

/// Columns Dataverse fills on create although their level is required (crm-apis.md §3.7; the
/// salesorder and opportunity table references).
const FILLED_BY_PLATFORM: &[&str] = &["ordernumber", "transactioncurrencyid"];

/// Order-line ids per `In(...)` filter when listing the lines of pushed orders.
const LINES_PER_LISTING: usize = 100;

/// What Dataverse has for a pushed record.
#[derive(Debug, Clone)]
pub(super) enum Found {
    /// No such row.
    Absent,
    /// The row, its state and version, and (orders) its lines as `(line id, alternate key)`.
    Present { id: String, state: i64, etag: Option<String>, lines: Vec<(String, Option<String>)> },
    /// The read failed for this record.
    Unknown(String),
}

/// The definitions a record's plan checks its writes against.
#[derive(Clone, Copy)]
pub(super) struct Tables<'a> {
    /// The record's table.
    pub(super) described: &'a Described,
    /// The order lines table (orders only).
    pub(super) lines: Option<&'a Described>,
}

/// What one request of a record's plan does.
#[derive(Debug, Clone)]
enum Role {
    Main,
    Close,
    Line(usize),
    RemoveLine,
    State(&'static str),
    Delete,
}

/// One record's requests, in the order Dataverse must apply them.
pub(super) struct Plan {
    pub(super) index: usize,
    parts: Vec<(Role, BatchRequest)>,
    /// The record's id when known before the writes.
    known_id: Option<String>,
    /// The version to report when nothing after the main write changed the row.
    known_etag: Option<String>,
}

impl Plan {
    pub(super) fn requests(&self) -> impl Iterator<Item = &BatchRequest> {
        self.parts.iter().map(|(_, request)| request)
    }

    pub(super) fn len(&self) -> usize {
        self.parts.len()
    }

    /// The outcome, from the responses to this plan's requests (in order).
    pub(super) fn outcome(&self, responses: &[BatchResponse]) -> PushOutcome {
        let mut main: Option<&BatchResponse> = None;
        let mut changed_after_main = false;
        for ((role, _), response) in self.parts.iter().zip(responses) {
            let ok = (200..300).contains(&response.status);
            if !ok {
                let failure = part_failure(response.status, response);
                let (code, message) = error_of(response);
                return match role {
                    Role::Delete if response.status == 404 => PushOutcome::Deleted,
                    Role::Delete | Role::Main => failure,
                    _ if matches!(failure, PushOutcome::Retry { .. }) => failure,
                    Role::Close => {
                        PushOutcome::Rejected { code, message: format!("closing the opportunity: {message}") }
                    }
                    Role::Line(number) => {
                        PushOutcome::Rejected { code, message: format!("order line {number}: {message}") }
                    }
                    Role::RemoveLine => {
                        PushOutcome::Rejected { code, message: format!("removing an order line: {message}") }
                    }
                    Role::State(step) => PushOutcome::Rejected { code, message: format!("{step}: {message}") },
                };
            }
            match role {
                Role::Delete => return PushOutcome::Deleted,
                Role::Main => main = Some(response),
                Role::Close | Role::State(_) | Role::Line(_) | Role::RemoveLine => changed_after_main = true,
            }
        }
        let external_id = main.and_then(main_id).or_else(|| self.known_id.clone());
        let Some(external_id) = external_id else {
            return PushOutcome::Retry { message: "the write succeeded without the record's id".into() };
        };
        let version = if changed_after_main {
            // Later requests changed the row again: its version is unknown until the next read.
            None
        } else if let Some(main) = main {
            let body: Option<Map<String, Value>> = serde_json::from_str(&main.body).ok();
            body.as_ref()
                .and_then(|body| body.get("@odata.etag").and_then(Value::as_str).map(str::to_owned))
                .or_else(|| main.header("etag").map(str::to_owned))
        } else {
            self.known_etag.clone()
        };
        PushOutcome::Upserted {
            external_id: ExternalId::new(external_id),
            created: main.is_some_and(|main| main.status == 201),
            version,
        }
    }
}

/// The column a write body key sets: `name`, or `customerid_account@odata.bind` → `customerid`.
fn written<'a>(described: &'a Described, key: &str) -> Option<&'a AttributeDefinition> {
    match key.strip_suffix("@odata.bind") {
        None => described.attributes.get(key),
        Some(navigation) => {
            described.attributes.get(navigation).filter(|attribute| attribute.is_lookup()).or_else(|| {
                let (logical, _target) = navigation.rsplit_once('_')?;
                described.attributes.get(logical).filter(|attribute| attribute.is_lookup())
            })
        }
    }
}

/// Whether a body sets a column.
fn sets(body: &Map<String, Value>, attribute: &AttributeDefinition) -> bool {
    let logical = attribute.logical_name.as_str();
    body.iter().any(|(key, value)| {
        !value.is_null()
            && if attribute.is_lookup() {
                key.strip_suffix("@odata.bind").is_some_and(|navigation| {
                    navigation == logical || navigation.strip_prefix(logical).is_some_and(|rest| rest.starts_with('_'))
                })
            } else {
                key == logical
            }
    })
}

/// The columns a create must carry.
pub(super) fn required_on_create(described: &Described) -> impl Iterator<Item = &AttributeDefinition> {
    described.attributes.values().filter(|attribute| {
        attribute.is_required()
            && attribute.is_valid_for_create.unwrap_or(true)
            && attribute.attribute_of.is_none()
            && !attribute.is_primary_id.unwrap_or(false)
            && !matches!(
                attribute.attribute_type.as_deref(),
                Some("Owner" | "State" | "Status" | "Uniqueidentifier" | "EntityName" | "Virtual")
            )
            && !FILLED_BY_PLATFORM.contains(&attribute.logical_name.as_str())
    })
}

/// Which canonical field fills a column, for the rejection message.
fn canonical_source(table: &str, column: &str) -> Option<&'static str> {
    Some(match (table, column) {
        (_, "name") if table == "salesorder" => "number",
        (_, "name") => "name",
        ("lead", "lastname") => "name",
        (_, "customerid") => "account",
        ("salesorderdetail", "quantity") => "line quantity",
        _ => return None,
    })
}

/// Drops what the operation may not set and, for a create, adds the configured defaults and checks
/// that every required column is there.
fn prepare(
    table: &str,
    body: &mut Map<String, Value>,
    described: &Described,
    creating: bool,
    defaults: Option<&BTreeMap<String, Value>>,
    connection: &str,
) -> Result<(), PushOutcome> {
    body.retain(|key, _| {
        written(described, key).is_none_or(|attribute| {
            if creating {
                attribute.is_valid_for_create.unwrap_or(true)
            } else {
                attribute.is_valid_for_update.unwrap_or(true)
            }
        })
    });
    if !creating {
        return Ok(());
    }
    let mut missing = Vec::new();
    for attribute in required_on_create(described) {
        if sets(body, attribute) {
            continue;
        }
        match defaults.and_then(|defaults| defaults.get(&attribute.logical_name)) {
            Some(value) if attribute.is_lookup() => {
                body.insert(format!("{}@odata.bind", attribute.logical_name), value.clone());
            }
            Some(value) => {
                body.insert(attribute.logical_name.clone(), value.clone());
            }
            None => missing.push(attribute),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = missing
        .iter()
        .map(|attribute| {
            let source = canonical_source(table, &attribute.logical_name)
                .map(|field| format!(", filled from the canonical {field}, which is empty"))
                .unwrap_or_default();
            format!("{table}.{} ({}{source})", attribute.logical_name, attribute.level())
        })
        .collect();
    Err(PushOutcome::Rejected {
        code: "RequiredFieldMissing".into(),
        message: format!(
            "Dataverse requires {} on create; not sent. Give the record a value, or set connections.{connection}.create_defaults.{table}.{}",
            named.join(", "),
            missing[0].logical_name
        ),
    })
}

/// How a salesorder gets from one state to another, one documented message per step.
fn order_steps(from: OrderState, to: OrderState) -> Result<Vec<OrderState>, String> {
    use OrderState as S;
    let name = |state: OrderState| match state.0 {
        0 => "Active",
        1 => "Submitted",
        2 => "Canceled",
        3 => "Fulfilled",
        4 => "Invoiced",
        _ => "unknown",
    };
    Ok(match (from.0, to.0) {
        (a, b) if a == b => Vec::new(),
        (0, 1) => vec![S::SUBMITTED],
        (0 | 1, 3) => vec![S::FULFILLED],
        (0 | 1, 4) => vec![S::FULFILLED, S::INVOICED],
        (0 | 1, 2) => vec![S::CANCELED],
        (3, 4) => vec![S::INVOICED],
        _ => {
            return Err(format!(
                "the order is {} in Dataverse and Dataverse has no message that moves an order from {} to {}; not sent",
                name(from),
                name(from),
                name(to)
            ));
        }
    })
}

impl Dynamics365Connector {
    /// Reads what Dataverse has for the opportunities or orders about to be pushed: one `$batch` of
    /// GETs (by id, or by the alternate key for records crmsync has not seen there), plus, for
    /// orders, the lines of those that exist.
    pub(super) async fn read_existing(
        &self,
        entity: Entity,
        batch: &[Outgoing],
        described: &Described,
    ) -> Result<Vec<Found>, ConnectorError> {
        let table = wire::table(entity);
        let api = self.api_path();
        let key = &self.config.alternate_key;
        let has_key = described.columns.contains(key);
        let mut found = vec![Found::Absent; batch.len()];
        let mut reads: Vec<(usize, BatchRequest)> = Vec::new();
        for (index, outgoing) in batch.iter().enumerate() {
            if !matches!(outgoing.op, OutgoingOp::Upsert { .. }) {
                continue;
            }
            let address = match &outgoing.external_id {
                Some(id) => id.as_str().to_owned(),
                None if has_key => format!("{key}='{}'", outgoing.canonical_id),
                None => continue,
            };
            reads.push((
                index,
                BatchRequest {
                    method: "GET".into(),
                    path: format!("{api}/{}({address})?$select={},statecode", table.set, table.key),
                    headers: Vec::new(),
                    body: None,
                },
            ));
        }
        for chunk in reads.chunks(wire::BATCH_LIMIT) {
            let requests: Vec<BatchRequest> = chunk.iter().map(|(_, request)| request.clone()).collect();
            let responses = self.send_batch(&requests).await?;
            for ((index, _), response) in chunk.iter().zip(responses) {
                found[*index] = match response.status {
                    200 => {
                        let row: Map<String, Value> = serde_json::from_str(&response.body)
                            .map_err(|error| ConnectorError::decode(format!("{} state", table.set), error))?;
                        match row.get(table.key).and_then(Value::as_str) {
                            Some(id) => Found::Present {
                                id: id.to_owned(),
                                state: row.get("statecode").and_then(Value::as_i64).unwrap_or(0),
                                etag: row.get("@odata.etag").and_then(Value::as_str).map(str::to_owned),
                                lines: Vec::new(),
                            },
                            None => Found::Unknown(format!("{} state read without the record's id", table.set)),
                        }
                    }
                    404 => Found::Absent,
                    _ => Found::Unknown(error_of(&response).1),
                };
            }
        }
        if entity == Entity::Order {
            self.read_existing_lines(&mut found).await?;
        }
        Ok(found)
    }

    /// Lists the lines of the orders found, `LINES_PER_LISTING` orders per GET, in one `$batch`.
    async fn read_existing_lines(&self, found: &mut [Found]) -> Result<(), ConnectorError> {
        let key = self.config.alternate_key.clone();
        let orders: Vec<String> = found
            .iter()
            .filter_map(|found| match found {
                Found::Present { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        if orders.is_empty() {
            return Ok(());
        }
        let api = self.api_path();
        let select = format!("salesorderdetailid,_salesorderid_value,{key}");
        let requests: Vec<BatchRequest> = orders
            .chunks(LINES_PER_LISTING)
            .map(|chunk| {
                let values: Vec<String> = chunk.iter().map(|id| format!("'{id}'")).collect();
                let filter = format!(
                    "Microsoft.Dynamics.CRM.In(PropertyName='salesorderid',PropertyValues=[{}])",
                    values.join(",")
                );
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("$select", &select)
                    .append_pair("$filter", &filter)
                    .finish();
                BatchRequest {
                    method: "GET".into(),
                    path: format!("{api}/{}?{query}", wire::LINES_SET),
                    headers: vec![("Prefer".into(), self.page_size())],
                    body: None,
                }
            })
            .collect();
        let mut lines: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
        let mut add = |rows: &[RowText]| -> Result<(), ConnectorError> {
            for text in rows {
                let row = wire::read_row(text, wire::LINES_SET)?;
                let (Some(order), Some(line)) = (row.text("_salesorderid_value"), row.text("salesorderdetailid"))
                else {
                    continue;
                };
                let line_key = row.text(&key).map(Cow::into_owned);
                lines.entry(order.into_owned()).or_default().push((line.into_owned(), line_key));
            }
            Ok(())
        };
        for chunk in requests.chunks(wire::BATCH_LIMIT) {
            for response in self.send_batch(chunk).await? {
                if response.status != 200 {
                    let (code, message) = error_of(&response);
                    return Err(ConnectorError::Rejected { status: response.status, code, message });
                }
                let page = wire::EntityCollection::parse(Bytes::from(response.body))
                    .map_err(|error| ConnectorError::decode("order lines of pushed orders", error))?;
                add(&page.value)?;
                // An order with more than a page of lines: follow the link.
                let mut next = page.next_link;
                while let Some(link) = next.take() {
                    let page = self.get_page("order lines of pushed orders", &link, false).await?;
                    add(&page.value)?;
                    next = page.next_link;
                }
            }
        }
        for entry in found.iter_mut() {
            if let Found::Present { id, lines: existing, .. } = entry {
                *existing = lines.remove(id.as_str()).unwrap_or_default();
            }
        }
        Ok(())
    }

    /// Plans one record's requests, or decides its outcome without sending anything.
    pub(super) fn plan(
        &self,
        entity: Entity,
        index: usize,
        outgoing: &Outgoing,
        write: Option<RowWrite>,
        found: &Found,
        tables: Tables<'_>,
    ) -> Result<Plan, PushOutcome> {
        let Tables { described, lines: lines_described } = tables;
        let table = wire::table(entity);
        let api = self.api_path();
        let key = self.config.alternate_key.clone();
        let connection = self.settings.id.to_string();
        let Some(mut write) = write else {
            // A delete of a copy Dataverse has.
            let id = outgoing.external_id.as_ref().map(ExternalId::as_str).unwrap_or_default();
            return Ok(Plan {
                index,
                parts: vec![(
                    Role::Delete,
                    BatchRequest {
                        method: "DELETE".into(),
                        path: format!("{api}/{}({id})", table.set),
                        headers: Vec::new(),
                        body: None,
                    },
                )],
                known_id: Some(id.to_owned()),
                known_etag: None,
            });
        };
        let (existing_id, state, etag, existing_lines) = match found {
            Found::Unknown(message) => return Err(PushOutcome::Retry { message: message.clone() }),
            Found::Absent
                if outgoing.external_id.is_some() && matches!(entity, Entity::Opportunity | Entity::Order) =>
            {
                return Err(PushOutcome::Rejected {
                    code: "ObjectDoesNotExist".into(),
                    message: format!(
                        "{} {} no longer exists in Dataverse (deleted there); the next pull records the deletion",
                        table.logical,
                        outgoing.external_id.as_ref().map(ExternalId::as_str).unwrap_or_default()
                    ),
                });
            }
            Found::Absent => (outgoing.external_id.as_ref().map(|id| id.as_str().to_owned()), None, None, Vec::new()),
            Found::Present { id, state, etag, lines } => (Some(id.clone()), Some(*state), etag.clone(), lines.clone()),
        };
        // Accounts and leads are not pre-read: an external id means the row exists.
        let creating = existing_id.is_none();
        let address = match &existing_id {
            Some(id) => id.clone(),
            None => format!("{key}='{}'", outgoing.canonical_id),
        };
        let editable = state.is_none_or(|state| state == 0);
        let mut parts: Vec<(Role, BatchRequest)> = Vec::new();
        if editable {
            if !creating {
                // Addressed by id: the alternate key may be (re)written in the body.
                write.body.insert(key.clone(), json!(outgoing.canonical_id.to_string()));
            }
            prepare(
                table.logical,
                &mut write.body,
                described,
                creating,
                self.config.create_defaults.get(table.logical),
                &connection,
            )?;
            let mut headers = vec![("Prefer".to_owned(), "return=representation".to_owned())];
            if !creating {
                let condition = outgoing.expected_version.clone().unwrap_or_else(|| "*".into());
                headers.push(("If-Match".into(), condition));
            }
            parts.push((
                Role::Main,
                BatchRequest {
                    method: "PATCH".into(),
                    path: format!("{api}/{}({address})?$select={}", table.set, table.key),
                    headers,
                    body: Some(Value::Object(write.body)),
                },
            ));
        }
        match entity {
            Entity::Opportunity => {
                let wanted = write.close.map(|close| if close == Close::Win { 1 } else { 2 });
                match (state, wanted) {
                    (Some(current), wanted) if current != 0 && wanted != Some(current) => {
                        return Err(PushOutcome::Rejected {
                            code: "CannotUpdateBecauseItIsReadOnly".into(),
                            message: format!(
                                "the opportunity is {} in Dataverse; won and lost opportunities are read-only and crmsync does not reopen them; not sent",
                                if current == 1 { "won" } else { "lost" }
                            ),
                        });
                    }
                    // Already closed the way the record wants: nothing to send.
                    (Some(current), _) if current != 0 => {}
                    (_, Some(closed)) => {
                        let target = format!("/opportunities({address})");
                        let (action, status, subject) = if closed == 1 {
                            ("WinOpportunity", 3, "Won (crmsync)")
                        } else {
                            ("LoseOpportunity", 4, "Lost (crmsync)")
                        };
                        parts.push((
                            Role::Close,
                            BatchRequest {
                                method: "POST".into(),
                                path: format!("{api}/{action}"),
                                headers: Vec::new(),
                                body: Some(json!({"Status": status, "OpportunityClose": {"subject": subject, "opportunityid@odata.bind": target}})),
                            },
                        ));
                    }
                    _ => {}
                }
            }
            Entity::Order => {
                let current = OrderState(state.unwrap_or(0));
                if editable && let Some(lines) = write.lines.take() {
                    let Some(lines_described) = lines_described else {
                        return Err(PushOutcome::Retry { message: "order lines table not described".into() });
                    };
                    let wanted: HashSet<String> =
                        (0..lines.len()).map(|number| format!("{}:{number}", outgoing.canonical_id)).collect();
                    for (line_id, line_key) in &existing_lines {
                        if line_key.as_ref().is_none_or(|line_key| !wanted.contains(line_key)) {
                            parts.push((
                                Role::RemoveLine,
                                BatchRequest {
                                    method: "DELETE".into(),
                                    path: format!("{api}/{}({line_id})", wire::LINES_SET),
                                    headers: Vec::new(),
                                    body: None,
                                },
                            ));
                        }
                    }
                    let present: HashSet<&str> =
                        existing_lines.iter().filter_map(|(_, line_key)| line_key.as_deref()).collect();
                    for (number, mut line) in lines.into_iter().enumerate() {
                        let line_key = format!("{}:{number}", outgoing.canonical_id);
                        let exists = present.contains(line_key.as_str());
                        if let Some(id) = &existing_id {
                            // The order exists: bind the line to it by id.
                            line.insert("salesorderid@odata.bind".into(), json!(format!("/salesorders({id})")));
                        }
                        prepare(
                            "salesorderdetail",
                            &mut line,
                            lines_described,
                            !exists,
                            self.config.create_defaults.get("salesorderdetail"),
                            &connection,
                        )?;
                        let condition = if exists { ("If-Match", "*") } else { ("If-None-Match", "*") };
                        parts.push((
                            Role::Line(number + 1),
                            BatchRequest {
                                method: "PATCH".into(),
                                path: format!("{api}/{}({key}='{line_key}')", wire::LINES_SET),
                                headers: vec![(condition.0.to_owned(), condition.1.to_owned())],
                                body: Some(Value::Object(line)),
                            },
                        ));
                    }
                }
                if let Some(target) = write.order_state {
                    let steps = order_steps(current, target)
                        .map_err(|message| PushOutcome::Rejected { code: "InvalidStateTransition".into(), message })?;
                    for step in steps {
                        parts.push(order_step(&api, &address, step));
                    }
                }
            }
            Entity::Account | Entity::Lead => {}
        }
        Ok(Plan { index, parts, known_id: existing_id, known_etag: etag })
    }
}

/// The request that moves an order to `step`.
fn order_step(api: &str, address: &str, step: OrderState) -> (Role, BatchRequest) {
    let close = |status: i64| {
        json!({
            "OrderClose": {
                "@odata.type": "Microsoft.Dynamics.CRM.orderclose",
                "subject": "crmsync",
                "salesorderid@odata.bind": format!("/salesorders({address})"),
            },
            "Status": status,
        })
    };
    let set_state = |what: &'static str| {
        (
            Role::State(what),
            BatchRequest {
                method: "PATCH".into(),
                path: format!("{api}/salesorders({address})"),
                headers: vec![("If-Match".into(), "*".into())],
                body: Some(json!({"statecode": step.0, "statuscode": step.default_status()})),
            },
        )
    };
    match step {
        OrderState::FULFILLED => (
            Role::State("fulfilling the order"),
            BatchRequest {
                method: "POST".into(),
                path: format!("{api}/salesorders/Microsoft.Dynamics.CRM.FulfillSalesOrder"),
                headers: Vec::new(),
                body: Some(close(step.default_status())),
            },
        ),
        OrderState::CANCELED => (
            Role::State("cancelling the order"),
            BatchRequest {
                method: "POST".into(),
                path: format!("{api}/CancelSalesOrder"),
                headers: Vec::new(),
                body: Some(close(step.default_status())),
            },
        ),
        OrderState::INVOICED => set_state("invoicing the order"),
        _ => set_state("submitting the order"),
    }
}

/// The planned requests of records, split into `$batch` requests without splitting a record.
pub(super) fn batches(plans: Vec<Plan>) -> Vec<(Vec<BatchRequest>, Vec<Plan>)> {
    let mut out: Vec<(Vec<BatchRequest>, Vec<Plan>)> = Vec::new();
    let mut requests: Vec<BatchRequest> = Vec::new();
    let mut group: Vec<Plan> = Vec::new();
    for plan in plans {
        if requests.len() + plan.len() > wire::BATCH_LIMIT && !requests.is_empty() {
            out.push((std::mem::take(&mut requests), std::mem::take(&mut group)));
        }
        requests.extend(plan.requests().cloned());
        group.push(plan);
    }
    if !requests.is_empty() {
        out.push((requests, group));
    }
    out
}

/// The responses of each plan, in the order `batches` laid them out.
pub(super) fn outcomes(plans: &[Plan], responses: &[BatchResponse]) -> Vec<(usize, PushOutcome)> {
    let mut at = 0;
    plans
        .iter()
        .map(|plan| {
            let outcome = plan.outcome(&responses[at..at + plan.len()]);
            at += plan.len();
            (plan.index, outcome)
        })
        .collect()
}

/// Builds the write of one outgoing record (none for a delete).
pub(super) fn write_of(
    outgoing: &Outgoing,
    context: &mapping::MapContext<'_>,
    denied: &std::collections::BTreeSet<String>,
    by_key: bool,
) -> Option<RowWrite> {
    match &outgoing.op {
        OutgoingOp::Upsert { data } => Some(mapping::to_row(outgoing.canonical_id, data, context, denied, by_key)),
        OutgoingOp::Delete => None,
    }
}
