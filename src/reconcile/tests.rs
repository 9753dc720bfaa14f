//! Table tests for every policy, echo suppression, conflicts, and a proptest that any order of a set
//! of changes (with duplicates) yields the same record.

use proptest::prelude::*;

use super::*;
use crmsync_connectors::canonical::{Account, ExternalId, Money, Stage};

fn ts(seconds: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_700_000_000 + seconds).unwrap()
}

fn connection(name: &str) -> ConnectionId {
    ConnectionId::new(name)
}

fn account_change(source_id: &str, at: i64, name: &str, industry: Option<&str>) -> Change {
    Change {
        entity: Entity::Account,
        object: "Account".into(),
        external_id: ExternalId::new(source_id),
        modified_at: ts(at),
        version: None,
        canonical_hint: None,
        kind: ChangeKind::Upsert {
            data: EntityData::Account(Account {
                name: Some(name.into()),
                industry: industry.map(Into::into),
                ..Account::default()
            }),
            completeness: Completeness::Full,
        },
        extra: serde_json::Map::new(),
    }
}

fn apply(record: Option<&Record>, change: &Change, source: &str, rules: &Rules) -> Decision {
    reconcile(record, change, &connection(source), MatchReason::Created, rules, ts(10_000), CanonicalId::new()).unwrap()
}

fn name_of(record: &Record) -> Option<String> {
    match &record.data {
        EntityData::Account(account) => account.name.clone(),
        _ => None,
    }
}

/// A record first seen from `sf` at t=10 with name "Acme", then linked to `zoho` at t=10.
fn shared_record(rules: &Rules) -> Record {
    let created = apply(None, &account_change("001", 10, "Acme", None), "sf", rules).record.unwrap();
    apply(Some(&created), &account_change("z1", 10, "Acme", None), "zoho", rules).record.unwrap()
}

#[test]
fn new_change_creates_and_fans_out() {
    let decision = apply(None, &account_change("001", 1, "Acme", Some("Retail")), "sf", &Rules::default());
    assert_eq!(decision.outcome, Outcome::Created);
    assert!(decision.fan_out);
    let record = decision.record.unwrap();
    assert_eq!(record.links.len(), 1);
    assert_eq!(record.provenance["name"].connection, Some(connection("sf")));
}

#[test]
fn applying_the_same_change_twice_is_a_no_op() {
    let rules = Rules::default();
    let change = account_change("001", 1, "Acme", Some("Retail"));
    let record = apply(None, &change, "sf", &rules).record.unwrap();
    let again = apply(Some(&record), &change, "sf", &rules);
    assert_eq!(again.outcome, Outcome::Unchanged);
    assert!(again.record.is_none(), "nothing to write");
    assert!(!again.fan_out);
}

#[test]
fn an_older_change_never_overwrites_a_newer_one() {
    let rules = Rules::default();
    let newer = apply(None, &account_change("001", 20, "Acme New", None), "sf", &rules).record.unwrap();
    let older = apply(Some(&newer), &account_change("001", 10, "Acme Old", None), "sf", &rules);
    assert_eq!(older.outcome, Outcome::Stale);
    // From another connection, an older value loses under `newest` too.
    let from_zoho = apply(Some(&newer), &account_change("z1", 15, "Acme Zoho", None), "zoho", &rules);
    assert_eq!(name_of(from_zoho.record.as_ref().unwrap_or(&newer)).as_deref(), Some("Acme New"));
}

#[test]
fn newest_policy_ties_go_to_source_priority() {
    let rules = Rules { source_priority: vec![connection("zoho"), connection("sf")], ..Rules::default() };
    let record = apply(None, &account_change("001", 10, "From SF", None), "sf", &rules).record.unwrap();
    let tie = apply(Some(&record), &account_change("z1", 10, "From Zoho", None), "zoho", &rules);
    assert_eq!(name_of(tie.record.as_ref().unwrap()).as_deref(), Some("From Zoho"));
    let reverse = Rules { source_priority: vec![connection("sf"), connection("zoho")], ..Rules::default() };
    let record = apply(None, &account_change("001", 10, "From SF", None), "sf", &reverse).record.unwrap();
    let tie = apply(Some(&record), &account_change("z1", 10, "From Zoho", None), "zoho", &reverse);
    assert_eq!(name_of(tie.record.as_ref().unwrap()).as_deref(), Some("From SF"));
}

