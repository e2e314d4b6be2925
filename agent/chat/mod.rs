//! Answers from chat: what a button says ([`Press`]), who pressed it
//! ([`Who`], from the platform's verified user id mapped through
//! `chat.approvers`), and the platforms' request signatures and message
//! formats ([`slack`], [`discord`]). Pure: the HTTP handlers in
//! `server::chat` verify, then call the pipeline.

pub mod discord;
pub mod slack;

use crate::config::{ChatApprover, ChatConfig};
use crate::units::Duration;

/// Signed requests older or newer than this are refused (Slack's window;
/// used for Discord's timestamp too, against replays).
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a signed request is refused (every one is a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSignature {
    /// A signature or timestamp header is missing.
    Missing,
    /// The timestamp is not a number, or more than 5 minutes away.
    Stale,
    /// The signature does not verify.
    Wrong,
}

impl BadSignature {
    /// The reason label in metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_signature",
            Self::Stale => "stale_signature",
            Self::Wrong => "bad_signature",
        }
    }

    /// What the 401 says.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "missing request signature or timestamp",
            Self::Stale => "request timestamp missing, malformed or more than 5 minutes away",
            Self::Wrong => "request signature does not verify",
        }
    }
}

/// The timestamp header, checked against `now` (Unix seconds).
fn fresh(ts: &str, now: i64) -> Result<i64, BadSignature> {
    let t: i64 = ts.trim().parse().map_err(|_| BadSignature::Stale)?;
    if (now - t).abs() > MAX_SKEW_SECS {
        return Err(BadSignature::Stale);
    }
    Ok(t)
}

/// What a button asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Press {
    /// Approve a held run.
    Approve(String),
    /// Deny a held run.
    Deny(String),
    /// Pause a playbook (on one target, when given) for a while.
    Pause {
        /// Playbook.
        playbook: String,
        /// Target as displayed (`pod etl/x`); None: every target.
        target: Option<String>,
        /// How long.
        duration: Duration,
    },
    /// Lift a pause by id.
    Resume(String),
}

impl Press {
    /// The button's value: `approve:ID`, `deny:ID`, `resume:ID`,
    /// `pause:DURATION:PLAYBOOK[:TARGET]`.
    pub fn encode(&self) -> String {
        match self {
            Press::Approve(id) => format!("approve:{id}"),
            Press::Deny(id) => format!("deny:{id}"),
            Press::Resume(id) => format!("resume:{id}"),
            Press::Pause {
                playbook,
                target,
                duration,
            } => match target {
                Some(t) => format!("pause:{duration}:{playbook}:{t}"),
                None => format!("pause:{duration}:{playbook}"),
            },
        }
    }

    /// Reads [`Press::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        let (verb, rest) = s.split_once(':')?;
        if rest.is_empty() {
            return None;
        }
        Some(match verb {
            "approve" => Press::Approve(rest.into()),
            "deny" => Press::Deny(rest.into()),
            "resume" => Press::Resume(rest.into()),
            "pause" => {
                let mut it = rest.splitn(3, ':');
                let duration: Duration = it.next()?.parse().ok()?;
                let playbook = it.next().filter(|p| !p.is_empty())?.to_string();
                let target = it.next().map(str::to_string);
                Press::Pause {
                    playbook,
                    target,
                    duration,
                }
            }
            _ => return None,
        })
    }

    /// The verb, for logs and the audit.
    pub fn verb(&self) -> &'static str {
        match self {
            Press::Approve(_) => "approve",
            Press::Deny(_) => "deny",
            Press::Pause { .. } => "pause",
            Press::Resume(_) => "resume",
        }
    }
}

/// The buttons of a notice: Approve and Deny for a held run; per
/// configured duration, a Pause of the playbook on this target (when the
/// run has one) and a Pause of the playbook on every target.
pub fn buttons(
    approval: Option<&str>,
    playbook: &str,
    target: &str,
    pause_choices: &[Duration],
) -> Vec<(String, Press)> {
    let mut out = Vec::new();
    if let Some(id) = approval {
        out.push(("Approve".to_string(), Press::Approve(id.to_string())));
        out.push(("Deny".to_string(), Press::Deny(id.to_string())));
    }
    if !playbook.is_empty() {
        let target = (target != "-" && !target.is_empty()).then(|| target.to_string());
        for d in pause_choices {
            if target.is_some() {
                out.push((
                    format!("Pause {d}"),
                    Press::Pause {
                        playbook: playbook.to_string(),
                        target: target.clone(),
                        duration: *d,
                    },
                ));
            }
            out.push((
                format!("Pause playbook {d}"),
                Press::Pause {
                    playbook: playbook.to_string(),
                    target: None,
                    duration: *d,
                },
            ));
        }
    }
    out
}

