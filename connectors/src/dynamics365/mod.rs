//! Microsoft Dynamics 365 (Dataverse Web API): change tracking, `$batch` upserts, service-endpoint webhooks.

mod config;

pub use config::{Dynamics365Config, Dynamics365Webhook};
