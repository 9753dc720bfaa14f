//! Property tests for the parsers of outside data (issue 17, the suite): Salesforce outbound
//! messages (SOAP) and Bulk CSV, vendor JSON pages (a Salesforce query page, a Zoho records page, a
//! Dataverse change-tracked page, each row through its mapping for every entity), Zoho and Dataverse
//! webhook bodies, Dataverse `$batch` responses and WCF dates, Salesforce organization ids,
//! configuration files. Each is fed a documented example (crm-apis.md) mutated at random
//! (cut short, bytes overwritten, garbage spliced in, a span deleted) and arbitrary input: no input
//! may panic, and a refused input gets an error that says something.

use std::collections::{BTreeMap, HashMap};

use crmsync::config::Config;
use crmsync_connectors::WebhookDelivery;
use crmsync_connectors::canonical::{Currency, Entity};
use crmsync_connectors::dynamics365::{self, Dynamics365Webhook};
use crmsync_connectors::salesforce;
use crmsync_connectors::settings::MapSecrets;
use crmsync_connectors::zoho::{self, ZohoWebhook};
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::SecretString;

/// crm-apis.md §1.10 (developer.salesforce.com … sforce_api_om_outboundmessaging_notifications.htm).
const OUTBOUND_MESSAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>00D000000000001AAA</OrganizationId><ActionId>04k000000000001AAA</ActionId><SessionId xsi:nil="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/><EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/62.0/00D000000000001</EnterpriseUrl><PartnerUrl>https://example.my.salesforce.com/services/Soap/u/62.0/00D000000000001</PartnerUrl><Notification><Id>04l000000000001AAA</Id><sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><sf:Id>006000000000001AAA</sf:Id><sf:Name>Acme &amp; Co renewal</sf:Name><sf:StageName>Closed Won</sf:StageName><sf:Amount>1200.50</sf:Amount><sf:SystemModstamp>2026-11-02T10:00:00.000+0000</sf:SystemModstamp></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"#;

/// crm-apis.md §1.7 (Bulk API 2.0 query results: RFC 4180 CSV, header row first).
const BULK_CSV: &str = "\"Id\",\"Name\",\"Description\",\"AnnualRevenue\"\n\"001000000000001AAA\",\"Acme, \"\"Inc\"\"\",\"two\nlines\",\"1200.5\"\n\"001000000000002AAA\",\"Globex\",\"\",\"\"\n";

/// crm-apis.md §2.8 (zoho.com/crm/developer/docs/api/v8/notifications/enable.html): a callback.
const ZOHO_CALLBACK: &str = r#"{"server_time":1764669600000,"query_params":{},"module":"Deals","resource_uri":"https://www.zohoapis.com/crm/v8/Deals","ids":["554023000000000131","554023000000000132"],"affected_fields":[{"554023000000000131":["Stage","Amount"]}],"operation":"update","channel_id":"10000","token":"zoho-token"}"#;