/// Who pressed a button: the platform, its verified user id, and the
/// config entries that cover them (none: a stranger).
#[derive(Debug, Clone)]
pub struct Who<'a> {
    /// `slack` or `discord`.
    pub platform: &'static str,
    /// The platform's user id, from the verified payload.
    pub user: String,
    /// Entries of `chat.approvers` covering this user.
    pub entries: Vec<&'a ChatApprover>,
}

impl<'a> Who<'a> {
    /// The entries of `cfg` covering a Slack user.
    pub fn slack(cfg: &'a ChatConfig, user: &str) -> Self {
        Self {
            platform: "slack",
            user: user.to_string(),
            entries: cfg
                .approvers
                .iter()
                .filter(|a| !user.is_empty() && a.slack_users.iter().any(|u| u == user))
                .collect(),
        }
    }

    /// The entries of `cfg` covering a Discord user, by id or by role.
    pub fn discord(cfg: &'a ChatConfig, user: &str, roles: &[String]) -> Self {
        Self {
            platform: "discord",
            user: user.to_string(),
            entries: cfg
                .approvers
                .iter()
                .filter(|a| {
                    (!user.is_empty() && a.discord_users.iter().any(|u| u == user))
                        || a.discord_roles.iter().any(|r| roles.contains(r))
                })
                .collect(),
        }
    }

    /// What the audit records as who answered: `alice (slack U012AB3CD)`,
    /// or the bare platform id for a stranger.
    pub fn recorded(&self) -> String {
        match self.entries.first() {
            Some(a) => format!("{} ({} {})", a.name, self.platform, self.user),
            None => format!("{} user {}", self.platform, self.user),
        }
    }

    /// Whether they may approve or deny a run of `playbook` doing `actions`.
    pub fn may_answer(&self, playbook: &str, actions: &[String]) -> bool {
        self.entries.iter().any(|a| {
            covers(&a.playbooks, playbook)
                && (a.actions.is_empty() || actions.iter().all(|x| a.actions.contains(x)))
        })
    }

    /// Whether they may pause or resume `playbook`.
    pub fn may_pause(&self, playbook: &str) -> bool {
        self.entries
            .iter()
            .any(|a| a.may_pause && covers(&a.playbooks, playbook))
    }
}

fn covers(list: &[String], playbook: &str) -> bool {
    list.is_empty() || list.iter().any(|p| p == playbook)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_button_value_reads_back_as_what_it_asks() {
        for p in [
            Press::Approve("019a-1".into()),
            Press::Deny("019a-1".into()),
            Press::Resume("p-1".into()),
            Press::Pause {
                playbook: "restart-pod".into(),
                target: Some("pod etl/x:8080".into()),
                duration: Duration::from_secs(3600),
            },
            Press::Pause {
                playbook: "restart-pod".into(),
                target: None,
                duration: Duration::from_secs(4 * 3600),
            },
        ] {
            assert_eq!(
                Press::decode(&p.encode()),
                Some(p.clone()),
                "{}",
                p.encode()
            );
        }
        for bad in [
            "",
            "approve:",
            "nuke:x",
            "pause:soon:pb",
            "pause:1h:",
            "approve",
        ] {
            assert_eq!(Press::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn people_are_covered_by_id_or_role_and_limited_to_their_playbooks_and_actions() {
        let cfg: ChatConfig = serde_yaml::from_str(
            "approvers:\n  - { name: alice, slackUsers: [U1], playbooks: [restart-pod] }\n  - { name: dba, discordRoles: ['77'], actions: [postgres.sessions.terminate], mayPause: false }\n",
        )
        .unwrap();
        let alice = Who::slack(&cfg, "U1");
        assert_eq!(alice.recorded(), "alice (slack U1)");
        assert!(alice.may_answer("restart-pod", &["kubernetes.pod.restart".into()]));
        assert!(!alice.may_answer("pg-recycle", &[]));
        assert!(alice.may_pause("restart-pod"));
        let stranger = Who::slack(&cfg, "U2");
        assert!(stranger.entries.is_empty() && !stranger.may_answer("restart-pod", &[]));
        assert_eq!(stranger.recorded(), "slack user U2");
        let dba = Who::discord(&cfg, "5", &["77".into()]);
        assert!(dba.may_answer("pg-recycle", &["postgres.sessions.terminate".into()]));
        assert!(!dba.may_answer(
            "pg-recycle",
            &["postgres.sessions.terminate".into(), "host.command".into()]
        ));
        assert!(!dba.may_pause("pg-recycle"));
        assert!(Who::discord(&cfg, "5", &[]).entries.is_empty());
    }
}
