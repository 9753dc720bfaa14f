//! Zoho CRM: records API with page tokens, upsert, deleted records, Notifications API.

mod config;

pub use config::{DATA_CENTRES, ZohoConfig, ZohoWebhook};
