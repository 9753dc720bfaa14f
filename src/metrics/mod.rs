//! Unified sales metrics (SPEC §4), computed in one pass over canonical records.
//!
//! Pure: no IO (the store scan is [`scan`]). Feed records to an [`Accumulator`] (from a store scan, in any order and in chunks),
//! then [`Accumulator::finish`]. Scope `unified` counts every canonical record once — a customer or an
//! order that three CRMs hold is one record with three links; scope `Connection(c)` counts the
//! records linked to `c`. Money is summed in the reporting currency through the FX table; amounts in a
//! currency without a rate are reported separately and never summed in. A ratio with a zero
//! denominator is "n/a" (`null`), never a division by zero.

pub mod scan;
#[cfg(test)]
mod tests;
pub mod view;

use view::DataView;
pub use view::{RecordView, SUMMARY_VERSION};

use std::collections::{BTreeMap, HashMap, HashSet};

use crmsync_connectors::canonical::{
    CanonicalId, Channel, ConnectionId, Currency, Entity, OrderStatus, Record, Stage, Timestamp,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Efficiency gauge name.
pub const KPI_EFFICIENCY: &str = "crmsync_kpi_efficiency";
/// Coverage gauge name.
pub const KPI_COVERAGE: &str = "crmsync_kpi_coverage";
/// Satisfaction gauge name.
pub const KPI_SATISFACTION: &str = "crmsync_kpi_satisfaction";
/// Average sales cycle gauge name.
pub const KPI_SALES_CYCLE: &str = "crmsync_kpi_avg_sales_cycle_days";
/// Win rate gauge name.
pub const KPI_WIN_RATE: &str = "crmsync_kpi_win_rate";
/// Funnel gauge name (label `stage`).
pub const KPI_FUNNEL: &str = "crmsync_kpi_funnel_reached";
/// Channel order count gauge name (label `channel`).
pub const KPI_CHANNEL_ORDERS: &str = "crmsync_kpi_channel_orders";
/// Sales amount gauge name.
pub const KPI_SALES_AMOUNT: &str = "crmsync_kpi_sales_amount";
/// Open pipeline value gauge name (label `stage`).
pub const KPI_PIPELINE_VALUE: &str = "crmsync_kpi_pipeline_value";
/// Every KPI gauge name.
pub const KPI_METRICS: &[&str] = &[
    KPI_EFFICIENCY,
    KPI_COVERAGE,
    KPI_SATISFACTION,
    KPI_SALES_CYCLE,
    KPI_WIN_RATE,
    KPI_FUNNEL,
    KPI_CHANNEL_ORDERS,
    KPI_SALES_AMOUNT,
    KPI_PIPELINE_VALUE,
];

/// The entities a report reads. Accounts are not scanned: customers are counted through the
/// account reference of orders (the canonical id, so one customer in three CRMs counts once).
pub const ENTITIES: &[Entity] = &[Entity::Lead, Entity::Opportunity, Entity::Order];

/// Which records count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every canonical record once.
    Unified,
    /// Records linked to one connection.
    Connection(ConnectionId),
}

impl Scope {
    /// The label value (`unified` or the connection name).
    pub fn label(&self) -> String {
        match self {
            Self::Unified => "unified".to_owned(),
            Self::Connection(id) => id.to_string(),
        }
    }
}

/// The window and scope of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsQuery {
    /// Scope.
    pub scope: Scope,
    /// Window start (inclusive).
    pub since: Timestamp,
    /// Window end (exclusive).
    pub until: Timestamp,
}

/// Currency settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The reporting currency.
    pub reporting_currency: Currency,
    /// 1 unit of the key currency = this many units of the reporting currency.
    pub fx: BTreeMap<Currency, Decimal>,
}

/// The three KPIs and the sales cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kpis {
    /// Sales amount per day of the window (reporting currency).
    pub efficiency: Option<Decimal>,
    /// Average days from creation to close of won opportunities closed in the window.
    pub avg_sales_cycle_days: Option<Decimal>,
    /// Customers with orders ÷ channels with orders.
    pub coverage: Option<Decimal>,
    /// Orders ÷ customers with orders.
    pub satisfaction: Option<Decimal>,
}

