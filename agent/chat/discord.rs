//! Discord: interaction signatures (Ed25519 over `X-Signature-Timestamp` +
//! body with the application's public key, in `X-Signature-Ed25519`), the
//! interaction payload, and the responses (PONG, UPDATE_MESSAGE, an
//! ephemeral message).

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{fresh, BadSignature, Press};

/// The application's public key from its hex form.
pub fn public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(hex_key.trim()).map_err(|e| e.to_string())?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| "not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&arr).map_err(|e| e.to_string())
}

/// Verifies a request's signature before anything in it is read; `now` is
/// Unix seconds (a timestamp more than 5 minutes away is refused, so a
/// captured request cannot be replayed later).
pub fn verify(
    key: &VerifyingKey,
    timestamp: Option<&[u8]>,
    signature: Option<&[u8]>,
    body: &[u8],
    now: i64,
) -> Result<(), BadSignature> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(BadSignature::Missing);
    };
    let ts_str = std::str::from_utf8(ts).map_err(|_| BadSignature::Stale)?;
    fresh(ts_str, now)?;
    let sig = hex::decode(sig).map_err(|_| BadSignature::Wrong)?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| BadSignature::Wrong)?;
    let sig = Signature::from_bytes(&sig);
    let mut msg = Vec::with_capacity(ts.len() + body.len());
    msg.extend_from_slice(ts);
    msg.extend_from_slice(body);
    key.verify(&msg, &sig).map_err(|_| BadSignature::Wrong)
}

/// Interaction types.
pub const PING: u8 = 1;
/// A message component (a button).
pub const MESSAGE_COMPONENT: u8 = 3;

/// The parts of an interaction the agent reads.
#[derive(Debug, Deserialize)]
pub struct Interaction {
    /// 1 PING, 2 APPLICATION_COMMAND, 3 MESSAGE_COMPONENT, ...
    #[serde(rename = "type")]
    pub kind: u8,
    /// In a guild: the member (user and roles).
    #[serde(default)]
    pub member: Option<Member>,
    /// In a DM: the user.
    #[serde(default)]
    pub user: Option<User>,
    /// The component's data.
    #[serde(default)]
    pub data: Option<Data>,
    /// The application, for the follow-up webhook.
    #[serde(default)]
    pub application_id: Option<String>,
    /// The interaction token (valid 15 minutes), for the follow-up webhook.
    #[serde(default)]
    pub token: Option<String>,
}

/// A guild member.
#[derive(Debug, Deserialize)]
pub struct Member {
    /// The user.
    pub user: User,
    /// Role ids.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A Discord user.
#[derive(Debug, Deserialize)]
pub struct User {
    /// Snowflake id.
    pub id: String,
}

/// A component interaction's data.
#[derive(Debug, Deserialize)]
pub struct Data {
    /// The button's `custom_id`.
    #[serde(default)]
    pub custom_id: String,
}

impl Interaction {
    /// The verified user id and roles.
    pub fn who(&self) -> (String, Vec<String>) {
        match (&self.member, &self.user) {
            (Some(m), _) => (m.user.id.clone(), m.roles.clone()),
            (None, Some(u)) => (u.id.clone(), Vec::new()),
            (None, None) => (String::new(), Vec::new()),
        }
    }

    /// The pressed button, if it is one of the agent's.
    pub fn press(&self) -> Option<Press> {
        let id = self.data.as_ref()?.custom_id.strip_prefix("remediate:")?;
        Press::decode(id)
    }
}

/// Largest `custom_id` Discord accepts.
const CUSTOM_ID_MAX: usize = 100;

/// Action rows of `buttons`: at most 5 to a row and 5 rows, as Discord
/// allows (a button whose value would not fit a `custom_id` is left out).
/// None when there are none.
pub fn components(buttons: &[(String, Press)]) -> Option<Value> {
    let all: Vec<Value> = buttons
        .iter()
        .filter_map(|(label, press)| {
            let custom_id = format!("remediate:{}", press.encode());
            if custom_id.len() > CUSTOM_ID_MAX {
                return None;
            }
            let style = match press {
                Press::Approve(_) => 3,
                Press::Deny(_) => 4,
                _ => 2,
            };
            Some(json!({"type": 2, "style": style, "label": label, "custom_id": custom_id}))
        })
        .take(25)
        .collect();
    let rows: Vec<Value> = all
        .chunks(5)
        .map(|row| json!({"type": 1, "components": row}))
        .collect();
    (!rows.is_empty()).then(|| json!(rows))
}

/// UPDATE_MESSAGE (type 7): the message whose button was pressed now says
/// `text`, with `buttons` (a Resume after a pause) or none.
pub fn update(text: &str, buttons: &[(String, Press)]) -> Value {
    json!({
        "type": 7,
        "data": {
            "content": text,
            "embeds": [],
            "components": components(buttons).unwrap_or_else(|| json!([])),
        }
    })
}

/// CHANNEL_MESSAGE_WITH_SOURCE (type 4), ephemeral: only the presser sees it.
pub fn ephemeral(text: &str) -> Value {
    json!({"type": 4, "data": {"content": text, "flags": 64}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn a_signature_over_timestamp_and_body_verifies_and_nothing_else_does() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = public_key(&hex::encode(sk.verifying_key().as_bytes())).unwrap();
        let (ts, body) = ("1700000000", br#"{"type":1}"#);
        let sig = hex::encode(sk.sign(&[ts.as_bytes(), body].concat()).to_bytes());
        let now = 1700000000 + 10;
        assert_eq!(
            verify(&pk, Some(ts.as_bytes()), Some(sig.as_bytes()), body, now),
            Ok(())
        );
        assert_eq!(
            verify(&pk, Some(b"1700000001"), Some(sig.as_bytes()), body, now),
            Err(BadSignature::Wrong)
        );
        assert_eq!(
            verify(
                &pk,
                Some(ts.as_bytes()),
                Some(sig.as_bytes()),
                br#"{"type":2}"#,
                now
            ),
            Err(BadSignature::Wrong)
        );
        assert_eq!(
            verify(
                &pk,
                Some(ts.as_bytes()),
                Some(sig.as_bytes()),
                body,
                now + 600
            ),
            Err(BadSignature::Stale)
        );
        assert_eq!(
            verify(&pk, Some(ts.as_bytes()), None, body, now),
            Err(BadSignature::Missing)
        );
        assert!(public_key("abcd").is_err());
    }
}
