//! The agent's own config file (`remediate agent --config FILE`).
//!
//! Every field has a default, so an empty file (or no file) is a working
//! agent that reads the embedded playbooks and refuses unauthenticated
//! webhooks. Loading is pure: secrets named here are read when the agent
//! starts, never while validating.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Diagnostics};
use crate::units::Duration;

/// The agent's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// This agent's node name, written in every audit record and used to pick
    /// node-scoped actions. Default: `$REMEDIATE_NODE`, else the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// Address the HTTP server listens on (webhook, metrics, health, approvals).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// URL people and `remediate approve` reach this agent at, named in
    /// approval notifications. Default: `http://<node>:<listen port>`.
    #[serde(default)]
    pub external_url: Option<String>,
    /// Playbook directory. Default: the playbooks embedded in the binary.
    #[serde(default)]
    pub playbooks: Option<PathBuf>,
    /// Policy directory. Default: the policies embedded in the binary.
    #[serde(default)]
    pub policies: Option<PathBuf>,
    /// Where the audit log and the event inbox live. Relative paths are
    /// relative to the config file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Audit log rotation.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Shadow mode: plan, gate and audit every event, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Who may call the API: the webhook token and the approvers.
    #[serde(default)]
    pub auth: AuthConfig,
    /// HTTP connection limits: connection cap, header, idle and body timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// Webhook intake.
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// Cron maintenance.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Most remediation runs executing at once on this agent.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Reloading playbooks and policies.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// How long SIGTERM waits for running actions before it interrupts them.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
    /// Where decisions and outcomes are announced.
    #[serde(default)]
    pub notify: Vec<NotifySink>,
    /// Log format on stderr.
    #[serde(default)]
    pub log: LogConfig,
    /// Connections to the systems drivers act on. Each driver reads its own
    /// section; a section for a backend this build has no driver for is
    /// accepted and reported at start.
    #[serde(default)]
    pub backends: Backends,
    /// Native triggers: conditions the platform itself reports, detected in
    /// seconds without a Prometheus rule in between.
    #[serde(default)]
    pub triggers: TriggersConfig,
    /// Answers from chat: Slack and Discord buttons that approve, deny or
    /// pause, and who may press them.
    #[serde(default)]
    pub chat: ChatConfig,
    /// The Alertmanager whose API (v2) the agent creates silences in while
    /// it acts, for policies with `silenceWhileActing`.
    #[serde(default)]
    pub alertmanager: Option<AlertmanagerApi>,
}

/// An Alertmanager's API, for silences while the agent acts.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertmanagerApi {
    /// Base URL, e.g. `http://alertmanager.monitoring.svc:9093`.
    pub url: String,
    /// File holding a bearer token for it (behind an auth proxy).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Each API call's timeout; a silence that cannot be made in time is
    /// logged and the run goes on without it.
    #[serde(default = "default_am_timeout")]
    pub timeout: Duration,
}

fn default_am_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Interactive answers from chat. Requests are verified with the
/// platform's signature before anything in them is read; the user id in
/// the verified payload is mapped through `approvers` to a name recorded in
/// the audit, and everyone else is told no (and that is audited too).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChatConfig {
    /// Slack app: `POST /chat/slack/interactions` (its Interactivity Request URL).
    #[serde(default)]
    pub slack: Option<SlackChat>,
    /// Discord application: `POST /chat/discord/interactions` (its Interactions Endpoint URL).
    #[serde(default)]
    pub discord: Option<DiscordChat>,
    /// Who may answer from chat, and what.
    #[serde(default)]
    pub approvers: Vec<ChatApprover>,
    /// Pause buttons offered on a notification, one per duration (at most 3).
    #[serde(default = "default_pause_choices")]
    pub pause_choices: Vec<Duration>,
}

fn default_pause_choices() -> Vec<Duration> {
    vec![Duration::from_secs(3600), Duration::from_secs(4 * 3600)]
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            slack: None,
            discord: None,
            approvers: Vec::new(),
            pause_choices: default_pause_choices(),
        }
    }
}

/// The Slack app whose buttons the agent answers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SlackChat {
    /// File holding the app's Signing Secret (Basic Information page).
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,
    /// Environment variable holding the Signing Secret instead.
    #[serde(default)]
    pub signing_secret_env: Option<String>,
    /// Answers are posted to the interaction's `response_url` only when it
    /// starts with one of these.
    #[serde(default = "default_slack_response_urls")]
    pub response_urls: Vec<String>,
}

fn default_slack_response_urls() -> Vec<String> {
    vec!["https://hooks.slack.com/".into()]
}

/// The Discord application whose buttons the agent answers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiscordChat {
    /// The application's public key, hex (General Information page).
    pub public_key: String,
    /// Discord's API, where the outcome of a run approved from a button
    /// edits the message (`PATCH webhooks/{application}/{token}/messages/@original`).
    #[serde(default = "default_discord_api")]
    pub api_url: String,
}

fn default_discord_api() -> String {
    "https://discord.com/api/v10".into()
}