#[test]
fn priority_policy_prefers_the_listed_connection_even_when_older() {
    let rules =
        Rules { default_policy: Policy::Priority(vec![connection("sf"), connection("zoho")]), ..Rules::default() };
    let record = apply(None, &account_change("001", 10, "From SF", None), "sf", &rules).record.unwrap();
    let newer_zoho = apply(Some(&record), &account_change("z1", 50, "From Zoho", None), "zoho", &rules);
    assert_eq!(name_of(newer_zoho.record.as_ref().unwrap()).as_deref(), Some("From SF"));
}

#[test]
fn a_double_edit_under_priority_is_one_conflict_whichever_side_is_read_first() {
    let rules =
        Rules { default_policy: Policy::Priority(vec![connection("sf"), connection("zoho")]), ..Rules::default() };
    let base = shared_record(&rules);
    let from_sf = account_change("001", 40, "SF edit", None);
    let from_zoho = account_change("z1", 41, "Zoho edit", None);
    for order in [[(&from_sf, "sf"), (&from_zoho, "zoho")], [(&from_zoho, "zoho"), (&from_sf, "sf")]] {
        let mut record = base.clone();
        let mut conflicts = Vec::new();
        for (change, source) in order {
            let decision = apply(Some(&record), change, source, &rules);
            conflicts.extend(decision.conflicts.clone());
            if let Some(updated) = decision.record {
                record = updated;
            }
        }
        assert_eq!(name_of(&record).as_deref(), Some("SF edit"), "the priority winner");
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        // Both values of the moment are kept; the overruled edit is always one of them.
        let values = [conflicts[0].current.value.clone(), conflicts[0].incoming.value.clone()];
        assert!(values.contains(&Value::from("Zoho edit")), "{values:?}");
    }
}

#[test]
fn authoritative_policy_lets_only_the_owner_overwrite() {
    let mut rules = Rules::default();
    rules
        .policies
        .insert(Entity::Account, BTreeMap::from([("name".to_owned(), Policy::Authoritative(connection("sf")))]));
    let record = apply(None, &account_change("z1", 10, "Zoho Name", Some("Retail")), "zoho", &rules).record.unwrap();
    // Owner overwrites even with an older change.
    let owner =
        apply(Some(&record), &account_change("001", 5, "SF Name", Some("Retail")), "sf", &rules).record.unwrap();
    assert_eq!(name_of(&owner).as_deref(), Some("SF Name"));
    // Non-owner cannot overwrite the owner's value, even when newer.
    let other = apply(Some(&owner), &account_change("z1", 99, "Zoho Again", Some("Retail")), "zoho", &rules);
    assert_eq!(name_of(other.record.as_ref().unwrap_or(&owner)).as_deref(), Some("SF Name"));
}

#[test]
fn same_field_changed_on_two_sides_is_a_conflict_with_both_values() {
    let rules = Rules::default();
    let record = shared_record(&rules);
    // sf edits at t=20; then zoho (last seen at t=10) edits at t=30: both changed since zoho's last sync.
    let after_sf = apply(Some(&record), &account_change("001", 20, "Acme SF", None), "sf", &rules).record.unwrap();
    let decision = apply(Some(&after_sf), &account_change("z1", 30, "Acme Zoho", None), "zoho", &rules);
    assert_eq!(decision.conflicts.len(), 1);
    let conflict = &decision.conflicts[0];
    assert_eq!(conflict.field, "name");
    assert_eq!(conflict.current.value, Value::String("Acme SF".into()));
    assert_eq!(conflict.incoming.value, Value::String("Acme Zoho".into()));
    assert!(conflict.incoming_won && !conflict.held);
    assert_eq!(name_of(decision.record.as_ref().unwrap()).as_deref(), Some("Acme Zoho"));
}