/// crm-apis.md §3.8 (MicrosoftDocs/powerapps-docs … use-webhooks.md): a RemoteExecutionContext.
const DATAVERSE_CONTEXT: &str = r#"{"BusinessUnitId":"b6b7b3a2-0000-0000-0000-000000000001","CorrelationId":"8c4f0c54-0000-0000-0000-000000000002","Depth":1,"InitiatingUserId":"75c2dd58-0000-0000-0000-000000000003","InputParameters":[{"key":"Target","value":{"__type":"Entity:http://schemas.microsoft.com/xrm/2011/Contracts","Attributes":[{"key":"name","value":"Contoso"},{"key":"accountid","value":"6a3c2b1e-0000-0000-0000-000000000004"},{"key":"modifiedon","value":"\/Date(1764669600000)\/"}],"EntityState":null,"FormattedValues":[],"Id":"6a3c2b1e-0000-0000-0000-000000000004","KeyAttributes":[],"LogicalName":"account","RelatedEntities":[],"RowVersion":"1234567"}}],"IsExecutingOffline":false,"IsInTransaction":false,"IsOfflinePlayback":false,"IsolationMode":1,"MessageName":"Update","Mode":1,"OperationCreatedOn":"\/Date(1764669600000-0700)\/","OperationId":"0c3f8d35-0000-0000-0000-000000000005","OrganizationId":"4d2c1b0a-0000-0000-0000-000000000006","OrganizationName":"contoso","OutputParameters":[],"OwningExtension":{"Id":"1f1f1f1f-0000-0000-0000-000000000007","KeyAttributes":[],"LogicalName":"sdkmessageprocessingstep","Name":"crmsync: Update of account","RowVersion":null},"ParentContext":null,"PostEntityImages":[],"PreEntityImages":[],"PrimaryEntityId":"6a3c2b1e-0000-0000-0000-000000000004","PrimaryEntityName":"account","RequestId":"2e2e2e2e-0000-0000-0000-000000000008","SecondaryEntityName":"none","SharedVariables":[],"Stage":40,"UserId":"75c2dd58-0000-0000-0000-000000000003"}"#;

/// crm-apis.md §3.5 (MicrosoftDocs/powerapps-docs … execute-batch-operations-using-web-api.md).
const BATCH_BOUNDARY: &str = "batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f";
const BATCH_RESPONSE: &str = "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nLocation: https://contoso.crm.dynamics.com/api/data/v9.2/accounts(a59c24d4-0000-0000-0000-000000000001)\r\nOData-EntityId: https://contoso.crm.dynamics.com/api/data/v9.2/accounts(a59c24d4-0000-0000-0000-000000000001)\r\n\r\n\r\n--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 400 Bad Request\r\nREQ_ID: 5ecd1cb3-0000-0000-0000-000000000002\r\nContent-Type: application/json; odata.metadata=minimal\r\nOData-Version: 4.0\r\n\r\n{\"error\":{\"code\":\"0x80044331\",\"message\":\"A validation error occurred.\"}}\r\n--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f--\r\n";

/// The repository's realistic three-connection configuration.
const EXAMPLE_CONFIG: &str = include_str!("../../../config/example.toml");

