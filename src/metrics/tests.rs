//! KPI computations against hand-computed fixtures.

use crmsync_connectors::canonical::{
    Account, EntityData, Lead, Link, MatchReason, Money, Opportunity, Order, RecordRef, StageEntry,
};

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn link(connection: &str) -> Link {
    Link {
        connection: ConnectionId::new(connection),
        object: String::new(),
        external_id: crmsync_connectors::canonical::ExternalId::new(format!("{connection}-{}", CanonicalId::new())),
        last_modified: None,
        last_version: None,
        pushed_hash: None,
        matched_by: MatchReason::Created,
        extra: serde_json::Map::new(),
    }
}

fn record(data: EntityData, connections: &[&str]) -> Record {
    let mut record = Record::new(CanonicalId::new(), data.entity(), at("2026-10-01T00:00:00Z"));
    record.data = data;
    record.links = connections.iter().map(|connection| link(connection)).collect();
    record
}

fn order(
    account: CanonicalId,
    total: &str,
    currency: &str,
    status: OrderStatus,
    channel: Channel,
    day: &str,
    connections: &[&str],
) -> Record {
    record(
        EntityData::Order(Order {
            account: Some(RecordRef::canonical(account)),
            total_amount: Some(total.parse().unwrap()),
            currency: Some(Currency::new(currency).unwrap()),
            status: Some(status),
            channel: Some(channel),
            order_date: Some(day.parse().unwrap()),
            ..Order::default()
        }),
        connections,
    )
}

fn settings() -> MetricsSettings {
    MetricsSettings {
        reporting_currency: Currency::new("EUR").unwrap(),
        fx: BTreeMap::from([(Currency::new("USD").unwrap(), "0.5".parse().unwrap())]),
    }
}