#[test]
fn manual_policy_holds_the_current_value() {
    let rules = Rules { default_policy: Policy::Manual, ..Rules::default() };
    let record = shared_record(&rules);
    let after_sf = apply(Some(&record), &account_change("001", 20, "Acme SF", None), "sf", &rules).record.unwrap();
    let decision = apply(Some(&after_sf), &account_change("z1", 30, "Acme Zoho", None), "zoho", &rules);
    assert!(decision.conflicts[0].held);
    let held = decision.record.unwrap_or(after_sf);
    assert_eq!(name_of(&held).as_deref(), Some("Acme SF"));
    let mut resolved = held.clone();
    resolve_field(&mut resolved, "name", Value::String("Acme Zoho".into()), ts(40)).unwrap();
    assert_eq!(name_of(&resolved).as_deref(), Some("Acme Zoho"));
    assert_eq!(resolved.provenance["name"].connection, None);
}

#[test]
fn our_own_push_read_back_is_an_echo() {
    let rules = Rules::default();
    let mut record = apply(None, &account_change("001", 10, "Acme", Some("Retail")), "sf", &rules).record.unwrap();
    // crmsync pushed the record to zoho: the link remembers what it pushed.
    record.links.push(Link {
        connection: connection("zoho"),
        object: "Accounts".into(),
        external_id: ExternalId::new("z1"),
        last_modified: None,
        last_version: None,
        pushed_hash: Some(pushed_hash(&record.data)),
        matched_by: MatchReason::Pushed,
        extra: serde_json::Map::new(),
    });
    let echo = apply(Some(&record), &account_change("z1", 11, "Acme", Some("Retail")), "zoho", &rules);
    assert_eq!(echo.outcome, Outcome::Echo);
    assert!(!echo.fan_out);
    assert_eq!(echo.record.unwrap().link(&connection("zoho")).unwrap().last_modified, Some(ts(11)));
    // A real edit in zoho afterwards is not an echo.
    let edit = apply(Some(&record), &account_change("z1", 12, "Acme GmbH", Some("Retail")), "zoho", &rules);
    assert_eq!(edit.outcome, Outcome::Updated);
    assert!(edit.fan_out);
}

#[test]
fn a_field_read_back_as_crmsync_last_pushed_it_keeps_the_canonical_value_until_the_vendor_moves_it() {
    let rules = Rules::default();
    let mut record = apply(None, &account_change("001", 10, "Acme", Some("Retail")), "sf", &rules).record.unwrap();
    // zoho was sent industry "Retail"; since then the canonical value moved on (its push is queued).
    record.links.push(Link {
        connection: connection("zoho"),
        object: "Accounts".into(),
        external_id: ExternalId::new("z1"),
        last_modified: Some(ts(10)),
        last_version: None,
        pushed_hash: Some(pushed_hash(&record.data)),
        matched_by: MatchReason::Pushed,
        extra: serde_json::Map::new(),
    });
    let moved = apply(Some(&record), &account_change("001", 20, "Acme", Some("Energy")), "sf", &rules).record.unwrap();
    // A later edit of the name in zoho carries the industry zoho still holds: what crmsync wrote.
    let edit = apply(Some(&moved), &account_change("z1", 30, "Acme GmbH", Some("Retail")), "zoho", &rules);
    assert_eq!(edit.outcome, Outcome::Updated);
    assert_eq!(edit.changed_fields, vec!["name".to_owned()], "the industry read back is not a change");
    assert!(edit.conflicts.iter().all(|conflict| conflict.field != "industry"), "{:?}", edit.conflicts);
    let record = edit.record.unwrap();
    let EntityData::Account(account) = &record.data else { panic!() };
    assert_eq!(account.industry.as_deref(), Some("Energy"));
    // The link now says what zoho holds: a user there moving the industry away and back is a change.
    let away = apply(Some(&record), &account_change("z1", 40, "Acme GmbH", Some("Mining")), "zoho", &rules);
    let away = away.record.unwrap();
    let back = apply(Some(&away), &account_change("z1", 50, "Acme GmbH", Some("Retail")), "zoho", &rules);
    assert_eq!(back.changed_fields, vec!["industry".to_owned()]);
}

