//! `postgres.connections.recycle`: terminate leaked idle sessions.
//!
//! Never touched: superusers, replication roles and walsenders, backends
//! that are not client backends, and the agent's own session. Selection
//! and termination both re-check the state in the server, so a session that
//! became active between plan and apply is left alone. Query text is never
//! read, logged or audited.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::PostgresBackend;
use crate::drivers::action::{
    target_display, Action, ActionSpec, DriverError, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};
use crate::units::Duration;

/// `postgres.connections.recycle` in the catalogue.
pub const SPEC: ActionSpec = ActionSpec::of::<Recycle>(
    "postgres.connections.recycle",
    "postgres",
    "Terminate leaked idle Postgres sessions, never superusers, replication or non-client backends.",
    ScopeKind::Cluster,
    60,
    &[("postgres.instance", &["name"])],
);

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

/// One session as the plan saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Backend pid.
    pub pid: i32,
    /// Role.
    pub user: String,
    /// application_name.
    pub application: String,
    /// Database.
    pub database: String,
    /// Client address ("" for a unix socket).
    pub client: String,
    /// State.
    pub state: String,
    /// Seconds in that state.
    pub age_seconds: f64,
}

/// The driver: servers by name from `backends.postgres`.
pub struct PgRecycle {
    pub(super) servers: BTreeMap<String, PostgresBackend>,
}

impl std::fmt::Debug for PgRecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print DSNs (they may hold hosts and users people consider private).
        f.debug_struct("PgRecycle")
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Idle => "idle",
        SessionState::IdleInTransaction => "idle in transaction",
        SessionState::IdleInTransactionAborted => "idle in transaction (aborted)",
    }
}

fn pg_err(what: &str, e: tokio_postgres::Error) -> DriverError {
    // Connection problems pass; SQL errors (permissions) do not.
    let msg = match e.as_db_error() {
        Some(db) => format!("{what}: {} ({})", db.message(), db.code().code()),
        None => format!("{what}: {e}"),
    };
    if e.as_db_error().is_some() {
        DriverError::permanent(msg)
    } else {
        DriverError::retryable(msg)
    }
}