/// Totals behind the KPIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Sales amount (orders confirmed…invoiced), reporting currency.
    pub sales_amount: Decimal,
    /// Orders in the window (any status but cancelled).
    pub orders: u64,
    /// Distinct customers with orders.
    pub customers: u64,
    /// Channels with orders.
    pub channels: u64,
    /// Window length in days.
    pub window_days: Decimal,
}

/// One funnel stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunnelStage {
    /// Stage.
    pub stage: Stage,
    /// Records that reached it.
    pub reached: u64,
    /// reached ÷ reached of the previous stage.
    pub conversion_from_previous: Option<Decimal>,
}

/// One channel's share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelShare {
    /// Channel.
    pub channel: Channel,
    /// Orders.
    pub orders: u64,
    /// Share of orders.
    pub order_share: Option<Decimal>,
    /// Amount (reporting currency).
    pub amount: Decimal,
    /// Share of the amount.
    pub amount_share: Option<Decimal>,
}

/// The report (`crmsync metrics --json`, `GET /api/v1/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// `unified` or a connection.
    pub scope: String,
    /// Window start.
    pub since: Timestamp,
    /// Window end (exclusive).
    pub until: Timestamp,
    /// Reporting currency.
    pub currency: Currency,
    /// KPIs.
    pub kpis: Kpis,
    /// Totals.
    pub totals: Totals,
    /// Sales amounts in currencies without an FX rate (excluded from every KPI).
    pub unconverted: BTreeMap<Currency, Decimal>,
    /// Funnel, lead → won.
    pub funnel: Vec<FunnelStage>,
    /// won ÷ (won + lost) among opportunities closed in the window.
    pub win_rate: Option<Decimal>,
    /// Open pipeline value per current stage (reporting currency).
    pub pipeline_value: BTreeMap<Stage, Decimal>,
    /// Orders per channel.
    pub channel_mix: Vec<ChannelShare>,
    /// Orders per order date in the window (days without orders are left out), oldest first.
    #[serde(default)]
    pub orders_by_day: Vec<DayOrders>,
}

/// The orders of one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayOrders {
    /// The order date.
    pub date: jiff::civil::Date,
    /// Orders with that date (any status but cancelled, as [`Totals::orders`]).
    pub orders: u64,
}

/// Streaming accumulator.
pub struct Accumulator<'a> {
    query: &'a MetricsQuery,
    settings: &'a MetricsSettings,
    sales_amount: Decimal,
    orders: u64,
    customers: HashSet<CanonicalId>,
    channels: HashMap<Channel, (u64, Decimal)>,
    unconverted: BTreeMap<Currency, Decimal>,
    reached: [u64; 7],
    won: u64,
    lost: u64,
    cycle_days_sum: Decimal,
    cycle_count: u64,
    pipeline: BTreeMap<Stage, Decimal>,
    by_day: BTreeMap<jiff::civil::Date, u64>,
}

/// A ratio at full precision (28 significant digits): reports carry exact values, and only the
/// table rounds for display.
fn ratio(numerator: Decimal, denominator: Decimal) -> Option<Decimal> {
    (denominator != Decimal::ZERO).then(|| numerator.checked_div(denominator)).flatten()
}

fn in_window(query: &MetricsQuery, at: Timestamp) -> bool {
    query.since <= at && at < query.until
}

impl<'a> Accumulator<'a> {
    /// An empty accumulator.
    pub fn new(query: &'a MetricsQuery, settings: &'a MetricsSettings) -> Self {
        Self {
            query,
            settings,
            sales_amount: Decimal::ZERO,
            orders: 0,
            customers: HashSet::new(),
            channels: HashMap::new(),
            unconverted: BTreeMap::new(),
            reached: [0; 7],
            won: 0,
            lost: 0,
            cycle_days_sum: Decimal::ZERO,
            cycle_count: 0,
            pipeline: BTreeMap::new(),
            by_day: BTreeMap::new(),
        }
    }

