//! crmsync: the daemon that keeps sales data consistent across Salesforce, Zoho CRM and Dynamics 365
//! and computes one set of sales metrics over all of them.
//!
//! # Layout
//!
//! Everything vendor-agnostic lives here; vendor code lives in the `crmsync-connectors` crate.

pub use crmsync_connectors::canonical;
pub mod reconcile;
