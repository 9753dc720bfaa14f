//! `[connections.NAME]` keys of a `kind = "dynamics365"` connection.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::Value;

use crate::settings::TableReader;

/// How webhook deliveries prove they come from the configured service endpoint.
#[derive(Debug, Clone)]
pub struct Dynamics365Webhook {
    /// The shared key.
    pub key: SecretString,
    /// Header carrying the key (`HttpHeader` auth); `None`: the `code` query parameter (`WebhookKey` auth).
    pub header: Option<String>,
}

/// A Dataverse connection's vendor settings.
#[derive(Debug, Clone)]
pub struct Dynamics365Config {
    /// The environment URL (`https://contoso.crm4.dynamics.com`).
    pub org_url: url::Url,
    /// Identity platform authority (`https://login.microsoftonline.com`; sovereign clouds differ).
    pub authority_url: url::Url,
    /// Entra tenant id or domain.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Web API version (`v9.2`).
    pub api_version: String,
    /// Column holding the canonical id, defined as an alternate key on each table.
    pub alternate_key: String,
    /// `Prefer: odata.maxpagesize` (≤ 5000).
    pub max_page_size: u32,
    /// Requests per `$batch` (≤ 1000).
    pub batch_size: u32,
    /// Column the sales channel is read from (none by default).
    pub channel_field: Option<String>,
    /// Webhook authentication, if webhooks are used.
    pub webhook: Option<Dynamics365Webhook>,
    /// Values for columns Dataverse requires on create that no canonical field fills, by table
    /// logical name then column logical name (`salesorder.pricelevelid = "/pricelevels(<guid>)"`, a
    /// lookup given as the path of the record to bind; `lead.subject = "Web lead"`).
    pub create_defaults: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Dynamics365Config {
    /// Keys this table may hold besides the ones every connection has.
    pub const KEYS: &'static [&'static str] = &[
        "org_url",
        "authority_url",
        "tenant_id",
        "auth",
        "api_version",
        "alternate_key",
        "max_page_size",
        "batch_size",
        "channel_field",
        "webhook",
        "create_defaults",
    ];

    /// The tables `create_defaults` may name.
    pub const DEFAULT_TABLES: &'static [&'static str] =
        &["account", "lead", "opportunity", "salesorder", "salesorderdetail"];

    /// Reads the vendor keys of a connection table, recording every problem.
    pub fn read(table: &mut TableReader<'_>) -> Option<Self> {
        let org_url = if table.has("org_url") {
            table.opt_url("org_url")
        } else {
            table.problem("org_url", "missing required key");
            None
        };
        let authority_url = table.url_or("authority_url", "https://login.microsoftonline.com");
        let tenant_id = table.string("tenant_id");
        let api_version = table.string_or("api_version", "v9.2");
        let alternate_key = table.string_or("alternate_key", "crmsync_id");
        let max_page_size = table.opt_u64("max_page_size").unwrap_or(5000);
        if !(1..=5000).contains(&max_page_size) {
            table.problem("max_page_size", format!("{max_page_size} is outside 1..=5000"));
        }
        let batch_size = table.opt_u64("batch_size").unwrap_or(1000);
        if !(1..=1000).contains(&batch_size) {
            table.problem("batch_size", format!("{batch_size} is outside 1..=1000 (the $batch request limit)"));
        }
        let channel_field = table.opt_string("channel_field");
        let credentials = table.table("auth").map(|mut auth| {
            let client_id = auth.string("client_id");
            let client_secret = auth.secret("client_secret");
            auth.finish(&[]);
            (client_id, client_secret)
        });
        if !table.has("auth") {
            table.problem("auth", "missing required table");
        }
        let webhook = if table.has("webhook") {
            table.table("webhook").and_then(|mut webhook| {
                let key = webhook.secret("key");
                let header = webhook.opt_string("header");
                webhook.finish(&[]);
                Some(Dynamics365Webhook { key: key?, header })
            })
        } else {
            None
        };
        let create_defaults = read_create_defaults(table);
        let (client_id, client_secret) = credentials?;
        Some(Self {
            org_url: org_url?,
            authority_url: authority_url?,
            tenant_id: tenant_id?,
            client_id: client_id?,
            client_secret: client_secret?,
            api_version,
            alternate_key,
            max_page_size: u32::try_from(max_page_size).unwrap_or(5000),
            batch_size: u32::try_from(batch_size).unwrap_or(1000),
            channel_field,
            webhook,
            create_defaults,
        })
    }
}