impl PgRecycle {
    async fn connect(&self, name: &str) -> Result<tokio_postgres::Client, DriverError> {
        let b = self.servers.get(name).ok_or_else(|| {
            DriverError::permanent(format!(
                "no backends.postgres entry named {name:?} (configured: {})",
                self.servers.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let mut cfg: tokio_postgres::Config = b
            .dsn
            .parse()
            .map_err(|e| DriverError::permanent(format!("backends.postgres.{name}.dsn: {e}")))?;
        let password =
            crate::config::read_secret(b.password_file.as_deref(), b.password_env.as_deref())
                .map_err(|e| DriverError::permanent(format!("backends.postgres.{name}: {e}")))?;
        if let Some(p) = password {
            cfg.password(p);
        }
        cfg.application_name("remediate")
            .connect_timeout(std::time::Duration::from_secs(5))
            // Bounded on the server too: no statement or lock wait outlives the step.
            .options("-c statement_timeout=5000 -c lock_timeout=2000 -c idle_in_transaction_session_timeout=10000");
        let tls = if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
            None
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| DriverError::permanent(format!("tls: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        };
        // This action runs when the server is out of connection slots. A
        // slot freed by a session that just ended (this agent's own plan
        // session, or the ones apply terminated, before verify) frees only
        // once its backend has exited, so "too many connections" is
        // retried briefly (0.1 + 0.2 + 0.4 + 0.8 s) before it fails.
        let mut wait = std::time::Duration::from_millis(100);
        let mut retries = 4;
        let client = loop {
            let attempt = match &tls {
                None => cfg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map(|(client, conn)| {
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        client
                    }),
                Some(tls) => cfg.connect(tls.clone()).await.map(|(client, conn)| {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client
                }),
            };
            match attempt {
                Err(e)
                    if retries > 0
                        && e.code()
                            == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS) =>
                {
                    retries -= 1;
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                other => break other.map_err(|e| pg_err(&format!("connect to {name}"), e))?,
            }
        };
        Ok(client)
    }
}

fn matches(f: &SessionFilter, s: &Session) -> (bool, bool) {
    // (listed in some non-empty list, all non-empty lists agree)
    let check = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    let any = |list: &[String], v: &str| !list.is_empty() && list.iter().any(|x| x == v);
    (
        any(&f.usenames, &s.user)
            || any(&f.application_names, &s.application)
            || any(&f.datnames, &s.database)
            || any(&f.client_addrs, &s.client),
        check(&f.usenames, &s.user)
            && check(&f.application_names, &s.application)
            && check(&f.datnames, &s.database)
            && check(&f.client_addrs, &s.client),
    )
}

/// Applies include/exclude, keep-newest and the cap to the eligible sessions
/// (newest first within an application by backend start).
pub fn select(p: &Recycle, mut sessions: Vec<(Session, i64)>) -> Vec<Session> {
    sessions.retain(|(s, _)| matches(&p.include, s).1 && !matches(&p.exclude, s).0);
    let mut out = Vec::new();
    if let Some(keep) = p.keep_newest_per_application {
        let mut by_app: BTreeMap<String, Vec<(Session, i64)>> = BTreeMap::new();
        for s in sessions {
            by_app.entry(s.0.application.clone()).or_default().push(s);
        }
        for (_, mut v) in by_app {
            v.sort_by_key(|s| std::cmp::Reverse(s.1));
            out.extend(v.into_iter().skip(keep as usize).map(|(s, _)| s));
        }
    } else {
        out = sessions.into_iter().map(|(s, _)| s).collect();
    }
    out.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
    out.truncate(p.max_sessions as usize);
    out
}

const ELIGIBLE: &str = "
    SELECT a.pid, coalesce(a.usename, ''), coalesce(a.application_name, ''), coalesce(a.datname, ''),
           coalesce(host(a.client_addr), ''), a.state,
           extract(epoch FROM now() - a.state_change)::float8,
           extract(epoch FROM a.backend_start)::bigint
      FROM pg_stat_activity a
      JOIN pg_roles r ON r.oid = a.usesysid
     WHERE a.backend_type = 'client backend'
       AND a.pid <> pg_backend_pid()
       AND NOT r.rolsuper AND NOT r.rolreplication
       AND a.state = ANY($1)
       AND now() - a.state_change >= make_interval(secs => $2)";

// Re-checks every condition at termination time, in one round trip.
const TERMINATE: &str = "
    SELECT a.pid, pg_terminate_backend(a.pid)
      FROM pg_stat_activity a
      JOIN pg_roles r ON r.oid = a.usesysid
     WHERE a.pid = ANY($1)
       AND a.backend_type = 'client backend'
       AND a.pid <> pg_backend_pid()
       AND NOT r.rolsuper AND NOT r.rolreplication
       AND a.state = ANY($2)
       AND now() - a.state_change >= make_interval(secs => $3)";

/// What on-call would look up before sessions are terminated: connections
/// against `max_connections`, whose sessions, and the oldest idle one.
fn plan_evidence(chosen: &[Session], used: i64, max: &str) -> serde_json::Value {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for s in chosen {
        let app = if s.application.is_empty() {
            "-"
        } else {
            &s.application
        };
        *by.entry(format!("{}/{app} on {}", s.user, s.database))
            .or_default() += 1;
    }
    let oldest = chosen
        .iter()
        .map(|s| s.age_seconds)
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
    json!({
        "connections": format!("{used}/{max} (max_connections)"),
        "sessions to terminate": if by.is_empty() {
            "none".to_string()
        } else {
            by.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
        },
        "oldest idle": oldest.map(|s| crate::units::human_secs(s.max(0.0) as u64)),
    })
}

fn describe(sessions: &[Session]) -> String {
    sessions
        .iter()
        .map(|s| {
            format!(
                "{} {}/{} {}s",
                s.pid,
                s.user,
                if s.application.is_empty() {
                    "-"
                } else {
                    &s.application
                },
                s.age_seconds.round()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Action for PgRecycle {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: Recycle = req.parsed()?;
        let c = self.connect(&p.connection).await?;
        // Without pg_read_all_stats other roles' sessions have no visible
        // state: the selection would silently find nothing. Say so instead.
        let (sees, signals): (bool, bool) = {
            let r = c
                .query_one(
                    "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
                            pg_has_role(current_user, 'pg_signal_backend', 'USAGE')",
                    &[],
                )
                .await
                .map_err(|e| pg_err("role check", e))?;
            (r.get(0), r.get(1))
        };
        if !sees || !signals {
            return Err(DriverError::permanent(
                "the agent's role cannot see other sessions' state or signal them: GRANT pg_monitor (or pg_read_all_stats) and pg_signal_backend to it",
            ));
        }
        let states: Vec<String> = p
            .states
            .iter()
            .map(|s| state_name(*s).to_string())
            .collect();
        let rows = c
            .query(ELIGIBLE, &[&states, &p.min_state_age.std().as_secs_f64()])
            .await
            .map_err(|e| pg_err("pg_stat_activity", e))?;
        let sessions: Vec<(Session, i64)> = rows
            .iter()
            .map(|r| {
                (
                    Session {
                        pid: r.get(0),
                        user: r.get(1),
                        application: r.get(2),
                        database: r.get(3),
                        client: r.get(4),
                        state: r.get(5),
                        age_seconds: r.get(6),
                    },
                    r.get(7),
                )
            })
            .collect();
        let (used, max): (i64, String) = {
            let row = c
                .query_one("SELECT count(*), current_setting('max_connections') FROM pg_stat_activity WHERE backend_type = 'client backend'", &[])
                .await
                .map_err(|e| pg_err("pg_stat_activity", e))?;
            (row.get(0), row.get(1))
        };
        let chosen = select(&p, sessions);
        Ok(Plan {
            summary: if chosen.is_empty() {
                format!("{used}/{max} connections; no session matches: nothing to terminate")
            } else {
                format!(
                    "{used}/{max} connections; terminate {} session(s): {}",
                    chosen.len(),
                    describe(&chosen)
                )
            },
            details: json!({"sessions": chosen, "used": used, "evidence": plan_evidence(&chosen, used, &max)}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let p: Recycle = req.parsed()?;
        let sessions: Vec<Session> =
            serde_json::from_value(plan.details["sessions"].clone()).unwrap_or_default();
        if sessions.is_empty() {
            return Ok(Outcome {
                summary: "nothing to terminate".into(),
                details: json!({"terminated": []}),
            });
        }
        let c = self.connect(&p.connection).await?;
        let pids: Vec<i32> = sessions.iter().map(|s| s.pid).collect();
        let states: Vec<String> = p
            .states
            .iter()
            .map(|s| state_name(*s).to_string())
            .collect();
        let rows = c
            .query(
                TERMINATE,
                &[&pids, &states, &p.min_state_age.std().as_secs_f64()],
            )
            .await
            .map_err(|e| pg_err("pg_terminate_backend", e))?;
        let done: Vec<i32> = rows
            .iter()
            .filter(|r| r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect();
        let gone: Vec<&Session> = sessions.iter().filter(|s| done.contains(&s.pid)).collect();
        let mut whose: BTreeMap<String, usize> = BTreeMap::new();
        for s in &gone {
            *whose
                .entry(format!(
                    "{}/{}",
                    s.user,
                    if s.application.is_empty() {
                        "-"
                    } else {
                        &s.application
                    }
                ))
                .or_default() += 1;
        }
        Ok(Outcome {
            summary: format!(
                "terminated {} of {} planned session(s) ({}); {} left alone (became active or gone)",
                done.len(),
                sessions.len(),
                whose.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "),
                sessions.len() - done.len()
            ),
            details: json!({
                "terminated": gone,
                "evidence": {
                    "terminated": format!("{} of {} planned", done.len(), sessions.len()),
                    "terminated by user/application": whose.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "),
                },
            }),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let p: Recycle = req.parsed()?;
        let sessions: Vec<Session> =
            serde_json::from_value(plan.details["sessions"].clone()).unwrap_or_default();
        let pids: Vec<i32> = sessions.iter().map(|s| s.pid).collect();
        let c = self.connect(&p.connection).await?;
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE pid = ANY($1) AND state = ANY($2)),
                        count(*) FILTER (WHERE backend_type = 'client backend'),
                        current_setting('max_connections')
                   FROM pg_stat_activity",
                &[
                    &pids,
                    &p.states
                        .iter()
                        .map(|s| state_name(*s).to_string())
                        .collect::<Vec<_>>(),
                ],
            )
            .await
            .map_err(|e| pg_err("pg_stat_activity", e))?;
        let (left, used, max): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        let before = plan.details["used"].as_i64().unwrap_or(0);
        Ok(if left == 0 {
            Verdict::Verified(format!("connections {before} -> {used} of {max}; none of the terminated sessions is left idle"))
        } else {
            Verdict::Pending(format!("{left} of the planned sessions still idle"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(
        pid: i32,
        user: &str,
        app: &str,
        db: &str,
        client: &str,
        age: f64,
        start: i64,
    ) -> (Session, i64) {
        (
            Session {
                pid,
                user: user.into(),
                application: app.into(),
                database: db.into(),
                client: client.into(),
                state: "idle".into(),
                age_seconds: age,
            },
            start,
        )
    }

    fn recycle(v: serde_json::Value) -> Recycle {
        serde_json::from_value(v).unwrap()
    }

    fn pids(v: Vec<Session>) -> Vec<i32> {
        let mut p: Vec<i32> = v.into_iter().map(|s| s.pid).collect();
        p.sort_unstable();
        p
    }

    #[test]
    fn include_exclude_keep_newest_and_the_cap_hold() {
        let all = || {
            vec![
                s(1, "airflow", "worker", "meta", "10.0.0.1", 900.0, 100),
                s(2, "airflow", "worker", "meta", "10.0.0.2", 800.0, 200),
                s(3, "airflow", "worker", "meta", "10.0.0.3", 700.0, 300),
                s(4, "airflow", "scheduler", "meta", "10.0.0.4", 600.0, 400),
                s(5, "bi", "tableau", "dw", "10.0.1.1", 500.0, 500),
            ]
        };
        // Include: only airflow's sessions on the meta database.
        let p = recycle(json!({"include": {"usenames": ["airflow"], "datnames": ["meta"]}}));
        assert_eq!(pids(select(&p, all())), vec![1, 2, 3, 4]);
        // Exclude: any listed value spares a session.
        let p = recycle(
            json!({"exclude": {"applicationNames": ["scheduler"], "clientAddrs": ["10.0.0.1"]}}),
        );
        assert_eq!(pids(select(&p, all())), vec![2, 3, 5]);
        // Keep the newest 1 per application (by backend start).
        let p = recycle(json!({"keepNewestPerApplication": 1}));
        assert_eq!(pids(select(&p, all())), vec![1, 2]);
        // The cap takes the oldest first.
        let p = recycle(json!({"maxSessions": 2}));
        assert_eq!(pids(select(&p, all())), vec![1, 2]);
    }
}