/// One person (or group) who may answer from chat.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChatApprover {
    /// Name recorded in the audit, with the platform's user id.
    pub name: String,
    /// Slack user ids (`U012AB3CD`) this entry covers.
    #[serde(default)]
    pub slack_users: Vec<String>,
    /// Discord user ids (snowflakes) this entry covers.
    #[serde(default)]
    pub discord_users: Vec<String>,
    /// Discord role ids: every member holding one is covered (a group).
    #[serde(default)]
    pub discord_roles: Vec<String>,
    /// Playbooks they may approve, deny and pause; empty: all.
    #[serde(default)]
    pub playbooks: Vec<String>,
    /// Actions they may approve (every action of the held run must be
    /// listed); empty: all.
    #[serde(default)]
    pub actions: Vec<String>,
    /// May pause and resume the playbooks they may approve.
    #[serde(default = "yes")]
    pub may_pause: bool,
}

/// Native triggers. Each produces alerts named like the Prometheus alerts
/// the bundled playbooks answer, so a playbook takes either.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggersConfig {
    /// The local Docker Engine's events (`backends.docker`): OOM kills,
    /// failed exits, unhealthy containers, Swarm task failures.
    #[serde(default)]
    pub docker: DockerTrigger,
    /// The pods of this agent's node (`backends.kubernetes`): crash loops,
    /// OOM kills, evictions, image pull failures, readiness failing.
    #[serde(default)]
    pub kubernetes: KubernetesTrigger,
}

/// The Kubernetes pod-watch trigger: a watch of the pods on one node
/// (`spec.nodeName`), so a DaemonSet of agents covers the cluster with no
/// leader and no duplicate work.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesTrigger {
    /// Watch the node's pods (needs `backends.kubernetes`).
    #[serde(default)]
    pub enabled: bool,
    /// The node whose pods are watched. Default: `$NODE_NAME`, else the
    /// agent's node name.
    #[serde(default)]
    pub node: Option<String>,
    /// A pod whose `Ready` condition is false this long is `KubePodNotReady`.
    #[serde(default = "default_readiness_failing_for")]
    pub readiness_failing_for: Duration,
    /// Watch only pods in these namespaces; empty: every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

fn default_readiness_failing_for() -> Duration {
    Duration::from_secs(300)
}

impl Default for KubernetesTrigger {
    fn default() -> Self {
        Self {
            enabled: false,
            node: None,
            readiness_failing_for: default_readiness_failing_for(),
            namespaces: Vec::new(),
        }
    }
}

/// The Docker Engine events trigger.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DockerTrigger {
    /// Watch the engine's events (needs `backends.docker`).
    #[serde(default)]
    pub enabled: bool,
    /// On start and after a lost connection, OOM kills and failed exits
    /// this recent are caught up from the container list.
    #[serde(default = "default_docker_catch_up")]
    pub catch_up: Duration,
    /// Watch only containers carrying every one of these labels
    /// (`key=value` or `key`), e.g. `[autoheal=true]` as docker-autoheal
    /// users label them; empty: every container on the engine.
    #[serde(default)]
    pub labels: Vec<String>,
}

fn default_docker_catch_up() -> Duration {
    Duration::from_secs(3600)
}

impl Default for DockerTrigger {
    fn default() -> Self {
        Self {
            enabled: false,
            catch_up: default_docker_catch_up(),
            labels: Vec::new(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9095))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/remediate")
}
fn default_concurrency() -> usize {
    4
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for AgentConfig {
    fn default() -> Self {
        // An empty document gets every serde default.
        serde_yaml::from_str("{}").unwrap_or_else(|_| unreachable_config())
    }
}

#[allow(clippy::panic)]
fn unreachable_config() -> AgentConfig {
    panic!("the empty agent config must deserialize")
}

/// Audit log rotation by size. Limits are rebuilt from every kept file, so
/// keep enough to cover the longest limit window (rate, cooldown, breaker).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// Rotate `audit.jsonl` once it reaches this size.
    #[serde(default = "default_audit_max")]
    pub max_bytes: crate::units::ByteSize,
    /// Rotated files kept (`audit.jsonl.1` is the newest).
    #[serde(default = "default_audit_keep")]
    pub keep: usize,
}

fn default_audit_max() -> crate::units::ByteSize {
    crate::units::ByteSize(64 << 20)
}
fn default_audit_keep() -> usize {
    10
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_audit_max(),
            keep: default_audit_keep(),
        }
    }
}

/// Bearer-token authentication. The webhook token may only post alerts
/// (`POST /webhook/alertmanager`); each approver has a token of their own
/// for the approvals API, and the name recorded in the audit is the one
/// configured here for that token, never one the request body gives.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// File holding the webhook token (surrounding whitespace ignored), e.g. a mounted Secret.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the webhook token when no file is given.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Accept webhooks without a token. Only for a loopback listener in a
    /// lab. The approvals API still needs an approver's token.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// People (or bots) who may list, approve and deny held runs, each with
    /// a token of their own. Without any, held runs can only expire.
    #[serde(default)]
    pub approvers: Vec<Approver>,
}

/// One approver: a name for the audit and where their token is.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Approver {
    /// Name recorded in the audit for every answer given with this token
    /// (letters, digits, `.`, `_`, `-`, `@`).
    pub name: String,
    /// File holding this approver's token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token instead of a file.
    #[serde(default)]
    pub token_env: Option<String>,
}

