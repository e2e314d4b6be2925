//! Agent metrics in OpenMetrics (prometheus-client).
//!
//! Label values come only from bounded sets: trigger kinds, statuses,
//! decisions, catalogue action names, the loaded playbook names and sink
//! names from the config. Never from alert labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `trigger`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// alert, schedule or manual.
    pub trigger: &'static str,
    /// firing or resolved.
    pub status: &'static str,
}

/// `playbook`, `action`, `decision`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Playbook name (from the loaded set).
    pub playbook: String,
    /// First action of the run, or empty when it could not be planned.
    pub action: String,
    /// execute, dry-run, suppressed or needs-approval.
    pub decision: &'static str,
}

/// `action`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// Catalogue action name.
    pub action: String,
}

/// `playbook`, `action`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Playbook name.
    pub playbook: String,
    /// Action that failed.
    pub action: String,
}

/// `playbook`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaybookLabels {
    /// Playbook name.
    pub playbook: String,
}

/// `playbook`, `outcome` (`resolved` or `unresolved`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Playbook name.
    pub playbook: String,
    /// `resolved` or `unresolved`.
    pub outcome: &'static str,
}

/// `policy`, `playbook`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// Policy name.
    pub policy: String,
    /// Playbook name.
    pub playbook: String,
}

/// `code`: HTTP status class answered to a webhook.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// HTTP status code.
    pub code: u16,
}

/// `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// success or failure.
    pub result: &'static str,
}

/// `reason`: why a request or connection was turned away (a fixed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// E.g. `unknown_token`, `header_timeout`, `evicted`.
    pub reason: &'static str,
}

/// `catalog`, `namespace`, `table` (from the agent config, so bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// Catalog key in `backends.iceberg`.
    pub catalog: String,
    /// Namespace.
    pub namespace: String,
    /// Table.
    pub table: String,
}

/// `sink`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    /// Sink name from the config.
    pub sink: String,
    /// success or failure.
    pub result: &'static str,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events accepted, by trigger and status.
    pub events: Family<EventLabels, Counter>,
    /// Deliveries dropped as duplicates.
    pub duplicates: Counter,
    /// Webhook requests by answer.
    pub webhook_requests: Family<CodeLabels, Counter>,
    /// Decisions by playbook, action and decision.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Time from planned to verified or failed, per action.
    pub action_duration: Family<ActionLabels, Histogram>,
    /// Failed runs.
    pub failures: Family<FailureLabels, Counter>,
    /// From the alert's start to its resolution, for verified runs (MTTR).
    pub time_to_resolve: Family<PlaybookLabels, Histogram>,
    /// Verified runs by what their alert did next.
    pub outcomes: Family<OutcomeLabels, Counter>,
    /// Verified runs whose alert has not resolved yet.
    pub watched: Gauge,
    /// Alertmanager silences while acting, by result.
    pub silences: Family<ResultLabels, Counter>,
    /// Circuit breaker per playbook with one: 0 closed, 1 open, 2 half-open trial.
    pub breaker_state: Family<BreakerLabels, Gauge>,
    /// Events waiting for a decision (including those settling).
    pub queue_depth: Gauge,
    /// Runs executing now.
    pub in_flight: Gauge,
    /// Reloads of playbooks and policies.
    pub reloads: Family<ResultLabels, Counter>,
    /// 1 when the last reload succeeded (or none was tried), 0 when the agent runs an older set.
    pub config_ok: Gauge,
    /// Playbooks loaded.
    pub playbooks: Gauge,
    /// Notifications by sink and result.
    pub notifications: Family<NotifyLabels, Counter>,
    /// Audit or inbox writes that failed.
    pub storage_errors: Counter,
    /// Errors in the last playbook and policy load that failed (0 after one that loaded).
    pub config_errors: Gauge,
    /// HTTP connections open now.
    pub http_connections: Gauge,
    /// HTTP connections accepted.
    pub http_accepted: Counter,
    /// HTTP connections closed by the agent, by reason.
    pub http_closed: Family<ReasonLabels, Counter>,
    /// HTTP requests turned away, by reason.
    pub http_rejected: Family<ReasonLabels, Counter>,
    /// Alerts of notifications larger than the queue that were not accepted.
    pub alerts_refused: Counter,
    /// 1 while writes to the state store or the audit log fail.
    pub storage_failing: Gauge,
    /// Times the audit log or the state store was found deleted or replaced and reopened.
    pub storage_reopened: Gauge,
    /// Data files of the current snapshot, per configured Iceberg table.
    pub iceberg_total_files: Family<TableLabels, Gauge>,
    /// Of which under the small-file threshold.
    pub iceberg_small_files: Family<TableLabels, Gauge>,
    /// small / total.
    pub iceberg_small_files_ratio: Family<TableLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Pauses in force, by playbook.
    pub paused: Family<PlaybookLabels, Gauge>,
}