fn window(scope: Scope) -> MetricsQuery {
    MetricsQuery { scope, since: at("2026-10-01T00:00:00Z"), until: at("2026-10-11T00:00:00Z") }
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn fixture() -> Vec<Record> {
    let a =
        record(EntityData::Account(Account { name: Some("A".into()), ..Account::default() }), &["sf", "zoho", "d365"]);
    let b = record(EntityData::Account(Account { name: Some("B".into()), ..Account::default() }), &["sf"]);
    let (a_id, b_id) = (a.id, b.id);
    vec![
        a,
        b,
        order(a_id, "100", "EUR", OrderStatus::Confirmed, Channel::Direct, "2026-10-02", &["sf", "zoho"]),
        order(a_id, "200", "USD", OrderStatus::Delivered, Channel::Agent, "2026-10-03", &["sf"]),
        order(b_id, "1000", "JPY", OrderStatus::Invoiced, Channel::Ecommerce, "2026-10-04", &["sf"]),
        order(b_id, "50", "EUR", OrderStatus::Draft, Channel::Direct, "2026-10-10", &["sf"]),
        order(b_id, "70", "EUR", OrderStatus::Cancelled, Channel::Direct, "2026-10-05", &["sf"]),
        // Outside the window: until is exclusive.
        order(b_id, "999", "EUR", OrderStatus::Confirmed, Channel::Direct, "2026-10-11", &["sf"]),
    ]
}

#[test]
fn kpis_match_the_hand_computed_fixture() {
    let records = fixture();
    let report = compute(&records, &window(Scope::Unified), &settings());
    // Sales = 100 EUR (confirmed) + 200 USD × 0.5 (delivered) = 200 EUR; JPY has no rate; draft is no sale.
    assert_eq!(report.totals.sales_amount, dec("200"));
    // 200 EUR over 10 days.
    assert_eq!(report.kpis.efficiency, Some(dec("20")));
    // Orders: 100, 200 USD, 1000 JPY, 50 draft = 4 (cancelled and out-of-window excluded); customers A, B.
    assert_eq!((report.totals.orders, report.totals.customers, report.totals.channels), (4, 2, 3));
    // 2 customers / 3 channels; 4 orders / 2 customers.
    // Full precision in the report (the JSON of `metrics --json` and the API); only the table rounds.
    assert_eq!(report.kpis.coverage, Some(dec("0.6666666666666666666666666667")));
    assert!(render_table(&report).contains("0.667"), "{}", render_table(&report));
    assert_eq!(report.kpis.satisfaction, Some(dec("2")));
    assert_eq!(report.unconverted.get(&Currency::new("JPY").unwrap()), Some(&dec("1000")));
    let direct = report.channel_mix.iter().find(|share| share.channel == Channel::Direct).unwrap();
    // Direct: the 100 EUR and the 50 EUR draft = 2 of 4 orders; 150 of 250 EUR converted.
    assert_eq!(
        (direct.orders, direct.order_share, direct.amount, direct.amount_share),
        (2, Some(dec("0.5")), dec("150"), Some(dec("0.6")))
    );
}

#[test]
fn duplicates_across_crms_count_once_and_connection_scopes_count_their_links() {
    let records = fixture();
    let unified = compute(&records, &window(Scope::Unified), &settings());
    assert_eq!(unified.totals.customers, 2, "account A is in three CRMs but one customer");
    let zoho = compute(&records, &window(Scope::Connection(ConnectionId::new("zoho"))), &settings());
    assert_eq!((zoho.totals.orders, zoho.totals.sales_amount), (1, dec("100")));
}

#[test]
fn an_empty_window_is_all_n_a_without_dividing_by_zero() {
    let report = compute(&Vec::<Record>::new(), &window(Scope::Unified), &settings());
    assert_eq!(
        report.kpis,
        Kpis { efficiency: Some(Decimal::ZERO), avg_sales_cycle_days: None, coverage: None, satisfaction: None }
    );
    assert_eq!(report.win_rate, None);
    assert!(report.channel_mix.iter().all(|share| share.order_share.is_none()));
    let zero_length =
        MetricsQuery { scope: Scope::Unified, since: at("2026-10-01T00:00:00Z"), until: at("2026-10-01T00:00:00Z") };
    assert_eq!(compute(&Vec::<Record>::new(), &zero_length, &settings()).kpis.efficiency, None);
    assert!(render_table(&report).contains("n/a"));
}

#[test]
fn the_funnel_counts_stage_history_and_won_deals_reach_every_stage() {
    let mut records: Vec<Record> = (0..10)
        .map(|_| {
            record(EntityData::Lead(Lead { created_at: Some(at("2026-10-02T00:00:00Z")), ..Lead::default() }), &["sf"])
        })
        .collect();
    let won = Opportunity {
        stage: Some(Stage::Won),
        created_at: Some(at("2026-10-02T00:00:00Z")),
        closed_at: Some(at("2026-10-06T00:00:00Z")),
        stage_history: vec![
            StageEntry { stage: Stage::Qualified, entered_at: at("2026-10-02T00:00:00Z") },
            StageEntry { stage: Stage::Won, entered_at: at("2026-10-06T00:00:00Z") },
        ],
        ..Opportunity::default()
    };
    let planning = Opportunity {
        stage: Some(Stage::Plan),
        amount: Some("1000 USD".parse::<Money>().unwrap()),
        created_at: Some(at("2026-10-03T00:00:00Z")),
        ..Opportunity::default()
    };
    let lost = Opportunity {
        stage: Some(Stage::Lost),
        created_at: Some(at("2026-10-03T00:00:00Z")),
        closed_at: Some(at("2026-10-04T00:00:00Z")),
        stage_history: vec![StageEntry { stage: Stage::Budget, entered_at: at("2026-10-03T00:00:00Z") }],
        ..Opportunity::default()
    };
    for opportunity in [won, planning, lost] {
        records.push(record(EntityData::Opportunity(opportunity), &["sf"]));
    }
    let report = compute(&records, &window(Scope::Unified), &settings());
    let reached: Vec<u64> = report.funnel.iter().map(|stage| stage.reached).collect();
    // lead: 10 leads + 3 opportunities; qualified: 3; budget: won, plan, lost(budget) = 3; plan: won, plan = 2;
    // execute, follow_up, won: the won deal only.
    assert_eq!(reached, [13, 3, 3, 2, 1, 1, 1]);
    assert_eq!(report.funnel[1].conversion_from_previous, Some(Decimal::from(3) / Decimal::from(13)));
    assert_eq!(report.win_rate, Some(dec("0.5")));
    // Won in 4 days.
    assert_eq!(report.kpis.avg_sales_cycle_days, Some(dec("4")));
    // 1000 USD × 0.5.
    assert_eq!(report.pipeline_value.get(&Stage::Plan), Some(&dec("500")));
}

#[test]
fn counts_merged_from_parts_of_the_records_are_the_counts_of_all_of_them() {
    let mut records = fixture();
    records.push(record(
        EntityData::Lead(Lead { created_at: Some(at("2026-10-02T00:00:00Z")), ..Lead::default() }),
        &["sf"],
    ));
    for (stage, amount, closed) in
        [(Stage::Won, "300 EUR", true), (Stage::Plan, "1000 USD", false), (Stage::Lost, "5 EUR", true)]
    {
        let opportunity = Opportunity {
            stage: Some(stage),
            amount: Some(amount.parse::<Money>().unwrap()),
            created_at: Some(at("2026-10-02T00:00:00Z")),
            closed_at: closed.then(|| at("2026-10-05T00:00:00Z")),
            stage_history: vec![StageEntry { stage: Stage::Qualified, entered_at: at("2026-10-02T00:00:00Z") }],
            ..Opportunity::default()
        };
        records.push(record(EntityData::Opportunity(opportunity), &["sf", "zoho"]));
    }
    let settings = settings();
    for scope in [Scope::Unified, Scope::Connection(ConnectionId::new("zoho"))] {
        let query = window(scope);
        let whole = compute(&records, &query, &settings);
        // Every split point: the parts counted apart (as the scan's threads do) and merged.
        for split in 0..=records.len() {
            let (first, second) = records.split_at(split);
            let mut merged = Accumulator::new(&query, &settings);
            let mut other = Accumulator::new(&query, &settings);
            first.iter().for_each(|record| merged.add(&RecordView::of(record)));
            second.iter().for_each(|record| other.add(&RecordView::of(record)));
            merged.merge(other);
            assert_eq!(merged.finish(), whole, "split at {split}");
        }
    }
}

#[test]
fn tombstones_are_ignored_and_n_a_gauges_are_nan_not_stale() {
    let mut records = fixture();
    let before = gauges(&compute(&records, &window(Scope::Unified), &settings()));
    for record in &mut records {
        record.deleted_at = Some(at("2026-10-09T00:00:00Z"));
    }
    let report = compute(&records, &window(Scope::Unified), &settings());
    assert_eq!(report.totals.orders, 0);
    let after = gauges(&report);
    // The same series before and after: nothing a scrape saw earlier is left behind with an old value.
    let series = |gauges: &[Gauge]| -> Vec<(&'static str, Vec<(&'static str, String)>)> {
        gauges.iter().map(|(name, labels, _)| (*name, labels.clone())).collect()
    };
    assert_eq!(series(&before), series(&after));
    let value = |name: &str, label: Option<(&str, &str)>| {
        after
            .iter()
            .find(|(gauge, labels, _)| {
                *gauge == name && label.is_none_or(|(key, value)| labels.iter().any(|(k, v)| *k == key && v == value))
            })
            .map(|(_, _, value)| *value)
            .unwrap_or_else(|| panic!("{name} {label:?} missing"))
    };
    assert!(value(KPI_COVERAGE, None).is_nan(), "n/a coverage is NaN");
    assert!(value(KPI_WIN_RATE, None).is_nan(), "n/a win rate is NaN");
    assert_eq!(value(KPI_EFFICIENCY, None), 0.0);
    assert_eq!(value(KPI_PIPELINE_VALUE, Some(("stage", "plan"))), 0.0, "an emptied stage reads 0");
    assert_eq!(value(KPI_CHANNEL_ORDERS, Some(("channel", "direct"))), 0.0);
    // Every open stage is there, the closed ones are not.
    let stages: Vec<String> = after
        .iter()
        .filter(|(name, _, _)| *name == KPI_PIPELINE_VALUE)
        .map(|(_, labels, _)| labels[1].1.clone())
        .collect();
    assert_eq!(stages, ["lead", "qualified", "budget", "plan", "execute", "follow_up"]);
}