fn default_token_env() -> String {
    "REMEDIATE_WEBHOOK_TOKEN".into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_file: None,
            token_env: default_token_env(),
            allow_unauthenticated: false,
            approvers: Vec::new(),
        }
    }
}

/// HTTP connection limits, enforced on every connection before any
/// authentication, so that clients without a token cannot hold the
/// agent's memory or file descriptors.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Most connections open at once. A connection arriving at the cap
    /// closes the open one that has waited longest without a request in
    /// progress (idle keep-alive, or headers not yet complete), so a new
    /// client is served at once; only if every connection has a request in
    /// progress is the new one closed. Keep it well under the open-files
    /// limit (the agent raises its soft `RLIMIT_NOFILE` to the hard limit
    /// at start, and refuses to start if the cap does not fit).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time from a request's first byte to the end of its headers; a
    /// connection still sending headers then is closed.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request (before the first
    /// one, or between keep-alive requests) before it is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Time allowed for a whole request body once its headers are in; a
    /// body still arriving then gets 408 and the connection is closed.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Duration,
    /// Largest request head (request line and headers) in bytes, which is
    /// also each connection's read buffer; larger heads get 431. At least 8192.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Rejected requests (401, 403, 400, 408, 413) and closed connections
    /// are logged at most once per reason in this interval, with a count of
    /// the ones not logged.
    #[serde(default = "default_reject_log_interval")]
    pub reject_log_interval: Duration,
}

fn default_max_connections() -> usize {
    512
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> usize {
    16 << 10
}
fn default_reject_log_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            body_timeout: default_body_timeout(),
            max_header_bytes: default_max_header_bytes(),
            reject_log_interval: default_reject_log_interval(),
        }
    }
}

/// Webhook intake.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// Largest accepted body in bytes; larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Events waiting for a decision before new webhooks get 503 (Alertmanager retries).
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// A notification with more alerts than `queueCapacity` can never be
    /// queued whole. `accept-part`: the alerts the queue has room for are
    /// accepted (in body order) and the answer is 200 with the count of the
    /// ones refused, like Alertmanager's own `max_alerts` truncation;
    /// `refuse`: 413 with the reason, nothing accepted (Alertmanager does
    /// not retry a 413). Either way the refusal is logged and counted.
    /// Setting Alertmanager's `max_alerts` at most `queueCapacity` avoids both.
    #[serde(default)]
    pub oversized_notification: Oversized,
    /// Wait this long after a firing alert arrives before acting on it; a
    /// resolved notification inside the wait cancels it (flapping alerts do nothing).
    #[serde(default = "zero")]
    pub settle: Duration,
    /// How long a delivery (fingerprint, startsAt, status) is remembered to
    /// drop duplicates from Alertmanager HA pairs and repeat_interval resends.
    #[serde(default = "default_dedupe")]
    pub dedupe_window: Duration,
    /// Deliveries of one alert (fingerprint and status) whose `startsAt`
    /// differ by at most this are one episode and run once: Alertmanager HA
    /// pairs fed by Prometheus replicas send the same alert with `startsAt`
    /// a few seconds apart. A new episode of an alert starts later than this.
    #[serde(default = "default_dedupe_tolerance")]
    pub dedupe_tolerance: Duration,
}

fn default_max_body() -> usize {
    1 << 20
}
fn default_queue() -> usize {
    50_000
}
fn zero() -> Duration {
    Duration::from_secs(0)
}
fn default_dedupe() -> Duration {
    Duration::from_secs(72 * 3600)
}
fn default_dedupe_tolerance() -> Duration {
    Duration::from_secs(120)
}

/// What to do with a notification carrying more alerts than the queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Oversized {
    /// Accept what fits, report the rest as refused (200).
    #[default]
    AcceptPart,
    /// Refuse the whole notification (413).
    Refuse,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            queue_capacity: default_queue(),
            oversized_notification: Oversized::default(),
            settle: zero(),
            dedupe_window: default_dedupe(),
            dedupe_tolerance: default_dedupe_tolerance(),
        }
    }
}

/// Cron maintenance.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleConfig {
    /// Run schedule triggers at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// IANA time zone the cron expressions are read in, e.g. `Europe/Berlin`.
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Ticks missed while the agent was down that are run on start, per
    /// schedule (0: none). Only the latest missed ticks run; never a backlog.
    #[serde(default = "one")]
    pub catch_up: usize,
    /// Only ticks missed within this long before the start are caught up.
    #[serde(default = "default_catch_up_window")]
    pub catch_up_window: Duration,
    /// Upper bound of the random delay before the first tick of each
    /// schedule, so agents restarted together do not act together.
    #[serde(default = "default_jitter")]
    pub jitter: Duration,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_tz() -> String {
    "UTC".into()
}
fn default_catch_up_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_jitter() -> Duration {
    Duration::from_secs(30)
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timezone: default_tz(),
            catch_up: 1,
            catch_up_window: default_catch_up_window(),
            jitter: default_jitter(),
        }
    }
}

