//! Slack: request signing (`X-Slack-Signature: v0=hex(HMAC-SHA256(signing
//! secret, "v0:" + X-Slack-Request-Timestamp + ":" + body))`), the
//! `block_actions` payload, and the messages the agent posts to an
//! interaction's `response_url`.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use super::{fresh, BadSignature, Press};

/// Verifies a request's signature before anything in it is read. `now`
/// is Unix seconds. The comparison is constant-time (`verify_slice`).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&[u8]>,
    signature: Option<&[u8]>,
    body: &[u8],
    now: i64,
) -> Result<(), BadSignature> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(BadSignature::Missing);
    };
    let ts = std::str::from_utf8(ts).map_err(|_| BadSignature::Stale)?;
    fresh(ts, now)?;
    let hex_sig = sig.strip_prefix(b"v0=").ok_or(BadSignature::Wrong)?;
    let want = hex::decode(hex_sig).map_err(|_| BadSignature::Wrong)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| BadSignature::Wrong)?;
    mac.update(b"v0:");
    mac.update(ts.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&want).map_err(|_| BadSignature::Wrong)
}

/// The header value Slack would send for `body` at `timestamp` (for tests
/// and tools that replay requests).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// The parts of an interaction payload the agent reads.
#[derive(Debug, Deserialize)]
pub struct Interaction {
    /// `block_actions`, `view_submission`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Who pressed.
    #[serde(default)]
    pub user: Option<User>,
    /// Where answers go (valid for 30 minutes, 5 uses).
    #[serde(default)]
    pub response_url: Option<String>,
    /// The pressed elements.
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// A Slack user.
#[derive(Debug, Deserialize)]
pub struct User {
    /// `U012AB3CD`.
    pub id: String,
}

/// One pressed element.
#[derive(Debug, Deserialize)]
pub struct Action {
    /// The element's `action_id`.
    #[serde(default)]
    pub action_id: String,
    /// A button's `value`.
    #[serde(default)]
    pub value: Option<String>,
}

/// Why a verified body is not an interaction the agent handles.
pub fn parse(body: &[u8]) -> Result<Interaction, String> {
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or("body has no payload= field (expected application/x-www-form-urlencoded)")?;
    serde_json::from_str(&payload).map_err(|e| format!("payload: {e}"))
}

impl Interaction {
    /// The first pressed button that is one of the agent's.
    pub fn press(&self) -> Option<Press> {
        self.actions
            .iter()
            .filter(|a| a.action_id.starts_with("remediate"))
            .find_map(|a| a.value.as_deref().and_then(Press::decode))
    }
}

/// The `actions` block carrying `buttons` (None when there are none).
pub fn actions_block(buttons: &[(String, Press)]) -> Option<Value> {
    if buttons.is_empty() {
        return None;
    }
    let elements: Vec<Value> = buttons
        .iter()
        .enumerate()
        .map(|(i, (label, press))| {
            let mut b = json!({
                "type": "button",
                "action_id": format!("remediate_{}_{i}", press.verb()),
                "text": {"type": "plain_text", "text": label},
                "value": press.encode(),
            });
            match press {
                Press::Approve(_) => b["style"] = json!("primary"),
                Press::Deny(_) => b["style"] = json!("danger"),
                _ => {}
            }
            b
        })
        .collect();
    Some(json!({"type": "actions", "block_id": "remediate", "elements": elements}))
}

/// A message replacing the one whose button was pressed: `text`, and
/// `buttons` (a Resume after a pause) if any.
pub fn replace(text: &str, buttons: &[(String, Press)]) -> Value {
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})];
    blocks.extend(actions_block(buttons));
    json!({"replace_original": true, "text": text, "blocks": blocks})
}

/// A reply only the presser sees; the original message stays.
pub fn ephemeral(text: &str) -> Value {
    json!({"response_type": "ephemeral", "replace_original": false, "text": text})
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_documented_example_verifies_and_anything_else_does_not() {
        let now = 1531420618 + 60;
        assert_eq!(sign(SECRET, TS, BODY), SIG);
        assert_eq!(
            verify(SECRET, Some(TS.as_bytes()), Some(SIG.as_bytes()), BODY, now),
            Ok(())
        );
        let mut other = BODY.to_vec();
        other[0] ^= 1;
        assert_eq!(
            verify(
                SECRET,
                Some(TS.as_bytes()),
                Some(SIG.as_bytes()),
                &other,
                now
            ),
            Err(BadSignature::Wrong)
        );
        assert_eq!(
            verify(
                b"other",
                Some(TS.as_bytes()),
                Some(SIG.as_bytes()),
                BODY,
                now
            ),
            Err(BadSignature::Wrong)
        );
        assert_eq!(
            verify(
                SECRET,
                Some(TS.as_bytes()),
                Some(SIG.as_bytes()),
                BODY,
                now + 300
            ),
            Err(BadSignature::Stale)
        );
        assert_eq!(
            verify(SECRET, None, Some(SIG.as_bytes()), BODY, now),
            Err(BadSignature::Missing)
        );
        assert_eq!(
            verify(
                SECRET,
                Some(TS.as_bytes()),
                Some(&SIG.as_bytes()[3..]),
                BODY,
                now
            ),
            Err(BadSignature::Wrong)
        );
    }
}