/// A valid sample, changed at random, or arbitrary bytes.
fn mutated(sample: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let bytes = sample.as_bytes();
    let len = bytes.len();
    prop_oneof![
        (0..=len).prop_map(move |cut| bytes[..cut].to_vec()),
        prop::collection::vec((0..len, any::<u8>()), 1..8).prop_map(move |writes| {
            let mut changed = bytes.to_vec();
            for (at, byte) in writes {
                changed[at] = byte;
            }
            changed
        }),
        (0..=len, prop::collection::vec(any::<u8>(), 1..64)).prop_map(move |(at, junk)| {
            let mut changed = bytes.to_vec();
            changed.splice(at..at, junk);
            changed
        }),
        (0..=len, "[<>{}\\[\\]\",:&;=/\\\\ a-z0-9\u{e9}\u{1F600}-]{1,24}").prop_map(move |(at, text)| {
            let mut changed = bytes.to_vec();
            changed.splice(at..at, text.into_bytes());
            changed
        }),
        (0..=len, 0..=len).prop_map(move |(from, to)| {
            let mut changed = bytes.to_vec();
            changed.drain(from.min(to)..from.max(to));
            changed
        }),
        prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// The text of a mutated sample (lossy: the parsers under test take `&str`).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn says_something(error: &impl std::fmt::Display) -> bool {
    error.to_string().trim().len() > 3
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn salesforce_outbound_messages(body in mutated(OUTBOUND_MESSAGE)) {
        if let Err(error) = salesforce::webhook::parse(&body) {
            prop_assert!(says_something(&error), "{error}");
        }
    }

    #[test]
    fn salesforce_bulk_csv(body in mutated(BULK_CSV)) {
        match salesforce::wire::parse_csv(&text(&body)) {
            Ok(rows) => prop_assert!(rows.len() <= body.len() + 1),
            Err(error) => prop_assert!(says_something(&error), "{error}"),
        }
    }

    #[test]
    fn zoho_notifications(body in mutated(ZOHO_CALLBACK)) {
        let config = ZohoWebhook {
            token: SecretString::from("zoho-token".to_owned()),
            notify_url: None,
            channel_id: 10000,
        };
        let headers = HeaderMap::new();
        let delivery = WebhookDelivery { headers: &headers, query: None, body: &body };
        if let Err(error) = zoho::webhook::parse(&config, Entity::ALL, &delivery) {
            prop_assert!(says_something(&error), "{error}");
        }
    }

    #[test]
    fn dataverse_webhook_contexts(body in mutated(DATAVERSE_CONTEXT)) {
        let config = Dynamics365Webhook {
            key: SecretString::from("dataverse-key".to_owned()),
            header: Some("x-crmsync-key".to_owned()),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-crmsync-key", HeaderValue::from_static("dataverse-key"));
        let delivery = WebhookDelivery { headers: &headers, query: None, body: &body };
        if let Err(error) = dynamics365::webhook::parse(&config, Entity::ALL, &delivery) {
            prop_assert!(says_something(&error), "{error}");
        }
    }

    #[test]
    fn dataverse_batch_responses(body in mutated(BATCH_RESPONSE), boundary in mutated(BATCH_BOUNDARY)) {
        for boundary in [BATCH_BOUNDARY.to_owned(), text(&boundary)] {
            if let Err(error) = dynamics365::wire::decode_batch_response(&boundary, &text(&body)) {
                prop_assert!(says_something(&error), "{error}");
            }
            if let Err(error) = dynamics365::wire::decode_batch(&boundary, &text(&body)) {
                prop_assert!(says_something(&error), "{error}");
            }
        }
        let content_type = format!("multipart/mixed; boundary={}", text(&boundary));
        let _ = dynamics365::wire::boundary_of(&content_type);
    }

    /// Issue 17 §3: a non-ASCII organization id used to panic the handler (byte slicing).
    #[test]
    fn salesforce_organization_ids(left in ".{0,24}", right in ".{0,24}") {
        let _ = salesforce::webhook::same_org(&left, &right);
    }

    #[test]
    fn dataverse_wcf_dates(date in "\\\\?/Date\\([-+0-9]{0,24}\\)\\\\?/|.{0,32}") {
        let _ = dynamics365::wire::wcf_date_millis(&date);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Configuration text as an operator might break it: every problem is reported, nothing panics.
    #[test]
    fn configuration_files(body in mutated(EXAMPLE_CONFIG)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crmsync.toml");
        std::fs::write(&path, &body).unwrap();
        let secrets = MapSecrets(BTreeMap::new());
        if let Err(error) = Config::load(Some(&path), Some(HashMap::new()), &secrets) {
            prop_assert!(says_something(&error), "{error}");
        }
    }

    /// A well-formed file with one value of the wrong kind or range, anywhere: refused with the key
    /// named, never a panic.
    #[test]
    fn configuration_values(path_index in any::<prop::sample::Index>(), value in toml_value()) {
        let mut table: toml::Table = toml::from_str(EXAMPLE_CONFIG).unwrap();
        let paths = leaf_paths(&toml::Value::Table(table.clone()), String::new());
        let chosen = paths[path_index.index(paths.len())].clone();
        set_path(&mut table, &chosen, value);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crmsync.toml");
        std::fs::write(&file, toml::to_string(&table).unwrap()).unwrap();
        let secrets = MapSecrets(BTreeMap::new());
        if let Err(error) = Config::load(Some(&file), Some(HashMap::new()), &secrets) {
            prop_assert!(says_something(&error), "{error}");
        }
    }
}

/// crm-apis.md §1.2: a REST query page (with the fields the mapping reads).
const SALESFORCE_PAGE: &str = r#"{"totalSize":2,"done":false,"nextRecordsUrl":"/services/data/v62.0/query/01gRO0000016PIAYA2-2000","records":[{"attributes":{"type":"Opportunity","url":"/services/data/v62.0/sobjects/Opportunity/006D000000IRFmaIAH"},"Id":"006D000000IRFmaIAH","Name":"Test 1","StageName":"Closed Won","Amount":1000.5,"CloseDate":"2024-03-31","AccountId":"001D000000IRFmaIAH","IsWon":true,"IsClosed":true,"LeadSource":"Web","CurrencyIsoCode":"EUR","CreatedDate":"2023-10-15T10:30:00.000+0000","SystemModstamp":"2024-01-02T03:04:05.000+0000"},{"attributes":{"type":"Account","url":"/services/data/v62.0/sobjects/Account/001D000000IRFmaIAH"},"Id":"001D000000IRFmaIAH","Name":"Acme","AccountNumber":"A-1","Website":"acme.example","Industry":"Energy","BillingCountry":"France","Owner":{"attributes":{"type":"User"},"Name":"Ada"},"Status":"Activated","TotalAmount":"12.5","EffectiveDate":"2024-01-02","SystemModstamp":"2024-01-02T03:04:05Z"}]}"#;

/// crm-apis.md §2.2: a records page.
const ZOHO_PAGE: &str = r#"{"data":[{"id":"4150868000000002175","Owner":{"name":"Patricia Boyle","id":"4150868000000225013","email":"p@x.com"},"Deal_Name":"Big deal","Account_Name":{"name":"Zylker","id":"4150868000000224005"},"Stage":"Closed Won","Amount":1000.5,"Closing_Date":"2024-03-31","Lead_Source":"Web","Currency":"EUR","Status":"Delivered","Grand_Total":"12.5","Ordered_Items":[{"Product_Name":{"name":"Widget","id":"41"},"Quantity":2,"List_Price":6.25,"Total":12.5}],"Created_Time":"2023-10-15T10:30:00+05:30","Modified_Time":"2023-10-15T14:20:00+05:30"}],"info":{"per_page":200,"count":1,"page":1,"sort_by":"id","sort_order":"desc","more_records":true,"next_page_token":"c8582xx9e7c7","previous_page_token":null,"page_token_expiry":"2022-11-11T15:08:14+05:30"}}"#;

/// crm-apis.md §3.2 and §3.3: a change-tracked page with a changed row and a deletion.
const DATAVERSE_PAGE: &str = r#"{"@odata.context":"https://org.crm.dynamics.com/api/data/v9.2/$metadata#accounts/$delta","value":[{"@odata.etag":"W/\"72201545\"","name":"Contoso","accountnumber":"A-1","accountid":"49b0be2e-d01c-ed11-b83e-000d3a572421","statecode":1,"statecode@OData.Community.Display.V1.FormattedValue":"Won","estimatedvalue":1000.5,"_parentaccountid_value":"49b0be2e-d01c-ed11-b83e-000d3a572422","_transactioncurrencyid_value":"cur-1","totalamount":12.5,"modifiedon":"2024-01-02T03:04:05Z","createdon":"2023-10-15T10:30:00Z"},{"@odata.context":"https://org.crm.dynamics.com/api/data/v9.2/$metadata#accounts/$deletedEntity","id":"2e451703-c686-e711-80e5-00155db19e6d","reason":"deleted"}],"@odata.deltaLink":"https://org.crm.dynamics.com/api/data/v9.2/accounts?$select=name&$deltatoken=919042%2108%2f22%2f2017%2008%3a10%3a44"}"#;

/// The three simulators' connections, as configured (the mappings read their settings).
fn vendor_configs() -> &'static crmsync::config::Config {
    static CONFIG: std::sync::OnceLock<crmsync::config::Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let url = "http://127.0.0.1:9";
        let text = [
            salesforce::sim::connection_toml("salesforce", url),
            zoho::sim::connection_toml("zoho", url),
            dynamics365::sim::connection_toml("dynamics365", url),
        ]
        .join("\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crmsync.toml");
        std::fs::write(&path, text).unwrap();
        let secrets: BTreeMap<String, String> = salesforce::sim::demo_secrets()
            .into_iter()
            .chain(zoho::sim::demo_secrets())
            .chain(dynamics365::sim::demo_secrets())
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        Config::load(Some(&path), Some(HashMap::new()), &MapSecrets(secrets)).unwrap()
    })
}