    /// Converts an amount to the reporting currency, or records it as unconverted.
    fn convert(&mut self, amount: Decimal, currency: &Currency) -> Option<Decimal> {
        if currency == &self.settings.reporting_currency {
            return Some(amount);
        }
        match self.settings.fx.get(currency) {
            Some(rate) => Some(amount * rate),
            None => {
                *self.unconverted.entry(currency.clone()).or_default() += amount;
                None
            }
        }
    }

    /// Counts one record.
    pub fn add(&mut self, record: &RecordView) {
        if record.deleted_at.is_some() || record.merged_into.is_some() {
            return;
        }
        if let Scope::Connection(connection) = &self.query.scope
            && !record.linked_to(connection)
        {
            return;
        }
        match &record.data {
            DataView::Lead(lead) => {
                if lead.created_at.is_none_or(|at| in_window(self.query, at)) {
                    self.reached[0] += 1;
                }
            }
            DataView::Opportunity(opportunity) => {
                let created_in_window = opportunity.created_at.is_none_or(|at| in_window(self.query, at));
                // The furthest funnel stage reached: a won deal reached every stage.
                let furthest = opportunity
                    .stage_history
                    .iter()
                    .map(|entry| entry.stage)
                    .chain(opportunity.stage)
                    .filter_map(|stage| stage.funnel_position())
                    .max();
                if created_in_window && let Some(furthest) = furthest {
                    // Opportunities are converted leads: they count at `lead` too.
                    for reached in self.reached.iter_mut().take(furthest + 1) {
                        *reached += 1;
                    }
                }
                let closed_in_window = opportunity.closed_at.is_some_and(|at| in_window(self.query, at));
                match opportunity.stage {
                    Some(Stage::Won) if closed_in_window => {
                        self.won += 1;
                        if let (Some(created), Some(closed)) = (opportunity.created_at, opportunity.closed_at) {
                            let days =
                                Decimal::from(closed.unix_millis() - created.unix_millis()) / Decimal::from(86_400_000);
                            self.cycle_days_sum += days;
                            self.cycle_count += 1;
                        }
                    }
                    Some(Stage::Lost) if closed_in_window => self.lost += 1,
                    Some(stage) if !stage.is_closed() => {
                        if let Some(amount) = &opportunity.amount
                            && let Some(converted) = self.convert(amount.amount, &amount.currency)
                        {
                            *self.pipeline.entry(stage).or_default() += converted;
                        }
                    }
                    _ => {}
                }
            }
            DataView::Order(order) => {
                let Some(date) = order.order_date else { return };
                let Ok(at) = jiff::tz::Offset::UTC.to_timestamp(date.at(0, 0, 0, 0)) else { return };
                if !in_window(self.query, Timestamp::from_jiff(at)) || order.status == Some(OrderStatus::Cancelled) {
                    return;
                }
                self.orders += 1;
                *self.by_day.entry(date).or_default() += 1;
                if let Some(customer) = order.account.as_ref().and_then(|reference| reference.canonical) {
                    self.customers.insert(customer);
                }
                let channel = order.channel.unwrap_or(Channel::Other);
                let amount = match (order.total_amount, &order.currency) {
                    (Some(total), Some(currency)) => self.convert(total, currency),
                    (Some(total), None) => Some(total),
                    _ => None,
                };
                let entry = self.channels.entry(channel).or_default();
                entry.0 += 1;
                if let Some(amount) = amount {
                    entry.1 += amount;
                    if order.status.is_some_and(|status| status.is_sale()) {
                        self.sales_amount += amount;
                    }
                }
            }
            DataView::Account(_) => {}
        }
    }