/// Found by the kill test (issue 17): a Zoho deal's amount edited twice, the second edit lost. The
/// copy crmsync wrote to Salesforce came back in a read that was not a whole echo (another field
/// had changed there), and its later `SystemModstamp` became the amount's provenance; the Zoho
/// user's next edit, stamped in whole seconds and so earlier than that copy, then lost under
/// newest-wins although nobody else had touched the amount.
#[test]
fn our_copy_read_back_with_another_change_never_takes_the_fields_provenance() {
    let rules = Rules::default();
    let mut record = apply(None, &account_change("z1", 10, "Acme", Some("Retail")), "zoho", &rules).record.unwrap();
    record.links.push(Link {
        connection: connection("sf"),
        object: "Account".into(),
        external_id: ExternalId::new("001"),
        last_modified: Some(ts(11)),
        last_version: None,
        pushed_hash: Some(pushed_hash(&record.data)),
        matched_by: MatchReason::Pushed,
        extra: serde_json::Map::new(),
    });
    // A Salesforce user renames the account at 20; the industry read with it is crmsync's copy.
    let renamed = apply(Some(&record), &account_change("001", 20, "Acme Corp", Some("Retail")), "sf", &rules);
    assert_eq!(renamed.changed_fields, vec!["name".to_owned()]);
    let renamed = renamed.record.unwrap();
    assert_eq!(renamed.provenance["industry"].connection, Some(connection("zoho")), "our copy asserts nothing");
    assert_eq!(renamed.provenance["industry"].modified_at, ts(10));
    // A Zoho user changed the industry at 15 (read after the rename): the only edit of that field.
    let edited = apply(Some(&renamed), &account_change("z1", 15, "Acme", Some("Energy")), "zoho", &rules);
    assert_eq!(edited.changed_fields, vec!["industry".to_owned()], "{:?}", edited.conflicts);
    let record = edited.record.unwrap();
    let EntityData::Account(account) = &record.data else { panic!() };
    assert_eq!((account.name.as_deref(), account.industry.as_deref()), (Some("Acme Corp"), Some("Energy")));
}

#[test]
fn a_field_a_push_leaves_out_keeps_the_hash_of_what_the_vendor_holds() {
    let before = EntityData::Account(Account {
        name: Some("Acme".into()),
        industry: Some("Retail".into()),
        ..Account::default()
    });
    let now = EntityData::Account(Account { name: Some("Acme AG".into()), ..Account::default() });
    let hash = pushed_hash_over(Some(&pushed_hash(&before)), &now);
    let link = Link {
        connection: connection("zoho"),
        object: "Accounts".into(),
        external_id: ExternalId::new("z1"),
        last_modified: None,
        last_version: None,
        pushed_hash: Some(hash),
        matched_by: MatchReason::Pushed,
        extra: serde_json::Map::new(),
    };
    let read_back = EntityData::Account(Account {
        name: Some("Acme AG".into()),
        industry: Some("Retail".into()),
        ..Account::default()
    });
    assert!(is_echo(&link, &read_back, Completeness::Full), "the industry was not sent: zoho still has Retail");
    let changed = EntityData::Account(Account {
        name: Some("Acme AG".into()),
        industry: Some("Mining".into()),
        ..Account::default()
    });
    assert!(!is_echo(&link, &changed, Completeness::Full));
}