fn connection(name: &str) -> &'static crmsync::config::ConnectionConfig {
    &vendor_configs().connections[&crmsync_connectors::canonical::ConnectionId::new(name)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A query page as Salesforce might garble it: refused as a page, or every row mapped to a
    /// change or refused with a reason, for every entity.
    #[test]
    fn salesforce_query_pages(body in mutated(SALESFORCE_PAGE)) {
        let connection = connection("salesforce");
        let crmsync::config::VendorConfig::Salesforce(config) = &connection.vendor else { unreachable!() };
        let currency = Currency::new("EUR").unwrap();
        if let Ok(page) = serde_json::from_slice::<salesforce::wire::QueryResponse>(&body) {
            for row in &page.records {
                for entity in Entity::ALL {
                    let mut unmapped = salesforce::mapping::Unmapped::default();
                    let mapped = salesforce::mapping::to_change(
                        *entity, row, &connection.settings.vocabulary, config, Some(&currency), &mut unmapped,
                    );
                    if let Err(error) = mapped {
                        prop_assert!(says_something(&error), "{error}");
                    }
                }
            }
        }
    }

    #[test]
    fn zoho_record_pages(body in mutated(ZOHO_PAGE)) {
        let connection = connection("zoho");
        let crmsync::config::VendorConfig::Zoho(config) = &connection.vendor else { unreachable!() };
        let currency = Currency::new("EUR").unwrap();
        if let Ok(page) = serde_json::from_slice::<zoho::wire::RecordsResponse>(&body) {
            for row in &page.data {
                for entity in Entity::ALL {
                    let mut unmapped = Vec::new();
                    let mapped = zoho::mapping::to_change(
                        *entity, row, &connection.settings.vocabulary, config, Some(&currency), &mut unmapped,
                    );
                    if let Err(error) = mapped {
                        prop_assert!(says_something(&error), "{error}");
                    }
                }
            }
        }
    }

    #[test]
    fn dataverse_collection_pages(body in mutated(DATAVERSE_PAGE)) {
        let connection = connection("dynamics365");
        let crmsync::config::VendorConfig::Dynamics365(config) = &connection.vendor else { unreachable!() };
        let currency = Currency::new("EUR").unwrap();
        let currencies = dynamics365::mapping::Currencies::new([("cur-1".to_owned(), "EUR".to_owned())]);
        let products = dynamics365::mapping::Products::default();
        let context = dynamics365::mapping::MapContext {
            vocabulary: &connection.settings.vocabulary,
            config,
            currencies: &currencies,
            products: &products,
            default_currency: &currency,
        };
        if let Ok(page) = dynamics365::wire::EntityCollection::parse(body.into()) {
            let rows: Vec<_> = page.value.iter().map(|row| dynamics365::wire::read_row(row, "accounts").unwrap()).collect();
            for row in &rows {
                let _ = dynamics365::wire::is_deleted_entity(row);
                for entity in Entity::ALL {
                    let mut unmapped = Vec::new();
                    let lines = (*entity == Entity::Order).then_some(rows.as_slice());
                    if let Err(error) = dynamics365::mapping::to_change(*entity, row, lines, &context, &mut unmapped) {
                        prop_assert!(says_something(&error), "{error}");
                    }
                }
            }
        }
    }
}