/// Reloading playbooks and policies (SIGHUP always reloads).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReloadConfig {
    /// Watch the playbook and policy directories for changes.
    #[serde(default = "yes")]
    pub watch: bool,
    /// How often the directories are checked. Polling sees Kubernetes
    /// ConfigMap updates (a symlink swap) that inotify watches miss.
    #[serde(default = "default_reload_interval")]
    pub interval: Duration,
    /// Accept a playbook set with no playbooks (at start and on reload).
    /// Off, an emptied playbook directory is refused like a broken one: the
    /// previous set stays in force and the reload counts as failed.
    #[serde(default)]
    pub allow_empty: bool,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            interval: default_reload_interval(),
            allow_empty: false,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    /// `json` (one object a line, with the span of each event and action) or `text`.
    #[serde(default)]
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax, e.g. `info,remediate=debug`. `RUST_LOG` overrides.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: default_level(),
        }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Structured JSON.
    #[default]
    Json,
    /// Human-readable.
    Text,
}

/// One notification sink.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifySink {
    /// Name used in logs, metrics and audit records.
    pub name: String,
    /// Message format.
    pub kind: NotifyKind,
    /// Incoming-webhook URL. Prefer `urlFile` for Slack and Discord URLs, which are secrets.
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the URL (a mounted Secret).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Decisions announced: `execute`, `dry-run`, `suppressed`, `needs-approval`.
    /// Failed runs are always announced.
    #[serde(default = "default_on")]
    pub on: Vec<String>,
    /// Upper bound on one delivery attempt.
    #[serde(default = "default_notify_timeout")]
    pub timeout: Duration,
    /// Attempts on a connection error, 429 or 5xx.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Severity routing: only notices whose alert labels satisfy every one
    /// of these Alertmanager matchers reach this sink, e.g.
    /// `['severity=~"critical|high"']` for the paging channel and
    /// `['severity!~"critical|high"']` for the rest; empty: every notice.
    /// A label the alert lacks matches as the empty string (as in
    /// Alertmanager), so schedule and manual runs, which carry no alert
    /// labels, satisfy `severity!~"critical|high"` but not `severity="critical"`.
    /// Failed runs are routed by these too.
    #[serde(default)]
    pub matchers: Vec<String>,
}

fn default_on() -> Vec<String> {
    vec!["execute".into(), "needs-approval".into()]
}
fn default_notify_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_attempts() -> u32 {
    3
}

/// Notification message format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// Slack incoming webhook (`text` plus blocks).
    Slack,
    /// Discord webhook (`content` plus an embed).
    Discord,
    /// A JSON document with every field; for ChatOps bots and incident tools.
    Webhook,
}

/// Backend connections, one optional section per backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backends {
    /// Kubernetes API access.
    #[serde(default)]
    pub kubernetes: Option<KubernetesBackend>,
    /// Docker Engine / Swarm manager.
    #[serde(default)]
    pub docker: Option<DockerBackend>,
    /// PostgreSQL servers by name (the playbook's `target.server`).
    #[serde(default)]
    pub postgres: std::collections::BTreeMap<String, PostgresBackend>,
    /// Hosts reached over SSH for node-scoped actions.
    #[serde(default)]
    pub ssh: Vec<SshHost>,
    /// Iceberg catalogs by name (the playbook target's `catalog`).
    #[serde(default)]
    pub iceberg: std::collections::BTreeMap<String, IcebergCatalog>,
}

/// An Iceberg catalog. The `uri` scheme picks the kind: `sqlite:` or
/// `postgres://` is a SQL catalog (the JDBC/pyiceberg `iceberg_tables`
/// layout), `http://` or `https://` an Iceberg REST catalog.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IcebergCatalog {
    /// `sqlite:/var/lib/lake/catalog.db`, `postgres://user@host/db` or
    /// `https://catalog.example:8181` (REST).
    pub uri: String,
    /// Warehouse location, e.g. `file:///var/lib/lake` (for REST catalogs,
    /// the warehouse name the server expects, if any).
    #[serde(default)]
    pub warehouse: String,
    /// A file holding the password of a Postgres catalog (kept out of
    /// `uri`) or the bearer token of a REST catalog.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding that secret instead.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Catalog name as stored in the catalog tables (pyiceberg's and Java's `catalog_name`); default the key.
    #[serde(default)]
    pub name: Option<String>,
    /// Tables (`namespace.table`) whose small-file ratio the agent exports
    /// on /metrics, so the bundled alert needs no separate exporter.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Files under this size count as small in the exported ratio.
    #[serde(default = "default_small_file")]
    pub small_file_threshold: crate::units::ByteSize,
    /// How often the exported figures are refreshed.
    #[serde(default = "default_iceberg_interval")]
    pub scrape_interval: Duration,
    /// S3-compatible object storage for tables at `s3://`, `s3a://` or
    /// `s3n://` locations (AWS S3, MinIO, Ceph RGW, …).
    #[serde(default)]
    pub s3: Option<IcebergS3>,
    /// REST catalogs: OAuth2 client credentials (Polaris, Unity, Tabular,
    /// Nessie behind Keycloak, …) instead of a static bearer token in
    /// `secretFile`. The agent exchanges them for a token at its
    /// `serverUri` whenever it opens the catalog.
    #[serde(default)]
    pub oauth2: Option<IcebergOAuth2>,
}