#[test]
fn a_large_store_is_computed_in_one_pass() {
    let customer = CanonicalId::new();
    let records: Vec<Record> = (0..20_000)
        .map(|index| {
            order(
                customer,
                "10",
                if index % 2 == 0 { "EUR" } else { "USD" },
                OrderStatus::Confirmed,
                Channel::Direct,
                "2026-10-05",
                &["sf"],
            )
        })
        .collect();
    let report = compute(&records, &window(Scope::Unified), &settings());
    // 10,000 × 10 EUR + 10,000 × 10 USD × 0.5.
    assert_eq!(report.totals.sales_amount, dec("150000"));
    assert_eq!(report.totals.orders, 20_000);
}

#[test]
fn a_stored_summary_reads_back_as_the_view_of_its_record() {
    for record in fixture() {
        let bytes = crate::store::format::encode_summary(&RecordView::of(&record));
        assert_eq!(crate::store::format::decode_summary(&bytes).unwrap(), RecordView::of(&record));
        assert!(bytes.len() * 4 < serde_json::to_vec(&record).unwrap().len());
    }
}

#[test]
fn a_window_takes_instants_or_dates_and_refuses_an_inverted_one() {
    let (since, until) = parse_window(Some("2026-10-01"), Some("9999-12-31T23:59:59Z"), ("since", "until")).unwrap();
    assert_eq!(since, Some("2026-10-01T00:00:00Z".parse().unwrap()));
    // Past jiff's last instant (9999-12-30T22:00Z): the end of time, not an error.
    assert_eq!(until, Some(Timestamp::from_jiff(jiff::Timestamp::MAX)));
    assert_eq!(parse_bound("9999-12-31"), until);
    let error = parse_window(Some("2026-11-01"), Some("2026-10-01"), ("--since", "--until")).unwrap_err();
    assert_eq!(error, "--since (2026-11-01T00:00:00Z) must be before --until (2026-10-01T00:00:00Z)");
    assert!(parse_window(Some("yesterday"), None, ("since", "until")).unwrap_err().starts_with("since: expected"));
    assert!(
        parse_window(Some("9999-01-01"), None, ("since", "until")).unwrap_err().contains("must be before until (now")
    );
}
