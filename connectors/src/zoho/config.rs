//! `[connections.NAME]` keys of a `kind = "zoho"` connection.

use secrecy::SecretString;

use crate::settings::TableReader;

/// Zoho data centres and their accounts servers.
pub const DATA_CENTRES: &[(&str, &str)] = &[
    ("us", "https://accounts.zoho.com"),
    ("eu", "https://accounts.zoho.eu"),
    ("in", "https://accounts.zoho.in"),
    ("au", "https://accounts.zoho.com.au"),
    ("jp", "https://accounts.zoho.jp"),
    ("ca", "https://accounts.zohocloud.ca"),
    ("sa", "https://accounts.zoho.sa"),
    ("cn", "https://accounts.zoho.com.cn"),
];

/// Notification API (watch channel) settings.
#[derive(Debug, Clone)]
pub struct ZohoWebhook {
    /// The verification token Zoho echoes in every callback (≤ 50 characters).
    pub token: SecretString,
    /// The public URL of this connection's webhook endpoint (`https://crmsync.example.com/webhooks/zoho_eu`);
    /// when set, crmsync enables and renews the watch channel itself.
    pub notify_url: Option<url::Url>,
    /// The channel id to register.
    pub channel_id: u64,
}

/// A Zoho CRM connection's vendor settings.
#[derive(Debug, Clone)]
pub struct ZohoConfig {
    /// Token endpoint host (from `data_centre`, or `accounts_url`).
    pub accounts_url: url::Url,
    /// API host; `None`: use the token response's `api_domain`.
    pub api_domain: Option<url::Url>,
    /// API version path segment (`v8`; page tokens need v3+).
    pub api_version: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: SecretString,
    /// The refresh token.
    pub refresh_token: SecretString,
    /// Unique custom field crmsync upserts on (`duplicate_check_fields`); holds the canonical id.
    pub external_id_field: String,
    /// Field the sales channel is read from.
    pub channel_field: String,
    /// Notification settings, if webhooks are used.
    pub webhook: Option<ZohoWebhook>,
}

impl ZohoConfig {
    /// Keys this table may hold besides the ones every connection has.
    pub const KEYS: &'static [&'static str] = &[
        "data_centre",
        "accounts_url",
        "api_domain",
        "api_version",
        "auth",
        "external_id_field",
        "channel_field",
        "webhook",
    ];

    /// Reads the vendor keys of a connection table, recording every problem.
    pub fn read(table: &mut TableReader<'_>) -> Option<Self> {
        let data_centre = table.string_or("data_centre", "us").to_ascii_lowercase();
        let accounts_url = if table.has("accounts_url") {
            table.opt_url("accounts_url")
        } else {
            match DATA_CENTRES.iter().find(|(code, _)| *code == data_centre) {
                Some((_, url)) => url::Url::parse(url).ok(),
                None => {
                    let known: Vec<&str> = DATA_CENTRES.iter().map(|(code, _)| *code).collect();
                    table.problem(
                        "data_centre",
                        format!(
                            "unknown data centre {data_centre:?} (expected one of {}, or set accounts_url)",
                            known.join(", ")
                        ),
                    );
                    None
                }
            }
        };
        let api_domain = table.opt_url("api_domain");
        let api_version = table.string_or("api_version", "v8");
        match api_version.strip_prefix('v').and_then(|number| number.split('.').next()?.parse::<u32>().ok()) {
            Some(major) if major >= 3 => {}
            _ => table.problem(
                "api_version",
                format!(
                    "unsupported API version {api_version:?} (page_token paging needs v3 or later; default \"v8\")"
                ),
            ),
        }
        let external_id_field = table.string_or("external_id_field", "Crmsync_Id");
        let channel_field = table.string_or("channel_field", "Lead_Source");
        let credentials = table.table("auth").map(|mut auth| {
            let client_id = auth.string("client_id");
            let client_secret = auth.secret("client_secret");
            let refresh_token = auth.secret("refresh_token");
            auth.finish(&[]);
            (client_id, client_secret, refresh_token)
        });
        if !table.has("auth") {
            table.problem("auth", "missing required table");
        }
        let webhook = if table.has("webhook") {
            table.table("webhook").and_then(|mut webhook| {
                let token = webhook.secret("token");
                let notify_url = webhook.opt_url("notify_url");
                let channel_id = webhook.opt_u64("channel_id").unwrap_or(1_000_000_068_001);
                webhook.finish(&[]);
                Some(ZohoWebhook { token: token?, notify_url, channel_id })
            })
        } else {
            None
        };
        let (client_id, client_secret, refresh_token) = credentials?;
        Some(Self {
            accounts_url: accounts_url?,
            api_domain,
            api_version,
            client_id: client_id?,
            client_secret: client_secret?,
            refresh_token: refresh_token?,
            external_id_field,
            channel_field,
            webhook,
        })
    }
}