/// OAuth2 client-credentials grant (RFC 6749 §4.4) for a REST catalog.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IcebergOAuth2 {
    /// The client id.
    pub client_id: String,
    /// A file holding the client secret (surrounding whitespace ignored).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret instead.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// The token endpoint; default the catalog's `{uri}/v1/oauth/tokens`.
    #[serde(default)]
    pub server_uri: Option<String>,
    /// Scope requested; default `catalog` (what Iceberg's clients ask for).
    #[serde(default = "default_oauth2_scope")]
    pub scope: String,
}

fn default_oauth2_scope() -> String {
    "catalog".into()
}

/// How the agent reaches a catalog's tables on S3-compatible storage.
/// Credentials: the two key files together, or else the environment's
/// (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
/// the shared profile, the instance's role).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IcebergS3 {
    /// The S3 API endpoint, e.g. `http://minio.lake:9000`; default AWS's
    /// endpoint for the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Signing region; default `AWS_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`, what MinIO and most
    /// S3-compatible servers expect) instead of virtual-host style
    /// (`bucket.endpoint/key`).
    #[serde(default)]
    pub path_style: bool,
    /// A file holding the access key ID (with `secretAccessKeyFile`).
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// A file holding the secret access key (with `accessKeyIdFile`).
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
}

fn default_small_file() -> crate::units::ByteSize {
    crate::units::ByteSize(32 << 20)
}
fn default_iceberg_interval() -> Duration {
    Duration::from_secs(300)
}

/// Kubernetes API access.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesBackend {
    /// Kubeconfig file; default: in-cluster service account, else `$KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; default: the current context.
    #[serde(default)]
    pub context: Option<String>,
    /// Namespace of the coordination Leases and counters; default: the
    /// agent's own (`$POD_NAMESPACE`), else `remediate`.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Docker Engine access.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DockerBackend {
    /// Engine address; default: `unix:///var/run/docker.sock`.
    #[serde(default)]
    pub host: Option<String>,
}

/// One PostgreSQL server.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresBackend {
    /// Connection string without the password, e.g. `host=db port=5432 user=remediate dbname=postgres`.
    pub dsn: String,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password when no file is given.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// One host reachable over SSH.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SshHost {
    /// Node name as alerts label it.
    pub node: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Private key file; default: the ssh-agent.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// known_hosts file checked strictly.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// The remediate binary on that host, run for node-scoped actions
    /// (`remediate exec-step`).
    #[serde(default = "default_remote_binary")]
    pub remediate: String,
}

fn default_remote_binary() -> String {
    "/usr/local/bin/remediate".into()
}

fn default_ssh_port() -> u16 {
    22
}

