//! The OAuth 2.0 JWT bearer assertion (RFC 7523) Salesforce's `jwt_bearer` flow posts:
//! `{"alg":"RS256"}` · `{"iss": consumer key, "sub": username, "aud": login URL, "exp": now + 3 min}`,
//! signed with the connected app's RSA key.
//! Reference: help.salesforce.com remoteaccess_oauth_jwt_flow.htm

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::canonical::Timestamp;
use crate::error::ConnectorError;

/// Parses a PEM RSA private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
pub fn parse_private_key(pem: &str) -> Result<RsaKeyPair, ConnectorError> {
    let invalid = |reason: &str| ConnectorError::Config(format!("invalid JWT private key: {reason}"));
    let pkcs8 = pem.contains("BEGIN PRIVATE KEY");
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).map(str::trim).collect();
    let der = STANDARD.decode(body).map_err(|_| invalid("not PEM (base64 between BEGIN/END lines)"))?;
    let key = if pkcs8 { RsaKeyPair::from_pkcs8(&der) } else { RsaKeyPair::from_der(&der) };
    key.map_err(|error| invalid(&error.to_string()))
}

/// Encodes a key as PKCS#8 PEM (the simulator hands its demo key out this way).
pub fn to_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).unwrap_or_default()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

/// Builds a signed assertion valid for three minutes.
pub fn assertion(
    key: &RsaKeyPair,
    client_id: &str,
    username: &str,
    audience: &str,
    now: Timestamp,
) -> Result<String, ConnectorError> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
    let claims =
        serde_json::json!({"iss": client_id, "sub": username, "aud": audience, "exp": now.unix_millis() / 1000 + 180});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut signature)
        .map_err(|_| ConnectorError::Config("cannot sign the JWT assertion with the configured key".into()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}
