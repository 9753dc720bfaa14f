//! `[connections.NAME]` keys of a `kind = "salesforce"` connection.

use secrecy::SecretString;

use crate::settings::TableReader;

/// How crmsync logs in to Salesforce.
#[derive(Debug, Clone)]
pub enum SalesforceAuth {
    /// OAuth refresh-token flow (a connected app's refresh token; rotation supported).
    RefreshToken {
        /// Consumer key.
        client_id: String,
        /// Consumer secret (absent when the app does not require one).
        client_secret: Option<SecretString>,
        /// The refresh token.
        refresh_token: SecretString,
    },
    /// OAuth client-credentials flow (runs as the app's run-as user).
    ClientCredentials {
        /// Consumer key.
        client_id: String,
        /// Consumer secret.
        client_secret: SecretString,
    },
    /// OAuth JWT bearer flow (RS256-signed assertion).
    JwtBearer {
        /// Consumer key (`iss`).
        client_id: String,
        /// The user to act as (`sub`).
        username: String,
        /// PEM-encoded RSA private key.
        private_key: SecretString,
        /// `aud` claim; defaults to the login URL.
        audience: Option<String>,
    },
}

/// Outbound Message webhook settings.
#[derive(Debug, Clone)]
pub struct SalesforceWebhook {
    /// The org id every notification must carry (`00D…`, 15 or 18 characters).
    pub organization_id: String,
    /// Shared secret the Outbound Message endpoint URL carries as `?secret=…`.
    pub secret: SecretString,
}

/// A Salesforce connection's vendor settings.
#[derive(Debug, Clone)]
pub struct SalesforceConfig {
    /// Where tokens come from: production, sandbox, My Domain or a test server.
    pub login_url: url::Url,
    /// REST API version (`v62.0`).
    pub api_version: String,
    /// Login flow and credentials.
    pub auth: SalesforceAuth,
    /// The external-id field crmsync upserts on; holds the canonical id.
    pub external_id_field: String,
    /// A first full load of more records than this uses Bulk API 2.0.
    pub bulk_threshold: u64,
    /// `Sforce-Query-Options: batchSize` (200–2000).
    pub batch_size: u32,
    /// Field the sales channel is read from (on leads, opportunities and orders).
    pub channel_field: String,
    /// Outbound Message settings, if webhooks are used.
    pub webhook: Option<SalesforceWebhook>,
    /// Values for fields the org requires on create when a record has none, by `Object.Field`
    /// (`"Opportunity.StageName" = "Prospecting"`). Without one, such a record is rejected before
    /// any API call, naming the field.
    pub push_defaults: std::collections::BTreeMap<String, String>,
    /// The price book order products are taken from (`01s…`); default: the org's standard one.
    pub pricebook_id: Option<String>,
}

impl SalesforceConfig {
    /// Keys this table may hold besides the ones every connection has.
    pub const KEYS: &'static [&'static str] = &[
        "login_url",
        "api_version",
        "auth",
        "external_id_field",
        "bulk_threshold",
        "batch_size",
        "channel_field",
        "webhook",
        "push_defaults",
        "pricebook_id",
    ];

    /// Reads the vendor keys of a connection table, recording every problem.
    pub fn read(table: &mut TableReader<'_>) -> Option<Self> {
        let login_url = table.url_or("login_url", "https://login.salesforce.com");
        let api_version = table.string_or("api_version", "v62.0");
        if api_version.strip_prefix('v').is_none_or(|number| number.parse::<f32>().is_err()) {
            table.problem("api_version", format!("invalid API version {api_version:?} (expected e.g. \"v62.0\")"));
        }
        let external_id_field = table.string_or("external_id_field", "Crmsync_Id__c");
        if !external_id_field.ends_with("__c") {
            table.problem(
                "external_id_field",
                format!("{external_id_field:?} is not a custom field name (expected e.g. \"Crmsync_Id__c\")"),
            );
        }
        let bulk_threshold = table.opt_u64("bulk_threshold").unwrap_or(50_000);
        let batch_size = table.opt_u64("batch_size").unwrap_or(2000);
        if !(200..=2000).contains(&batch_size) {
            table.problem("batch_size", format!("{batch_size} is outside 200..=2000"));
        }
        let channel_field = table.string_or("channel_field", "LeadSource");
        let pricebook_id = table.opt_string("pricebook_id");
        if let Some(id) = &pricebook_id
            && (!(id.len() == 15 || id.len() == 18) || !id.starts_with("01s"))
        {
            table
                .problem("pricebook_id", format!("{id:?} is not a price book id (expected 01s…, 15 or 18 characters)"));
        }
        let mut push_defaults = std::collections::BTreeMap::new();
        if table.has("push_defaults")
            && let Some(mut defaults) = table.table("push_defaults")
        {
            for key in defaults.keys() {
                let well_formed = key
                    .split_once('.')
                    .is_some_and(|(object, field)| !object.is_empty() && !field.is_empty() && !field.contains('.'));
                let value = defaults.opt_string(&key);
                if !well_formed {
                    defaults.problem(&key, "expected an \"Object.Field\" key, e.g. \"Opportunity.StageName\"");
                } else if let Some(value) = value {
                    push_defaults.insert(key, value);
                }
            }
            defaults.finish(&[]);
        }
        let auth = table.table("auth").and_then(|mut auth| {
            let flow = auth.string("flow");
            let client_id = auth.string("client_id");
            let parsed = match flow.as_deref() {
                Some("refresh_token") => {
                    let client_secret = auth.opt_secret("client_secret");
                    let refresh_token = auth.secret("refresh_token");
                    Some(SalesforceAuth::RefreshToken {
                        client_id: client_id.clone()?,
                        client_secret,
                        refresh_token: refresh_token?,
                    })
                }
                Some("client_credentials") => {
                    let client_secret = auth.secret("client_secret");
                    Some(SalesforceAuth::ClientCredentials {
                        client_id: client_id.clone()?,
                        client_secret: client_secret?,
                    })
                }
                Some("jwt_bearer") => {
                    let username = auth.string("username");
                    let private_key = auth.secret("private_key");
                    let audience = auth.opt_string("audience");
                    Some(SalesforceAuth::JwtBearer {
                        client_id: client_id.clone()?,
                        username: username?,
                        private_key: private_key?,
                        audience,
                    })
                }
                Some(other) => {
                    auth.problem(
                        "flow",
                        format!("unknown flow {other:?} (expected refresh_token, client_credentials or jwt_bearer)"),
                    );
                    None
                }
                None => None,
            };
            auth.finish(&["client_secret", "refresh_token", "username", "private_key", "audience"]);
            parsed
        });
        if !table.has("auth") {
            table.problem("auth", "missing required table");
        }
        let webhook = if table.has("webhook") {
            table.table("webhook").and_then(|mut webhook| {
                let organization_id = webhook.string("organization_id");
                if let Some(id) = &organization_id
                    && (!(id.len() == 15 || id.len() == 18) || !id.starts_with("00D"))
                {
                    webhook.problem(
                        "organization_id",
                        format!("{id:?} is not an org id (expected 00D…, 15 or 18 characters)"),
                    );
                }
                let secret = webhook.secret("secret");
                webhook.finish(&[]);
                Some(SalesforceWebhook { organization_id: organization_id?, secret: secret? })
            })
        } else {
            None
        };
        Some(Self {
            login_url: login_url?,
            api_version,
            auth: auth?,
            external_id_field,
            bulk_threshold,
            batch_size: u32::try_from(batch_size).unwrap_or(2000),
            channel_field,
            webhook,
            push_defaults,
            pricebook_id,
        })
    }
}
