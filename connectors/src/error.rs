//! Errors at the connector boundary, classified where they are understood; the scheduler decides
//! what to do with them through [`RetryAdvice`].

use std::time::Duration;

/// What the caller should do about a failed vendor call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAdvice {
    /// Wait exactly this long (the vendor said so), then retry.
    RetryAfter(Duration),
    /// Retry with capped, jittered back-off.
    Backoff,
    /// Refresh the access token once, then retry.
    RefreshTokenThenRetry,
    /// The saved cursor is no longer valid: drop it and resynchronise from the start.
    Resync,
    /// Retrying will not help: stop this connection × entity and alert.
    GiveUp,
}

/// A vendor call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The vendor is throttling us (HTTP 429, Salesforce's concurrent-request `REQUEST_LIMIT_EXCEEDED`).
    #[error("rate limited by the vendor: {message}")]
    RateLimited {
        /// What the vendor said.
        message: String,
        /// The vendor's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The vendor's daily API allocation is used up, or so nearly that calling would eat into the
    /// configured headroom (Salesforce `TotalRequests Limit exceeded`): no calls to this org until a
    /// probe shows room again.
    #[error("the vendor's daily API limit is reached: {message}")]
    QuotaExhausted {
        /// What the vendor said (or the usage that left too little headroom).
        message: String,
        /// When to probe again.
        retry_after: Duration,
    },
    /// A call kept failing transiently until its retry time budget ran out. The cursor is kept; the
    /// next pass resumes from it.
    #[error("gave up after {attempts} attempts in {}s", elapsed.as_secs())]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        #[source]
        last: Box<ConnectorError>,
    },
    /// Our own daily API budget for this connection is spent.
    #[error("daily API budget exhausted ({used} of {limit} calls used)")]
    BudgetExhausted {
        /// Calls counted in the current window.
        used: u64,
        /// The configured budget.
        limit: u64,
        /// Time until the window frees a call.
        retry_after: Duration,
    },
    /// The access token was refused even after a refresh.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// What the vendor said.
        message: String,
    },
    /// The credentials themselves are invalid or revoked (`invalid_grant`, `invalid_client`): a person
    /// must fix the configuration.
    #[error("credentials rejected by {endpoint}: {message}")]
    InvalidGrant {
        /// The token endpoint that refused them.
        endpoint: String,
        /// The vendor's error code and description.
        message: String,
    },
    /// The request never got an HTTP answer (connect, TLS, timeout, reset).
    #[error("transport error calling {url}")]
    Transport {
        /// The URL called (never with credentials).
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The vendor failed (5xx) or gave up waiting for the request (408): transient.
    #[error("vendor error {status} from {url}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The URL called.
        url: String,
        /// The vendor's message.
        message: String,
    },
    /// The vendor refused the request (4xx other than auth and throttling).
    #[error("request rejected with {status} {code}: {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The vendor's error code (`MALFORMED_QUERY`, `INVALID_DATA`).
        code: String,
        /// The vendor's message.
        message: String,
    },
    /// A response body did not have the documented shape (truncated, wrong type).
    #[error("could not decode {context}")]
    Decode {
        /// What was being decoded (`Opportunity query page`).
        context: String,
        /// The parse failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A field the mapping needs is gone or retyped in the vendor: the entity stops instead of writing nulls.
    #[error("schema drift in {object}: {message}")]
    SchemaDrift {
        /// The vendor object.
        object: String,
        /// What changed.
        message: String,
    },
    /// The saved cursor expired in the vendor (Dataverse delta token, Zoho page token).
    #[error("cursor expired: {message}")]
    CursorExpired {
        /// What the vendor said.
        message: String,
    },
    /// The connection's configuration cannot work (`entity not supported`, bad URL).
    #[error("configuration error: {0}")]
    Config(String),
    /// Saving connector state (a rotated refresh token) failed; the new secret is not used unsaved.
    #[error("could not persist connector state {key}: {message}")]
    State {
        /// The state key.
        key: String,
        /// Why.
        message: String,
    },
}

impl ConnectorError {
    /// Returns how the caller should react, following the usual table: 429 retries after the vendor's
    /// delay, 408, 5xx, transport failures and truncated bodies back off, other 4xx give up.
    pub fn retry_advice(&self) -> RetryAdvice {
        match self {
            Self::RateLimited { retry_after: Some(delay), .. } => RetryAdvice::RetryAfter(*delay),
            Self::RateLimited { retry_after: None, .. } => RetryAdvice::Backoff,
            Self::BudgetExhausted { retry_after, .. } | Self::QuotaExhausted { retry_after, .. } => {
                RetryAdvice::RetryAfter(*retry_after)
            }
            Self::GaveUp { last, .. } => last.retry_advice(),
            Self::Unauthorized { .. } => RetryAdvice::RefreshTokenThenRetry,
            Self::Transport { .. } | Self::Server { .. } | Self::Decode { .. } => RetryAdvice::Backoff,
            Self::Rejected { status: 408, .. } => RetryAdvice::Backoff,
            Self::CursorExpired { .. } => RetryAdvice::Resync,
            Self::State { .. } => RetryAdvice::Backoff,
            Self::InvalidGrant { .. } | Self::Rejected { .. } | Self::SchemaDrift { .. } | Self::Config(_) => {
                RetryAdvice::GiveUp
            }
        }
    }

    /// Returns the failure itself: the last error of a call that [gave up](Self::GaveUp), else this one.
    pub fn root(&self) -> &ConnectorError {
        match self {
            Self::GaveUp { last, .. } => last.root(),
            other => other,
        }
    }

    /// Returns whether retrying might succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self.retry_advice(), RetryAdvice::GiveUp)
    }

    /// Builds a [`ConnectorError::Decode`] from any parse error.
    pub fn decode(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Decode { context: context.into(), source: Box::new(source) }
    }
}

/// Formats an error with its causes on one line (`a: b: c`), as logs and status show it.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A webhook delivery that cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The delivery's secret, token or organisation does not match the configuration.
    #[error("webhook authentication failed: {0}")]
    Unauthenticated(String),
    /// The body is not a delivery this connection understands.
    #[error("malformed webhook payload: {0}")]
    Malformed(String),
    /// This connection has no webhook configured.
    #[error("webhooks are not configured for this connection")]
    NotConfigured,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_table_follows_the_status_classes() {
        let rejected = |status| ConnectorError::Rejected { status, code: "X".into(), message: "m".into() };
        assert_eq!(rejected(400).retry_advice(), RetryAdvice::GiveUp);
        assert_eq!(rejected(408).retry_advice(), RetryAdvice::Backoff);
        let server = ConnectorError::Server { status: 503, url: "u".into(), message: "m".into() };
        assert_eq!(server.retry_advice(), RetryAdvice::Backoff);
        let throttled =
            ConnectorError::RateLimited { message: "slow".into(), retry_after: Some(Duration::from_secs(7)) };
        assert_eq!(throttled.retry_advice(), RetryAdvice::RetryAfter(Duration::from_secs(7)));
        let revoked = ConnectorError::InvalidGrant { endpoint: "e".into(), message: "invalid_grant".into() };
        assert!(!revoked.is_retryable());
        assert_eq!(ConnectorError::CursorExpired { message: "old".into() }.retry_advice(), RetryAdvice::Resync);
    }
}