#[test]
fn vendor_local_fields_do_not_fan_out() {
    let rules = Rules::default();
    let mut change = account_change("001", 10, "Acme", None);
    let record = apply(None, &change, "sf", &rules).record.unwrap();
    change.modified_at = ts(11);
    if let ChangeKind::Upsert { data: EntityData::Account(account), .. } = &mut change.kind {
        account.updated_at = Some(ts(11));
    }
    let decision = apply(Some(&record), &change, "sf", &rules);
    assert_eq!(decision.outcome, Outcome::Updated);
    assert!(!decision.fan_out, "only updated_at changed");
}

#[test]
fn delete_tombstones_and_fans_out_and_conflicts_with_a_later_edit_elsewhere() {
    let rules = Rules::default();
    let record = shared_record(&rules);
    let edited = apply(Some(&record), &account_change("z1", 20, "Acme Zoho", None), "zoho", &rules).record.unwrap();
    let mut delete = account_change("001", 30, "", None);
    delete.kind = ChangeKind::Delete;
    let decision = apply(Some(&edited), &delete, "sf", &rules);
    assert_eq!(decision.outcome, Outcome::Deleted);
    assert!(decision.fan_out);
    assert_eq!(decision.conflicts.len(), 1);
    assert!(decision.record.unwrap().is_deleted());
}

#[test]
fn stage_history_grows_when_the_stage_changes() {
    let rules = Rules::default();
    let change = |at: i64, stage: Stage| Change {
        entity: Entity::Opportunity,
        object: "Opportunity".into(),
        external_id: ExternalId::new("006"),
        modified_at: ts(at),
        version: None,
        canonical_hint: None,
        kind: ChangeKind::Upsert {
            data: EntityData::Opportunity(Opportunity {
                name: Some("Deal".into()),
                stage: Some(stage),
                amount: Some("100 EUR".parse::<Money>().unwrap()),
                ..Opportunity::default()
            }),
            completeness: Completeness::Full,
        },
        extra: serde_json::Map::new(),
    };
    let first = apply(None, &change(1, Stage::Qualified), "sf", &rules).record.unwrap();
    let second = apply(Some(&first), &change(2, Stage::Plan), "sf", &rules).record.unwrap();
    let again = apply(Some(&second), &change(2, Stage::Plan), "sf", &rules);
    assert!(again.record.is_none());
    let EntityData::Opportunity(opportunity) = &second.data else { panic!("not an opportunity") };
    let stages: Vec<Stage> = opportunity.stage_history.iter().map(|entry| entry.stage).collect();
    assert_eq!(stages, [Stage::Qualified, Stage::Plan]);
}

#[test]
fn match_keys_normalise_case_spacing_and_punctuation() {
    let rules = Rules::default();
    let data = EntityData::Account(Account {
        name: Some("  ACME  Industries, Inc. ".into()),
        domain: Some("acme.example".into()),
        number: None,
        ..Account::default()
    });
    assert_eq!(
        match_key_values(&rules, &data),
        [("name+domain".to_owned(), "acme industries inc|acme example".to_owned())]
    );
}

