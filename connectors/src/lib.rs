//! crmsync's connectors: the contract every CRM connector fulfils, the canonical model it speaks,
//! the vendor connectors themselves and (feature `simulators`) an in-process simulator of each vendor.
//!
//! # Layout
//!
//! - [`connector`]: the [`Connector`] and [`WebhookParser`] traits and the data they exchange
//!   ([`Page`], [`Cursor`], [`Change`], [`Outgoing`], [`PushReport`]).
//! - [`error`]: [`ConnectorError`] with [`RetryAdvice`], [`WebhookError`].
//! - [`canonical`]: the canonical model (entities, money, timestamps, vocabularies, records).
//! - [`settings`]: connection settings and the [`settings::TableReader`] that validates config tables.
//! - [`http`]: shared vendor-HTTP plumbing: client, token cache, rate limit and budget, retries, the
//!   status → error table and the authenticated call every vendor makes.
//! - [`row`]: typed readers of vendor JSON rows (text, numbers, booleans, instants, dates).
//! - `salesforce`, `zoho`, `dynamics365`: one folder per vendor (config, wire, mapping, webhook, sim).
//! - `sim` (feature `simulators`): what the simulators share (fault switches, seeded data, server).
//!
//! This crate knows nothing of the store, the scheduler or the daemon's HTTP server: the arrow points
//! one way, from the daemon to the connectors.

pub mod canonical;
pub mod connector;
pub mod describe;
pub mod error;
pub mod http;
pub mod row;
pub mod settings;

pub mod dynamics365;
pub mod salesforce;
pub mod zoho;

pub use connector::{
    ApiEvent, ApiUsage, Change, ChangeKind, CheckReport, Completeness, Connector, ConnectorHost, Cursor, Fetched,
    FullRead, IdPage, MemoryHost, Outgoing, OutgoingOp, Page, PushOutcome, PushReport, PushResult, SharedHost,
    Throttling, Undecodable, WebhookDelivery, WebhookEvent, WebhookParser, WebhookReply,
};
pub use error::{ConnectorError, RetryAdvice, WebhookError};

#[cfg(feature = "simulators")]
pub mod sim;

#[cfg(feature = "testkit")]
pub mod testkit;