/// The page samples above map as they are (so the mutations start from pages the mappings read).
#[test]
fn the_vendor_page_samples_map_unchanged() {
    let currency = Currency::new("EUR").unwrap();
    let salesforce_connection = connection("salesforce");
    let crmsync::config::VendorConfig::Salesforce(config) = &salesforce_connection.vendor else { unreachable!() };
    let page: salesforce::wire::QueryResponse = serde_json::from_str(SALESFORCE_PAGE).unwrap();
    for (row, entity) in page.records.iter().zip([Entity::Opportunity, Entity::Account]) {
        let mut unmapped = salesforce::mapping::Unmapped::default();
        let vocabulary = &salesforce_connection.settings.vocabulary;
        salesforce::mapping::to_change(entity, row, vocabulary, config, Some(&currency), &mut unmapped).unwrap();
    }
    let zoho_connection = connection("zoho");
    let crmsync::config::VendorConfig::Zoho(config) = &zoho_connection.vendor else { unreachable!() };
    let page: zoho::wire::RecordsResponse = serde_json::from_str(ZOHO_PAGE).unwrap();
    let mut unmapped = Vec::new();
    let vocabulary = &zoho_connection.settings.vocabulary;
    zoho::mapping::to_change(Entity::Opportunity, &page.data[0], vocabulary, config, Some(&currency), &mut unmapped)
        .unwrap();
    let dataverse_connection = connection("dynamics365");
    let crmsync::config::VendorConfig::Dynamics365(config) = &dataverse_connection.vendor else { unreachable!() };
    let (currencies, products) = (
        dynamics365::mapping::Currencies::new([("cur-1".to_owned(), "EUR".to_owned())]),
        dynamics365::mapping::Products::default(),
    );
    let context = dynamics365::mapping::MapContext {
        vocabulary: &dataverse_connection.settings.vocabulary,
        config,
        currencies: &currencies,
        products: &products,
        default_currency: &currency,
    };
    let page = dynamics365::wire::EntityCollection::parse(DATAVERSE_PAGE.into()).unwrap();
    let rows: Vec<_> = page.value.iter().map(|row| dynamics365::wire::read_row(row, "accounts").unwrap()).collect();
    dynamics365::mapping::to_change(Entity::Account, &rows[0], None, &context, &mut Vec::new()).unwrap();
    assert!(dynamics365::wire::is_deleted_entity(&rows[1]));
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        ".{0,16}".prop_map(toml::Value::String),
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        Just(toml::Value::String("0s".into())),
        Just(toml::Value::String("9999999999999999999h".into())),
        Just(toml::Value::String("http://169.254.169.254/".into())),
        Just(toml::Value::String("/dev/zero".into())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|map| toml::Value::Table(map.into_iter().collect())),
        ]
    })
}

/// Dotted paths of every value in a table (array items as `[i]`).
fn leaf_paths(value: &toml::Value, prefix: String) -> Vec<String> {
    let mut paths = vec![prefix.clone()];
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                paths.extend(leaf_paths(child, path));
            }
        }
        toml::Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                paths.extend(leaf_paths(child, format!("{prefix}[{index}]")));
            }
        }
        _ => {}
    }
    paths.retain(|path| !path.is_empty());
    paths
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut current = table;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let last = parts.peek().is_none();
        match (index, last) {
            (None, true) => {
                current.insert(key.to_owned(), value);
                return;
            }
            (None, false) => match current.get_mut(key) {
                Some(toml::Value::Table(next)) => current = next,
                _ => return,
            },
            (Some(index), _) => {
                let Some(toml::Value::Array(items)) = current.get_mut(key) else { return };
                if last {
                    items[index] = value;
                    return;
                }
                match &mut items[index] {
                    toml::Value::Table(next) => current = next,
                    _ => return,
                }
            }
        }
    }
}
