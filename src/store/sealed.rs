//! Connector state that is a credential (a rotated Salesforce refresh token) is stored encrypted.
//!
//! **Why encrypt rather than keep it out of the store:** SPEC §3 requires a rotated refresh token to
//! be persisted before it is used (the old one is dead once the vendor rotates it), and the store is
//! the one durable, flushed place crmsync has. Keeping it in a separate file would only move the
//! plaintext next to the store. So it stays in the store, sealed with AES-256-GCM under a key
//! derived (HMAC-SHA256) from the connection's configured credentials, which live in the
//! environment or a secrets file, never in the store. A copied store directory, a backup or an
//! `export` therefore does not reveal a usable token. Values are `sealed:v1:` + base64(nonce ‖
//! ciphertext ‖ tag), with the connection and state name as associated data, so a sealed value
//! cannot be moved to another connection or key.
//!
//! If the configured credentials change, a sealed value no longer opens: it is treated as absent
//! (with a warning) and the connector falls back to the configured token, as with a fresh store.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crmsync_connectors::canonical::ConnectionId;

/// The prefix of a sealed value.
const SEALED_V1: &str = "sealed:v1:";

/// A connection's key for its sealed state. Debug never shows it.
pub struct StateKey(LessSafeKey);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

/// A sealed value that does not open (another key, or damaged).
#[derive(Debug, thiserror::Error)]
#[error("sealed state {name:?} of {connection} does not open with the configured credentials")]
pub struct UnsealError {
    connection: ConnectionId,
    name: String,
}

impl StateKey {
    /// Derives the key from a connection's configured credentials (each part is length-prefixed, so
    /// two different lists never give the same input).
    pub fn derive(connection: &ConnectionId, credentials: &[&str]) -> Self {
        let mut input = Vec::new();
        for part in std::iter::once(connection.as_str()).chain(credentials.iter().copied()) {
            input.extend_from_slice(&(part.len() as u64).to_be_bytes());
            input.extend_from_slice(part.as_bytes());
        }
        let salt = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"crmsync sealed connector state v1");
        let derived = aws_lc_rs::hmac::sign(&salt, &input);
        // A 32-byte HMAC-SHA256 tag is exactly an AES-256 key.
        let key = UnboundKey::new(&AES_256_GCM, derived.as_ref()).expect("a 32-byte key is valid for AES-256-GCM");
        Self(LessSafeKey::new(key))
    }

    /// Seals `value` for the state `name` of `connection`.
    pub fn seal(&self, connection: &ConnectionId, name: &str, value: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError)?;
        let mut sealed = value.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(connection, name), &mut sealed)
            .map_err(|_| SealError)?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{SEALED_V1}{}", STANDARD.encode(bytes)))
    }

    /// Opens a value written by [`StateKey::seal`].
    pub fn open(&self, connection: &ConnectionId, name: &str, text: &str) -> Result<String, UnsealError> {
        let error = || UnsealError { connection: connection.clone(), name: name.to_owned() };
        let encoded = text.strip_prefix(SEALED_V1).ok_or_else(error)?;
        let mut bytes = STANDARD.decode(encoded).map_err(|_| error())?;
        if bytes.len() < NONCE_LEN {
            return Err(error());
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| error())?;
        let opened = self.0.open_in_place(nonce, aad(connection, name), &mut sealed).map_err(|_| error())?;
        String::from_utf8(opened.to_vec()).map_err(|_| error())
    }
}

/// The system's random source failed while sealing.
#[derive(Debug, thiserror::Error)]
#[error("cannot seal connector state (no randomness)")]
pub struct SealError;

/// Returns whether a stored state value is sealed.
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_V1)
}

fn aad(connection: &ConnectionId, name: &str) -> Aad<Vec<u8>> {
    let mut data = Vec::with_capacity(connection.as_str().len() + name.len() + 1);
    data.extend_from_slice(connection.as_str().as_bytes());
    data.push(0);
    data.extend_from_slice(name.as_bytes());
    Aad::from(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_token_opens_only_with_the_same_credentials_connection_and_name() {
        let sf = ConnectionId::new("sf");
        let key = StateKey::derive(&sf, &["client-secret", "refresh-1"]);
        let sealed = key.seal(&sf, "refresh_token", "5Aep861rotated").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("5Aep861rotated"), "{sealed}");
        assert_eq!(key.open(&sf, "refresh_token", &sealed).unwrap(), "5Aep861rotated");
        assert_ne!(sealed, key.seal(&sf, "refresh_token", "5Aep861rotated").unwrap(), "fresh nonce each time");
        let other = StateKey::derive(&sf, &["client-secret", "refresh-2"]);
        assert!(other.open(&sf, "refresh_token", &sealed).is_err());
        assert!(key.open(&ConnectionId::new("sf2"), "refresh_token", &sealed).is_err());
        assert!(key.open(&sf, "other", &sealed).is_err());
        assert!(key.open(&sf, "refresh_token", "sealed:v1:AAAA").is_err());
        assert!(key.open(&sf, "refresh_token", "plain").is_err());
        assert_eq!(format!("{key:?}"), "StateKey(..)");
    }
}