/// A node name: `given` if set, else the host name, else `localhost`.
pub fn node_name(given: Option<String>) -> String {
    given
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl AgentConfig {
    /// This agent's node name: `node`, else `$REMEDIATE_NODE`, else the host name.
    pub fn node_name(&self) -> String {
        node_name(
            self.node
                .clone()
                .or_else(|| std::env::var("REMEDIATE_NODE").ok()),
        )
    }

    /// Parses a config document; errors name the file, line, column and field.
    pub fn parse(file: &Path, text: &str) -> Result<Self, Diagnostics> {
        let mut cfg: AgentConfig =
            crate::diag::parse_yaml(file, text).map_err(|d| Diagnostics(vec![d]))?;
        let idx = crate::yamlpos::PositionIndex::build(text);
        let mut errs = Diagnostics::default();
        let at = |field: &str, msg: String| {
            Diagnostic::at(file, idx.get(field), format!("{field}: {msg}"))
        };
        if cfg.concurrency == 0 {
            errs.push(at("concurrency", "must be at least 1".into()));
        }
        if cfg.webhook.max_body_bytes == 0 {
            errs.push(at("webhook.maxBodyBytes", "must be at least 1".into()));
        }
        if cfg.webhook.queue_capacity == 0 {
            errs.push(at("webhook.queueCapacity", "must be at least 1".into()));
        }
        if cfg.schedule.timezone.parse::<chrono_tz::Tz>().is_err() {
            errs.push(at(
                "schedule.timezone",
                format!(
                    "unknown time zone {:?} (use an IANA name such as UTC or Europe/Berlin)",
                    cfg.schedule.timezone
                ),
            ));
        }
        if cfg.audit.max_bytes.0 < 4096 {
            errs.push(at("audit.maxBytes", "must be at least 4Ki".into()));
        }
        if cfg.reload.interval.std().is_zero() {
            errs.push(at("reload.interval", "must be longer than 0s".into()));
        }
        if cfg.triggers.docker.enabled && cfg.backends.docker.is_none() {
            errs.push(at(
                "triggers.docker.enabled",
                "the Docker trigger needs backends.docker (the engine to watch)".into(),
            ));
        }
        if cfg.triggers.kubernetes.enabled && cfg.backends.kubernetes.is_none() {
            errs.push(at(
                "triggers.kubernetes.enabled",
                "the Kubernetes trigger needs backends.kubernetes (the API server to watch)".into(),
            ));
        }
        if cfg.triggers.kubernetes.node.as_deref() == Some("") {
            errs.push(at(
                "triggers.kubernetes.node",
                "must not be empty (leave it out for $NODE_NAME or the agent's node)".into(),
            ));
        }
        check_server(&cfg.server, &mut |f, m| errs.push(at(f, m)));
        check_approvers(&cfg.auth.approvers, &mut |f, m| errs.push(at(f, m)));
        check_chat(&cfg.chat, &mut |f, m| errs.push(at(f, m)));
        for (key, c) in &cfg.backends.iceberg {
            check_oauth2(key, c, &mut |f, m| errs.push(at(f, m)));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in cfg.notify.iter().enumerate() {
            let f = |x: &str| format!("notify[{i}].{x}");
            if !names.insert(s.name.as_str()) {
                errs.push(at(&f("name"), format!("duplicate sink name {:?}", s.name)));
            }
            match (&s.url, &s.url_file) {
                (None, None) => errs.push(at(&f("url"), "give url or urlFile".into())),
                (Some(_), Some(_)) => {
                    errs.push(at(&f("url"), "give url or urlFile, not both".into()))
                }
                (Some(u), None) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    errs.push(at(&f("url"), "must start with http:// or https://".into()))
                }
                _ => {}
            }
            for d in &s.on {
                if !["execute", "dry-run", "suppressed", "needs-approval"].contains(&d.as_str()) {
                    errs.push(at(
                        &f("on"),
                        format!(
                            "unknown decision {d:?} (execute, dry-run, suppressed, needs-approval)"
                        ),
                    ));
                }
            }
            if s.attempts == 0 {
                errs.push(at(&f("attempts"), "must be at least 1".into()));
            }
            for (j, m) in s.matchers.iter().enumerate() {
                if let Err(e) = crate::playbook::matcher::parse_matcher(m) {
                    errs.push(at(&f(&format!("matchers[{j}]")), format!("{m:?}: {e}")));
                }
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        // Relative paths are relative to the config file.
        if let Some(base) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            let fix = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            fix(&mut cfg.state_dir);
            if let Some(p) = cfg.playbooks.as_mut() {
                fix(p);
            }
            if let Some(p) = cfg.policies.as_mut() {
                fix(p);
            }
            if let Some(p) = cfg.auth.token_file.as_mut() {
                fix(p);
            }
            for a in &mut cfg.auth.approvers {
                if let Some(p) = a.token_file.as_mut() {
                    fix(p);
                }
            }
            for s in &mut cfg.notify {
                if let Some(p) = s.url_file.as_mut() {
                    fix(p);
                }
            }
            if let Some(p) = cfg
                .alertmanager
                .as_mut()
                .and_then(|a| a.token_file.as_mut())
            {
                fix(p);
            }
            if let Some(p) = cfg
                .chat
                .slack
                .as_mut()
                .and_then(|s| s.signing_secret_file.as_mut())
            {
                fix(p);
            }
            for c in cfg.backends.iceberg.values_mut() {
                if let Some(p) = c.secret_file.as_mut() {
                    fix(p);
                }
                if let Some(s3) = c.s3.as_mut() {
                    for p in [
                        s3.access_key_id_file.as_mut(),
                        s3.secret_access_key_file.as_mut(),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        fix(p);
                    }
                }
                if let Some(p) = c
                    .oauth2
                    .as_mut()
                    .and_then(|o| o.client_secret_file.as_mut())
                {
                    fix(p);
                }
            }
        }
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn load(file: &Path) -> Result<Self, Diagnostics> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Diagnostics(vec![Diagnostic::at(
                file,
                None,
                format!("cannot read: {e}"),
            )])
        })?;
        Self::parse(file, &text)
    }

    /// The audit log's path.
    pub fn audit_path(&self) -> PathBuf {
        self.state_dir.join("audit.jsonl")
    }

    /// The approvals journal's path.
    pub fn approvals_path(&self) -> PathBuf {
        self.state_dir.join("approvals.jsonl")
    }

    /// The event inbox's path.
    pub fn inbox_path(&self) -> PathBuf {
        self.state_dir.join("inbox.jsonl")
    }
}

fn check_server(s: &ServerConfig, err: &mut dyn FnMut(&str, String)) {
    if s.max_connections == 0 {
        err("server.maxConnections", "must be at least 1".into());
    }
    for (f, d) in [
        ("server.headerReadTimeout", s.header_read_timeout),
        ("server.idleTimeout", s.idle_timeout),
        ("server.bodyTimeout", s.body_timeout),
        ("server.rejectLogInterval", s.reject_log_interval),
    ] {
        if d.std().is_zero() {
            err(f, "must be longer than 0s".into());
        }
    }
    if s.max_header_bytes < 8192 {
        err("server.maxHeaderBytes", "must be at least 8192".into());
    }
}