impl Metrics {
    /// Registers everything under the `remediate` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("remediate");
        let info = Info::new(vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]);
        registry.register("build", "Build information", info);
        let m = Self {
            events: Family::default(),
            duplicates: Counter::default(),
            webhook_requests: Family::default(),
            decisions: Family::default(),
            action_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 16))
            }),
            failures: Family::default(),
            time_to_resolve: Family::new_with_constructor(|| {
                Histogram::new([
                    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
                ])
            }),
            outcomes: Family::default(),
            watched: Gauge::default(),
            silences: Family::default(),
            breaker_state: Family::default(),
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            reloads: Family::default(),
            config_ok: Gauge::default(),
            playbooks: Gauge::default(),
            notifications: Family::default(),
            storage_errors: Counter::default(),
            config_errors: Gauge::default(),
            http_connections: Gauge::default(),
            http_accepted: Counter::default(),
            http_closed: Family::default(),
            http_rejected: Family::default(),
            alerts_refused: Counter::default(),
            storage_failing: Gauge::default(),
            storage_reopened: Gauge::default(),
            iceberg_total_files: Family::default(),
            iceberg_small_files: Family::default(),
            iceberg_small_files_ratio: Family::default(),
            paused: Family::default(),
            registry,
        };
        m.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "events",
            "Events accepted, by trigger and status",
            self.events.clone(),
        );
        r.register(
            "duplicate_deliveries",
            "Webhook deliveries dropped as duplicates (same fingerprint, startsAt and status)",
            self.duplicates.clone(),
        );
        r.register(
            "webhook_requests",
            "Webhook requests by HTTP status answered",
            self.webhook_requests.clone(),
        );
        r.register(
            "decisions",
            "Gate decisions by playbook, action and decision",
            self.decisions.clone(),
        );
        r.register(
            "action_duration_seconds",
            "Time from planned to verified or failed, per action",
            self.action_duration.clone(),
        );
        r.register(
            "action_failures",
            "Runs that failed (apply error, verify failure, timeout, no driver)",
            self.failures.clone(),
        );
        r.register(
            "time_to_resolve_seconds",
            "From the alert's start to its resolution, for runs the agent verified (the measured MTTR), by playbook",
            self.time_to_resolve.clone(),
        );
        r.register(
            "run_outcomes",
            "Verified runs by what their alert did next: resolved, or unresolved escalateAfter later",
            self.outcomes.clone(),
        );
        r.register(
            "alertmanager_silences",
            "Alertmanager silences while acting (silenceWhileActing): created, expired, failure",
            self.silences.clone(),
        );
        r.register(
            "runs_watched",
            "Verified runs whose alert has not resolved yet",
            self.watched.clone(),
        );
        r.register(
            "circuit_breaker_state",
            "Circuit breaker of each playbook whose policy has one: 0 closed, 1 open, 2 half-open (one trial run in flight)",
            self.breaker_state.clone(),
        );
        r.register(
            "queue_depth",
            "Events waiting for a decision",
            self.queue_depth.clone(),
        );
        r.register(
            "runs_in_flight",
            "Runs executing now",
            self.in_flight.clone(),
        );
        r.register(
            "config_reloads",
            "Reloads of playbooks and policies by result",
            self.reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last reload succeeded, 0 when an older set is still running",
            self.config_ok.clone(),
        );
        r.register(
            "playbooks_loaded",
            "Playbooks loaded",
            self.playbooks.clone(),
        );
        r.register(
            "notifications",
            "Notifications by sink and result",
            self.notifications.clone(),
        );
        r.register(
            "storage_errors",
            "Writes to the state store or the audit log that failed",
            self.storage_errors.clone(),
        );
        r.register(
            "config_errors",
            "Errors in the last playbook and policy load that failed (0 once a load succeeds)",
            self.config_errors.clone(),
        );
        r.register(
            "http_connections_open",
            "HTTP connections open now",
            self.http_connections.clone(),
        );
        r.register(
            "http_connections_accepted",
            "HTTP connections accepted",
            self.http_accepted.clone(),
        );
        r.register(
            "http_connections_closed",
            "HTTP connections the agent closed, by reason (header_timeout, idle_timeout, evicted, refused_at_cap, protocol_error)",
            self.http_closed.clone(),
        );
        r.register(
            "http_rejected_requests",
            "HTTP requests turned away, by reason (missing_token, unknown_token, forbidden, invalid_payload, too_large, body_timeout, oversized_notification, queue_full, ...)",
            self.http_rejected.clone(),
        );
        r.register(
            "webhook_alerts_refused",
            "Alerts of notifications with more alerts than webhook.queueCapacity that were not accepted",
            self.alerts_refused.clone(),
        );
        r.register(
            "storage_failing",
            "1 while writes to the state store or the audit log fail (nothing new is decided, /readyz is 503)",
            self.storage_failing.clone(),
        );
        r.register(
            "storage_reopened",
            "Times the audit log or the state store was found deleted or replaced under the agent and reopened",
            self.storage_reopened.clone(),
        );
        r.register(
            "iceberg_table_total_files",
            "Data files in the current snapshot of a configured Iceberg table",
            self.iceberg_total_files.clone(),
        );
        r.register(
            "iceberg_table_small_files",
            "Data files under the small-file threshold in the current snapshot",
            self.iceberg_small_files.clone(),
        );
        r.register(
            "iceberg_table_small_files_ratio",
            "Small data files / all data files of the current snapshot",
            self.iceberg_small_files_ratio.clone(),
        );
        r.register(
            "paused",
            "Pauses in force (remediate pause, the API or a chat button), by playbook",
            self.paused.clone(),
        );
        self.config_ok.set(1);
        self
    }

    /// The OpenMetrics exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