    /// Adds what `other` counted (the same query, over other records): counting two parts of the
    /// records apart and merging them gives the accumulator of all of them.
    pub fn merge(&mut self, other: Self) {
        let Self {
            query: _,
            settings: _,
            sales_amount,
            orders,
            customers,
            channels,
            unconverted,
            reached,
            won,
            lost,
            cycle_days_sum,
            cycle_count,
            pipeline,
            by_day,
        } = other;
        self.sales_amount += sales_amount;
        self.orders += orders;
        self.customers.extend(customers);
        for (channel, (orders, amount)) in channels {
            let entry = self.channels.entry(channel).or_default();
            entry.0 += orders;
            entry.1 += amount;
        }
        for (currency, amount) in unconverted {
            *self.unconverted.entry(currency).or_default() += amount;
        }
        for (total, part) in self.reached.iter_mut().zip(reached) {
            *total += part;
        }
        self.won += won;
        self.lost += lost;
        self.cycle_days_sum += cycle_days_sum;
        self.cycle_count += cycle_count;
        for (stage, value) in pipeline {
            *self.pipeline.entry(stage).or_default() += value;
        }
        for (date, count) in by_day {
            *self.by_day.entry(date).or_default() += count;
        }
    }

    /// Finishes the report.
    pub fn finish(self) -> MetricsReport {
        let window_days = Decimal::from((self.query.until.unix_millis() - self.query.since.unix_millis()).max(0))
            / Decimal::from(86_400_000);
        let customers = self.customers.len() as u64;
        let channels = self.channels.values().filter(|(orders, _)| *orders > 0).count() as u64;
        let funnel = Stage::FUNNEL
            .iter()
            .enumerate()
            .map(|(index, stage)| FunnelStage {
                stage: *stage,
                reached: self.reached[index],
                conversion_from_previous: if index == 0 {
                    None
                } else {
                    ratio(Decimal::from(self.reached[index]), Decimal::from(self.reached[index - 1]))
                },
            })
            .collect();
        let total_amount: Decimal = self.channels.values().map(|(_, amount)| *amount).sum();
        let channel_mix = Channel::ALL
            .iter()
            .map(|channel| {
                let (orders, amount) = self.channels.get(channel).copied().unwrap_or_default();
                ChannelShare {
                    channel: *channel,
                    orders,
                    order_share: ratio(Decimal::from(orders), Decimal::from(self.orders)),
                    amount,
                    amount_share: ratio(amount, total_amount),
                }
            })
            .collect();
        MetricsReport {
            scope: self.query.scope.label(),
            since: self.query.since,
            until: self.query.until,
            currency: self.settings.reporting_currency.clone(),
            kpis: Kpis {
                efficiency: ratio(self.sales_amount, window_days),
                avg_sales_cycle_days: ratio(self.cycle_days_sum, Decimal::from(self.cycle_count)),
                coverage: ratio(Decimal::from(customers), Decimal::from(channels)),
                satisfaction: ratio(Decimal::from(self.orders), Decimal::from(customers)),
            },
            totals: Totals { sales_amount: self.sales_amount, orders: self.orders, customers, channels, window_days },
            unconverted: self.unconverted,
            funnel,
            win_rate: ratio(Decimal::from(self.won), Decimal::from(self.won + self.lost)),
            pipeline_value: self.pipeline,
            channel_mix,
            orders_by_day: self.by_day.into_iter().map(|(date, orders)| DayOrders { date, orders }).collect(),
        }
    }
}

/// Parses one bound of a metrics window: an RFC 3339 instant, or a date meaning 00:00 UTC of that day.
/// UTC instants past the end of the representable range (`9999-12-31T23:59:59Z`: jiff stops at
/// 9999-12-30T22:00Z so that every offset stays in range) mean "the end of time" and are clamped to it.
pub fn parse_bound(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(instant) = text.parse::<Timestamp>() {
        return Some(instant);
    }
    let civil = match text.strip_suffix(['Z', 'z']) {
        Some(naive) => naive.parse::<jiff::civil::DateTime>().ok()?,
        None => text.parse::<jiff::civil::Date>().ok()?.at(0, 0, 0, 0),
    };
    Some(match jiff::tz::Offset::UTC.to_timestamp(civil) {
        Ok(instant) => Timestamp::from_jiff(instant),
        Err(_) if civil.year() > 0 => Timestamp::from_jiff(jiff::Timestamp::MAX),
        Err(_) => Timestamp::from_jiff(jiff::Timestamp::MIN),
    })
}

