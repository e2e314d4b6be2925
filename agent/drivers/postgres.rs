//! Postgres: recycle leaked idle connections.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::action::{target_display, Params, Target};
use crate::units::Duration;

/// A `pg_stat_activity.state` the action may terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// `idle`
    Idle,
    /// `idle in transaction`
    IdleInTransaction,
    /// `idle in transaction (aborted)`
    IdleInTransactionAborted,
}

/// Session filters; empty lists impose nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "PostgresSessionFilter")]
pub struct SessionFilter {
    /// `pg_stat_activity.usename`
    #[serde(default)]
    pub usenames: Vec<String>,
    /// `pg_stat_activity.application_name`
    #[serde(default)]
    pub application_names: Vec<String>,
    /// `pg_stat_activity.datname`
    #[serde(default)]
    pub datnames: Vec<String>,
    /// `pg_stat_activity.client_addr` (addresses or CIDRs)
    #[serde(default)]
    pub client_addrs: Vec<String>,
}

impl SessionFilter {
    /// True when no list is given.
    pub fn is_empty(&self) -> bool {
        self.usenames.is_empty()
            && self.application_names.is_empty()
            && self.datnames.is_empty()
            && self.client_addrs.is_empty()
    }
}

/// `postgres.connections.recycle`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "PostgresRecycle")]
pub struct Recycle {
    /// Name of the connection in the agent config (`postgres.connections`).
    #[serde(default = "default_connection")]
    pub connection: String,
    /// States to terminate; `idle` by default.
    #[serde(default = "default_states")]
    pub states: Vec<SessionState>,
    /// Only sessions in that state for at least this long.
    #[serde(default = "default_age")]
    pub min_state_age: Duration,
    /// Only sessions matching every non-empty list.
    #[serde(default)]
    pub include: SessionFilter,
    /// Never sessions matching any entry.
    #[serde(default)]
    pub exclude: SessionFilter,
    /// Keep the newest N sessions of each application_name.
    #[serde(default)]
    pub keep_newest_per_application: Option<u32>,
    /// Terminate at most this many sessions per run.
    #[serde(default = "default_max")]
    pub max_sessions: u32,
}

fn default_connection() -> String {
    "default".into()
}
fn default_states() -> Vec<SessionState> {
    vec![SessionState::Idle]
}
fn default_age() -> Duration {
    Duration::from_secs(600)
}
fn default_max() -> u32 {
    500
}

impl Params for Recycle {
    fn check(&self) -> Result<(), String> {
        if self.states.is_empty() {
            return Err("states must name at least one state".into());
        }
        if self.max_sessions == 0 {
            return Err("maxSessions must be at least 1".into());
        }
        Ok(())
    }
    fn describe(&self, t: &Target) -> String {
        let states: Vec<&str> = self
            .states
            .iter()
            .map(|s| match s {
                SessionState::Idle => "idle",
                SessionState::IdleInTransaction => "idle in transaction",
                SessionState::IdleInTransactionAborted => "idle in transaction (aborted)",
            })
            .collect();
        let mut s = format!(
            "terminate up to {} sessions on {} in state {} for over {}",
            self.max_sessions,
            target_display(t),
            states.join(" / "),
            self.min_state_age
        );
        if !self.include.is_empty() || !self.exclude.is_empty() {
            s.push_str(", filtered");
        }
        if let Some(k) = self.keep_newest_per_application {
            s.push_str(&format!(", keeping the newest {k} per application"));
        }
        s.push_str("; never superusers, replication, non-client backends or the agent itself");
        s
    }
}
