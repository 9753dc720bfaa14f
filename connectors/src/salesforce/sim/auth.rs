//! The OAuth token endpoint: refresh-token (with optional rotation), client-credentials and JWT bearer grants.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{CLIENT_ID, CLIENT_SECRET, JWT_USERNAME, ORGANIZATION_ID, REFRESH_TOKEN, SalesforceSim, Shared};
use crate::canonical::Timestamp;

impl SalesforceSim {
    fn jwt_key(&self) -> Option<&aws_lc_rs::signature::RsaKeyPair> {
        self.jwt_key
            .get_or_init(|| aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).ok())
            .as_ref()
    }

    /// The private key (PKCS#8 PEM) of the simulated connected app, for a `jwt_bearer` connection.
    pub fn jwt_private_key_pem(&self) -> Option<String> {
        use aws_lc_rs::encoding::AsDer;
        let der = self.jwt_key()?.as_der().ok()?;
        Some(super::super::jwt::to_pem(der.as_ref()))
    }

    /// Verifies a JWT bearer assertion as Salesforce does: RS256 with the app's certificate, our
    /// consumer key as issuer, a known user, this server as audience, not expired.
    fn verify_assertion(&self, assertion: &str, audience: &str) -> Result<(), String> {
        use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        use base64::Engine;
        let parts: Vec<&str> = assertion.split('.').collect();
        let [header, claims, signature] = parts.as_slice() else { return Err("malformed assertion".into()) };
        let decode = |part: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| "malformed assertion".to_owned())
        };
        let key = self.jwt_key().ok_or("no certificate")?;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key().as_ref())
            .verify(format!("{header}.{claims}").as_bytes(), &decode(signature)?)
            .map_err(|_| "invalid assertion signature".to_owned())?;
        let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|_| "malformed claims".to_owned())?;
        let now = Timestamp::now().unix_millis() / 1000;
        if claims["iss"] != CLIENT_ID {
            return Err("client identifier invalid".into());
        }
        if claims["sub"] != JWT_USERNAME {
            return Err("user hasn't approved this consumer".into());
        }
        if claims["aud"].as_str().map(|aud| aud.trim_end_matches('/')) != Some(audience) {
            return Err("audience is invalid".into());
        }
        match claims["exp"].as_i64() {
            Some(exp) if exp > now && exp <= now + 300 => Ok(()),
            _ => Err("expired or too distant exp claim".into()),
        }
    }
}

pub(super) async fn token(State(sim): Shared, headers: HeaderMap, body: Bytes) -> Response {
    sim.counters.token.fetch_add(1, Ordering::SeqCst);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    let client_ok = form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    let invalid = |error: &str, description: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error, "error_description": description}))).into_response()
    };
    let mut new_refresh = None;
    match grant {
        "refresh_token" => {
            if !client_ok {
                return invalid("invalid_client", "invalid client credentials");
            }
            let mut inner = sim.lock();
            if form.get("refresh_token") != Some(&inner.refresh_token) {
                return invalid("invalid_grant", "expired access/refresh token");
            }
            if sim.rotate {
                let next = format!("{REFRESH_TOKEN}-{}", uuid::Uuid::new_v4().simple());
                inner.refresh_token = next.clone();
                new_refresh = Some(next);
            }
        }
        "client_credentials" => {
            if !client_ok {
                return invalid("invalid_client", "invalid client credentials");
            }
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
            let assertion = form.get("assertion").map(String::as_str).unwrap_or("");
            if let Err(reason) = sim.verify_assertion(assertion, &format!("http://{host}")) {
                return invalid("invalid_grant", &reason);
            }
        }
        _ => return invalid("unsupported_grant_type", "grant type not supported"),
    }
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("127.0.0.1");
    // Access tokens start with the 15-character org id (`00Dxx0000000123!AR8AQ…`).
    let org_prefix = ORGANIZATION_ID.get(..15).unwrap_or(ORGANIZATION_ID);
    let access = format!("{org_prefix}!{}", uuid::Uuid::new_v4().simple());
    sim.lock().tokens.insert(access.clone());
    sim.faults.token_issued();
    let issued_at = Timestamp::now().unix_millis().to_string();
    let id = format!("http://{host}/id/{ORGANIZATION_ID}/005000000000001AAA");
    let mut body = json!({
        "access_token": access,
        "instance_url": format!("http://{host}"),
        "id": id,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature(&id, &issued_at),
        "scope": "api refresh_token",
    });
    if let Some(refresh) = new_refresh {
        body["refresh_token"] = json!(refresh);
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn signature(id: &str, issued_at: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(CLIENT_SECRET.as_bytes()) else { return String::new() };
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