/// Parses the `since`/`until` of a metrics query (CLI flags or API parameters, named `since_name`
/// and `until_name` in errors). `since` must come before `until` (or before now, when `until` is
/// not given): an empty or inverted window is a mistake, not a report of zeros.
pub fn parse_window(
    since: Option<&str>,
    until: Option<&str>,
    names: (&str, &str),
) -> Result<(Option<Timestamp>, Option<Timestamp>), String> {
    let parse = |text: Option<&str>, name: &str| {
        text.map(|text| {
            parse_bound(text).ok_or_else(|| {
                format!(
                    "{name}: expected an RFC 3339 instant (2026-10-01T00:00:00Z) or a date (2026-10-01), got {text:?}"
                )
            })
        })
        .transpose()
    };
    let (since_name, until_name) = names;
    let since_at = parse(since, since_name)?;
    let until_at = parse(until, until_name)?;
    if let Some(start) = since_at {
        let end = until_at.unwrap_or_else(Timestamp::now);
        if start >= end {
            let end_text = if until_at.is_some() { end.to_string() } else { format!("now, {end}") };
            return Err(format!("{since_name} ({start}) must be before {until_name} ({end_text})"));
        }
    }
    Ok((since_at, until_at))
}

/// Computes a report over records.
pub fn compute<'r>(
    records: impl IntoIterator<Item = &'r Record>,
    query: &MetricsQuery,
    settings: &MetricsSettings,
) -> MetricsReport {
    let mut accumulator = Accumulator::new(query, settings);
    for record in records {
        accumulator.add(&RecordView::of(record));
    }
    accumulator.finish()
}

fn show(value: Option<Decimal>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |value| value.round_dp(3).normalize().to_string())
}

/// A money amount as the table shows it (cents; the JSON report keeps every digit).
fn money(amount: Decimal) -> String {
    amount.round_dp(2).normalize().to_string()
}

fn percent(value: Option<Decimal>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |value| format!("{}%", (value * Decimal::from(100)).round_dp(1).normalize()))
}

/// Renders the report as a plain-text table.
pub fn render_table(report: &MetricsReport) -> String {
    let mut out = format!(
        "\nsales metrics: scope {}, {} … {} ({} days), in {}\n",
        report.scope,
        report.since,
        report.until,
        report.totals.window_days.round_dp(2).normalize(),
        report.currency
    );
    out.push_str(&format!(
        "  efficiency    {:>14} {}/day   (sales {} over the window)\n",
        show(report.kpis.efficiency),
        report.currency,
        money(report.totals.sales_amount)
    ));
    out.push_str(&format!(
        "  coverage      {:>14}           ({} customers / {} channels)\n",
        show(report.kpis.coverage),
        report.totals.customers,
        report.totals.channels
    ));
    out.push_str(&format!(
        "  satisfaction  {:>14}           ({} orders / {} customers)\n",
        show(report.kpis.satisfaction),
        report.totals.orders,
        report.totals.customers
    ));
    out.push_str(&format!(
        "  sales cycle   {:>14} days      win rate {}\n",
        show(report.kpis.avg_sales_cycle_days),
        percent(report.win_rate)
    ));
    for (currency, amount) in &report.unconverted {
        out.push_str(&format!("  not converted: {amount} {currency} (no FX rate; excluded from the KPIs)\n"));
    }
    out.push_str("  funnel:\n");
    for stage in &report.funnel {
        let bar = "#".repeat(usize::try_from(stage.reached.min(60)).unwrap_or(60));
        out.push_str(&format!(
            "    {:<10} {:>7}  {:>7}  {bar}\n",
            stage.stage.as_str(),
            stage.reached,
            percent(stage.conversion_from_previous)
        ));
    }
    if !report.pipeline_value.is_empty() {
        out.push_str("  open pipeline:\n");
        for (stage, amount) in &report.pipeline_value {
            out.push_str(&format!("    {:<10} {:>14} {}\n", stage.as_str(), money(*amount), report.currency));
        }
    }
    out.push_str("  channel mix:        orders   share        amount   share\n");
    for share in &report.channel_mix {
        out.push_str(&format!(
            "    {:<12} {:>10} {:>7} {:>13} {:>7}\n",
            share.channel.as_str(),
            share.orders,
            percent(share.order_share),
            money(share.amount),
            percent(share.amount_share)
        ));
    }
    out
}

