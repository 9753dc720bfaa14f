//! The OAuth 2.0 JWT bearer assertion (RFC 7523) Salesforce's `jwt_bearer` flow posts:
//! `{"alg":"RS256"}` · `{"iss": consumer key, "sub": username, "aud": login URL, "exp": now + 3 min}`,
//! signed with the connected app's RSA key (by `jsonwebtoken`).
//! Reference: help.salesforce.com remoteaccess_oauth_jwt_flow.htm

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::canonical::Timestamp;
use crate::error::ConnectorError;

/// Parses a PEM RSA private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
pub fn parse_private_key(pem: &str) -> Result<EncodingKey, ConnectorError> {
    EncodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|error| ConnectorError::Config(format!("invalid JWT private key: {error}")))
}

/// Encodes a key as PKCS#8 PEM (the simulator hands its demo key out this way).
pub fn to_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).unwrap_or_default()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

/// Builds a signed assertion valid for three minutes.
pub fn assertion(
    key: &EncodingKey,
    client_id: &str,
    username: &str,
    audience: &str,
    now: Timestamp,
) -> Result<String, ConnectorError> {
    let claims = Claims { iss: client_id, sub: username, aud: audience, exp: now.unix_millis() / 1000 + 180 };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key).map_err(|error| {
        ConnectorError::Config(format!("cannot sign the JWT assertion with the configured key: {error}"))
    })
}