fn check_approvers(list: &[Approver], err: &mut dyn FnMut(&str, String)) {
    let mut names = std::collections::BTreeSet::new();
    for (i, a) in list.iter().enumerate() {
        let f = |x: &str| format!("auth.approvers[{i}].{x}");
        let ok = |c: char| c.is_ascii_alphanumeric() || "._-@".contains(c);
        if a.name.is_empty() || !a.name.chars().all(ok) {
            err(
                &f("name"),
                format!(
                    "{:?}: use letters, digits, '.', '_', '-' or '@' (it is recorded in the audit)",
                    a.name
                ),
            );
        } else if !names.insert(a.name.as_str()) {
            err(&f("name"), format!("duplicate approver name {:?}", a.name));
        }
        match (&a.token_file, &a.token_env) {
            (None, None) => err(&f("tokenFile"), "give tokenFile or tokenEnv".into()),
            (Some(_), Some(_)) => err(
                &f("tokenFile"),
                "give tokenFile or tokenEnv, not both".into(),
            ),
            _ => {}
        }
    }
}

fn check_oauth2(key: &str, c: &IcebergCatalog, err: &mut dyn FnMut(&str, String)) {
    let Some(o) = &c.oauth2 else { return };
    let f = |x: &str| format!("backends.iceberg.{key}.oauth2.{x}");
    if !(c.uri.starts_with("http://") || c.uri.starts_with("https://")) {
        err(
            &f("clientId"),
            "OAuth2 is for REST catalogs (an http:// or https:// uri)".into(),
        );
    }
    if c.secret_file.is_some() || c.secret_env.is_some() {
        err(
            &f("clientId"),
            "give oauth2 or a static token (secretFile/secretEnv), not both".into(),
        );
    }
    if o.client_id.is_empty() {
        err(&f("clientId"), "must not be empty".into());
    }
    match (&o.client_secret_file, &o.client_secret_env) {
        (None, None) => err(
            &f("clientSecretFile"),
            "give clientSecretFile or clientSecretEnv".into(),
        ),
        (Some(_), Some(_)) => err(
            &f("clientSecretFile"),
            "give clientSecretFile or clientSecretEnv, not both".into(),
        ),
        _ => {}
    }
    if let Some(u) = &o.server_uri {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            err(
                &f("serverUri"),
                format!("{u:?}: must start with https:// (or http://)"),
            );
        }
    }
}

fn check_chat(c: &ChatConfig, err: &mut dyn FnMut(&str, String)) {
    if let Some(s) = &c.slack {
        match (&s.signing_secret_file, &s.signing_secret_env) {
            (None, None) => err(
                "chat.slack.signingSecretFile",
                "give signingSecretFile or signingSecretEnv".into(),
            ),
            (Some(_), Some(_)) => err(
                "chat.slack.signingSecretFile",
                "give signingSecretFile or signingSecretEnv, not both".into(),
            ),
            _ => {}
        }
        for u in &s.response_urls {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                err(
                    "chat.slack.responseUrls",
                    format!("{u:?}: must start with https:// (or http://)"),
                );
            }
        }
    }
    if let Some(d) = &c.discord {
        if !(d.api_url.starts_with("https://") || d.api_url.starts_with("http://")) {
            err(
                "chat.discord.apiUrl",
                format!("{:?}: must start with https:// (or http://)", d.api_url),
            );
        }
        if crate::chat::discord::public_key(&d.public_key).is_err() {
            err(
                "chat.discord.publicKey",
                "expected the application's public key: 64 hex digits".into(),
            );
        }
    }
    if c.pause_choices.len() > 3 {
        err("chat.pauseChoices", "at most 3 durations".into());
    }
    if c.pause_choices.iter().any(|d| d.std().is_zero()) {
        err(
            "chat.pauseChoices",
            "durations must be longer than 0s".into(),
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, a) in c.approvers.iter().enumerate() {
        let f = |x: &str| format!("chat.approvers[{i}].{x}");
        let ok = |ch: char| ch.is_ascii_alphanumeric() || "._-@".contains(ch);
        if a.name.is_empty() || !a.name.chars().all(ok) {
            err(
                &f("name"),
                format!(
                    "{:?}: use letters, digits, '.', '_', '-' or '@' (it is recorded in the audit)",
                    a.name
                ),
            );
        } else if !names.insert(a.name.as_str()) {
            err(
                &f("name"),
                format!("duplicate chat approver name {:?}", a.name),
            );
        }
        if a.slack_users.is_empty() && a.discord_users.is_empty() && a.discord_roles.is_empty() {
            err(
                &f("slackUsers"),
                "give slackUsers, discordUsers or discordRoles".into(),
            );
        }
    }
}