/// What every number means (`crmsync metrics --explain`).
pub fn explain() -> &'static str {
    "crmsync sales metrics (SPEC §4)

Scope: `unified` counts every canonical record once — a customer or order that several CRMs hold
is one record; a connection scope counts the records linked to that connection.
Window: [since, until), default the last `metrics.window` (30 days) up to now.
Money: converted to `metrics.reporting_currency` with `metrics.fx`; amounts in a currency without a
rate are listed as \"not converted\" and excluded from every KPI, never summed blindly.
A ratio whose denominator is zero is n/a (`null` in JSON, NaN in Prometheus).

efficiency          = sales amount ÷ window length in days (currency per day). Sales amount = total of
                      orders dated in the window whose status is confirmed, shipped, delivered or invoiced.
avg_sales_cycle     = average days from creation to close of opportunities won and closed in the window.
coverage            = distinct customers (accounts) with ≥1 order in the window ÷ channels with ≥1 order.
satisfaction        = orders in the window ÷ distinct customers with orders (repeat-purchase ratio).
                      Orders counted: dated in the window, any status except cancelled.
funnel              = records created in the window that reached each stage: leads count at `lead`;
                      an opportunity counts at `lead` and at every stage up to the furthest one in its
                      stage history or current stage (a won deal reached every stage). The conversion of
                      a step is reached(stage) ÷ reached(previous stage).
win_rate            = won ÷ (won + lost) among opportunities closed in the window.
pipeline_value      = amounts of open opportunities by current stage (no window).
channel_mix         = orders (and their amounts) per channel: direct, agent, ecommerce, other; shares of
                      the window's orders and amounts.
"
}

/// One Prometheus gauge sample: name, labels, value.
pub type Gauge = (&'static str, Vec<(&'static str, String)>, f64);

/// The Prometheus gauges of a report. Every series of a scope is always set, so none keeps a stale
/// value: an n/a ratio is `NaN` (Prometheus' "no value"), and every open stage has a pipeline value
/// (0 when no open deal sits there).
pub fn gauges(report: &MetricsReport) -> Vec<Gauge> {
    use rust_decimal::prelude::ToPrimitive;
    let scope = || vec![("scope", report.scope.clone())];
    let with = |key: &'static str, value: String| vec![("scope", report.scope.clone()), (key, value)];
    let value = |value: Option<Decimal>| value.and_then(|value| value.to_f64()).unwrap_or(f64::NAN);
    let count = |count: u64| count as f64;
    let mut gauges = vec![
        (KPI_EFFICIENCY, scope(), value(report.kpis.efficiency)),
        (KPI_COVERAGE, scope(), value(report.kpis.coverage)),
        (KPI_SATISFACTION, scope(), value(report.kpis.satisfaction)),
        (KPI_SALES_CYCLE, scope(), value(report.kpis.avg_sales_cycle_days)),
        (KPI_WIN_RATE, scope(), value(report.win_rate)),
        (KPI_SALES_AMOUNT, scope(), value(Some(report.totals.sales_amount))),
    ];
    for stage in &report.funnel {
        gauges.push((KPI_FUNNEL, with("stage", stage.stage.to_string()), count(stage.reached)));
    }
    for stage in Stage::FUNNEL.iter().filter(|stage| !stage.is_closed()) {
        let amount = report.pipeline_value.get(stage).copied().unwrap_or_default();
        gauges.push((KPI_PIPELINE_VALUE, with("stage", stage.to_string()), value(Some(amount))));
    }
    for share in &report.channel_mix {
        gauges.push((KPI_CHANNEL_ORDERS, with("channel", share.channel.to_string()), count(share.orders)));
    }
    gauges
}