/// Reads `create_defaults = { <table> = { <column> = value } }`: tables by logical name, values
/// strings, numbers or booleans (a lookup as `"/<entity set>(<guid>)"`).
fn read_create_defaults(table: &mut TableReader<'_>) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut defaults = BTreeMap::new();
    if !table.has("create_defaults") {
        return defaults;
    }
    let Some(mut tables) = table.table("create_defaults") else { return defaults };
    for name in tables.keys() {
        if !Dynamics365Config::DEFAULT_TABLES.contains(&name.as_str()) {
            // Reported by `finish` below, with the closest table name.
            continue;
        }
        let Some(mut columns) = tables.table(&name) else { continue };
        let mut values = BTreeMap::new();
        for column in columns.keys() {
            let value = match columns.raw(&column) {
                Some(toml::Value::String(text)) => Value::String(text.clone()),
                Some(toml::Value::Integer(number)) => Value::from(*number),
                Some(toml::Value::Float(number)) => Value::from(*number),
                Some(toml::Value::Boolean(flag)) => Value::Bool(*flag),
                Some(_) | None => {
                    columns.problem(&column, "expected a string, a number or a boolean");
                    continue;
                }
            };
            values.insert(column, value);
        }
        columns.finish(&[]);
        defaults.insert(name, values);
    }
    tables.finish(Dynamics365Config::DEFAULT_TABLES);
    defaults
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed setup should panic loudly

    use std::collections::BTreeMap;

    use super::*;
    use crate::settings::MapSecrets;

    fn read(text: &str) -> (Option<Dynamics365Config>, Vec<String>) {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let secrets = MapSecrets(BTreeMap::from([("D365".to_owned(), "s3cr3t".to_owned())]));
        let mut reader = TableReader::new("connections.d365", &table, &mut problems, &secrets);
        let config = Dynamics365Config::read(&mut reader);
        reader.finish(Dynamics365Config::KEYS);
        (config, problems.iter().map(ToString::to_string).collect())
    }

    const BASE: &str = r#"
        org_url = "https://contoso.crm4.dynamics.com"
        tenant_id = "contoso.onmicrosoft.com"
        auth = { client_id = "app", client_secret = { env = "D365" } }
    "#;

    #[test]
    fn create_defaults_are_read_by_table_and_column() {
        let text = format!(
            "{BASE}\ncreate_defaults = {{ salesorder = {{ pricelevelid = \"/pricelevels(p1)\" }}, lead = {{ subject = \"Web lead\", leadqualitycode = 2 }} }}"
        );
        let (config, problems) = read(&text);
        assert_eq!(problems, Vec::<String>::new());
        let defaults = config.unwrap().create_defaults;
        assert_eq!(defaults["salesorder"]["pricelevelid"], serde_json::json!("/pricelevels(p1)"));
        assert_eq!(defaults["lead"]["leadqualitycode"], serde_json::json!(2));
    }

    #[test]
    fn create_defaults_for_an_unknown_table_or_of_a_wrong_type_are_named() {
        let text =
            format!("{BASE}\ncreate_defaults = {{ salesorders = {{ name = \"x\" }}, lead = {{ subject = [\"a\"] }} }}");
        let (_, problems) = read(&text);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("create_defaults.lead.subject") && problems[0].contains("expected a string"));
        assert!(
            problems[1].contains("connections.d365.create_defaults.salesorders")
                && problems[1].contains("`salesorder`"),
            "{problems:?}"
        );
    }
}