/// Reads a secret from a file (trimmed) or an environment variable.
pub fn read_secret(file: Option<&Path>, env: Option<&str>) -> Result<Option<String>, String> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let s = s.trim().to_string();
        if s.is_empty() {
            return Err(format!("{}: file is empty", f.display()));
        }
        return Ok(Some(s));
    }
    Ok(env
        .and_then(|v| std::env::var(v).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_and_no_file_give_the_same_defaults() {
        let empty = AgentConfig::parse(Path::new("agent.yaml"), "{}").unwrap();
        let none = AgentConfig::default();
        for c in [&empty, &none] {
            assert_eq!(c.listen, "0.0.0.0:9095".parse().unwrap());
            assert_eq!(c.log.level, "info");
            assert_eq!(c.log.format, LogFormat::Json);
            assert_eq!(c.webhook.max_body_bytes, 1 << 20);
            assert_eq!(c.schedule.timezone, "UTC");
            assert_eq!(c.schedule.catch_up, 1);
            assert_eq!(c.auth.token_env, "REMEDIATE_WEBHOOK_TOKEN");
            assert_eq!(c.state_dir, PathBuf::from("/var/lib/remediate"));
            assert!(c.reload.watch && c.schedule.enabled && !c.dry_run);
        }
        // Sections given partly still default the rest.
        let partial = AgentConfig::parse(
            Path::new("agent.yaml"),
            "log: { format: text }\nwebhook: { settle: 5s }\n",
        )
        .unwrap();
        assert_eq!(partial.log.level, "info");
        assert_eq!(partial.webhook.max_body_bytes, 1 << 20);
        assert_eq!(
            partial.webhook.settle.std(),
            std::time::Duration::from_secs(5)
        );
    }

    #[test]
    fn the_kubernetes_trigger_has_defaults_and_needs_its_backend() {
        let c = AgentConfig::default();
        let k = &c.triggers.kubernetes;
        assert!(!k.enabled && k.node.is_none() && k.namespaces.is_empty());
        assert_eq!(k.readiness_failing_for.std().as_secs(), 300);
        let ok = AgentConfig::parse(
            Path::new("agent.yaml"),
            "backends: { kubernetes: {} }\ntriggers: { kubernetes: { enabled: true, node: node-a, readinessFailingFor: 2m, namespaces: [etl] } }\n",
        )
        .unwrap();
        assert_eq!(ok.triggers.kubernetes.node.as_deref(), Some("node-a"));
        assert_eq!(
            ok.triggers.kubernetes.readiness_failing_for.std().as_secs(),
            120
        );
        let err = AgentConfig::parse(
            Path::new("agent.yaml"),
            "triggers: { kubernetes: { enabled: true, node: \"\" } }\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "triggers.kubernetes.enabled: the Kubernetes trigger needs backends.kubernetes",
            "triggers.kubernetes.node: must not be empty",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
        let err = AgentConfig::parse(
            Path::new("agent.yaml"),
            "triggers: { kubernetes: { enabled: true, readinessFailingFor: soon } }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("agent.yaml") && err.contains("readinessFailingFor"),
            "{err}"
        );
    }

    #[test]
    fn server_limits_and_approvers_have_defaults_and_are_checked() {
        let c = AgentConfig::default();
        assert_eq!(c.server.max_connections, 512);
        assert_eq!(c.server.header_read_timeout.std().as_secs(), 5);
        assert_eq!(c.server.idle_timeout.std().as_secs(), 60);
        assert_eq!(c.server.body_timeout.std().as_secs(), 10);
        assert_eq!(c.server.max_header_bytes, 16384);
        assert_eq!(c.webhook.oversized_notification, Oversized::AcceptPart);
        assert!(c.auth.approvers.is_empty() && !c.reload.allow_empty);
        let err = AgentConfig::parse(
            Path::new("agent.yaml"),
            "server: { maxConnections: 0, bodyTimeout: 0s, maxHeaderBytes: 100 }\nauth:\n  approvers:\n    - { name: alice, tokenFile: a }\n    - { name: alice, tokenEnv: B }\n    - { name: \"bad name\" }\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "server.maxConnections: must be at least 1",
            "server.bodyTimeout: must be longer than 0s",
            "server.maxHeaderBytes: must be at least 8192",
            "auth.approvers[1].name: duplicate approver name \"alice\"",
            "auth.approvers[2].name: \"bad name\": use letters, digits",
            "auth.approvers[2].tokenFile: give tokenFile or tokenEnv",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
    }

    #[test]
    fn chat_config_errors_name_their_field() {
        let err = AgentConfig::parse(
            Path::new("agent.yaml"),
            "chat:\n  slack: { responseUrls: [ftp://x] }\n  discord: { publicKey: abcd }\n  pauseChoices: [1h, 2h, 3h, 0s]\n  approvers:\n    - { name: alice }\n    - { name: alice, slackUsers: [U1] }\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "chat.slack.signingSecretFile: give signingSecretFile or signingSecretEnv",
            "chat.slack.responseUrls: \"ftp://x\": must start with https://",
            "chat.discord.publicKey: expected the application's public key: 64 hex digits",
            "chat.pauseChoices: at most 3 durations",
            "chat.pauseChoices: durations must be longer than 0s",
            "chat.approvers[0].slackUsers: give slackUsers, discordUsers or discordRoles",
            "chat.approvers[1].name: duplicate chat approver name \"alice\"",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
        assert!(err.starts_with("agent.yaml:"), "{err}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let c = AgentConfig::parse(
            Path::new("/etc/remediate/agent.yaml"),
            "stateDir: state\nplaybooks: /abs/pb\nauth: { tokenFile: token }\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/remediate/state"));
        assert_eq!(c.playbooks, Some(PathBuf::from("/abs/pb")));
        assert_eq!(
            c.auth.token_file,
            Some(PathBuf::from("/etc/remediate/token"))
        );
    }
}
