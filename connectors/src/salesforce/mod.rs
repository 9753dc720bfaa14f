//! Salesforce: REST query/queryAll, Bulk API 2.0 queries, sObject Collections upserts, Outbound Messages.

mod config;

pub use config::{SalesforceAuth, SalesforceConfig, SalesforceWebhook};