/// The match-key normalisation as it was first written (a string per word, then joined): the one
/// that builds the value in a single string must give the same value for any text.
fn words_lower_cased_and_joined(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split(|character: char| character.is_whitespace() || matches!(character, ',' | '.'))
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

proptest! {
    #[test]
    fn match_key_values_are_the_lower_cased_words_of_each_part_joined(
        name in "[ ,.a-zA-Z0-9\u{c0}-\u{17f}\u{391}-\u{3c9}\u{130}\u{3000}]{0,24}",
        domain in proptest::option::of("[ ,.a-zA-Z\u{3a3}\u{c9}-]{0,12}"),
    ) {
        let rules = Rules::default();
        let data = EntityData::Account(Account { name: Some(name.clone()), domain: domain.clone(), ..Account::default() });
        let expected: Vec<(String, String)> = match (words_lower_cased_and_joined(&name), domain.as_deref().and_then(words_lower_cased_and_joined)) {
            (Some(name), Some(domain)) => vec![("name+domain".to_owned(), format!("{name}|{domain}"))],
            _ => Vec::new(),
        };
        prop_assert_eq!(match_key_values(&rules, &data), expected);
    }
}

#[test]
fn routes_select_targets_and_never_the_source() {
    let rules = Rules {
        routes: vec![
            Route {
                entity: Some(Entity::Order),
                from: vec![connection("sf"), connection("zoho"), connection("d365")],
                to: vec![connection("sf"), connection("zoho"), connection("d365")],
                on_delete: DeleteAction::Mark,
            },
            Route {
                entity: Some(Entity::Account),
                from: vec![connection("sf")],
                to: vec![connection("zoho")],
                on_delete: DeleteAction::Ignore,
            },
        ],
        ..Rules::default()
    };
    let order_targets: Vec<String> = rules
        .targets(Entity::Order, Some(&connection("zoho")))
        .into_iter()
        .map(|(target, _)| target.to_string())
        .collect();
    assert_eq!(order_targets, ["sf", "d365"]);
    assert!(rules.targets(Entity::Account, Some(&connection("zoho"))).is_empty());
    assert_eq!(rules.targets(Entity::Account, None).len(), 1, "local changes go to every target");
}

proptest! {
    #[test]
    fn any_order_of_changes_with_duplicates_yields_the_same_record(order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(), duplicates in proptest::collection::vec(0..8usize, 0..4)) {
        let rules = Rules { source_priority: vec![connection("sf"), connection("zoho")], ..Rules::default() };
        let changes: Vec<(Change, &str)> = (0..8)
            .map(|index| {
                let source = if index % 2 == 0 { "sf" } else { "zoho" };
                let external = if source == "sf" { "001" } else { "z1" };
                let industry = ["Retail", "Energy", "Media", "Foods"][index % 4];
                (account_change(external, 10 + (index as i64 / 2), &format!("Name {index}"), Some(industry)), source)
            })
            .collect();
        let id = CanonicalId::new();
        let run = |sequence: &[usize]| {
            let mut record: Option<Record> = None;
            for index in sequence {
                let (change, source) = &changes[*index];
                let decision = reconcile(record.as_ref(), change, &connection(source), MatchReason::Created, &rules, ts(10_000), id).unwrap();
                if let Some(updated) = decision.record { record = Some(updated); }
            }
            record.map(|record| (record.data.clone(), record.deleted_at))
        };
        let mut with_duplicates = order.clone();
        with_duplicates.extend(duplicates);
        let reference = run(&(0..8).collect::<Vec<_>>());
        prop_assert_eq!(run(&with_duplicates), reference);
    }
}

#[test]
fn merge_and_split_move_links_and_refuse_what_would_leave_two_copies_in_one_crm() {
    let rules = Rules::default();
    let sf_only = apply(None, &account_change("001", 10, "Acme", Some("Retail")), "sf", &rules).record.unwrap();
    let zoho_only = apply(None, &account_change("z1", 12, "ACME Inc", None), "zoho", &rules).record.unwrap();
    let (merged, absorbed) = merge_records(&sf_only, &zoho_only, ts(20)).unwrap();
    assert_eq!(merged.links.len(), 2);
    assert_eq!(name_of(&merged).as_deref(), Some("Acme"), "the kept record's values win");
    assert_eq!((absorbed.merged_into, absorbed.links.len()), (Some(sf_only.id), 0));
    let another_sf = apply(None, &account_change("002", 11, "Acme twin", None), "sf", &rules).record.unwrap();
    assert!(matches!(
        merge_records(&merged, &another_sf, ts(21)),
        Err(IdentityError::SameConnection { connection, .. }) if connection == ConnectionId::new("sf")
    ));
    let (remaining, detached) = split_record(&merged, &ConnectionId::new("zoho"), CanonicalId::new(), ts(30)).unwrap();
    assert_eq!((remaining.links.len(), detached.links.len()), (1, 1));
    assert_eq!(detached.links[0].matched_by, MatchReason::Manual);
    assert!(split_record(&remaining, &ConnectionId::new("sf"), CanonicalId::new(), ts(31)).is_err(), "last copy");
}
