//! The command line: every subcommand's arguments, as clap parses them.
//! `--help` text comes from the doc comments here.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "remediate",
    version,
    about = "Self-healing remediation agent: Alertmanager alerts and cron ticks to gated, audited playbook actions",
    long_about = "Self-healing remediation agent.\n\nMatches Alertmanager alerts (and cron ticks, and manual runs) to YAML playbooks, passes every planned action through a policy gate (scope, windows, rate limits, cooldowns, circuit breaker, approvals, dry-run), executes it through a driver, verifies it and appends an audit record for every decision.\n\nExit codes: 0 ok, 1 an action failed, 2 bad input.",
    after_help = "Start with: remediate run --dry-run --alert examples/alerts/crashloop-firing.json"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Sources {
    /// Playbook directory [default: ./playbooks if present, else the embedded bundle]
    #[arg(long, value_name = "DIR", env = "REMEDIATE_PLAYBOOKS")]
    pub playbooks: Option<PathBuf>,
    /// Policy directory [default: ./policies if present, else the embedded bundle]
    #[arg(long, value_name = "DIR", env = "REMEDIATE_POLICIES")]
    pub policies: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check playbooks and policies; report every error with file:line:column.
    Validate {
        #[command(flatten)]
        sources: Sources,
    },
    /// Decide (and, without --dry-run, execute) remediations for an alert payload or one playbook.
    #[command(group(clap::ArgGroup::new("input").required(true).args(["alert", "playbook"])))]
    Run(RunArgs),
    /// What-if: the decisions the current playbooks and policies would make for recorded events or alert payloads, with a diff against what was decided then.
    #[command(
        group(clap::ArgGroup::new("input").required(true).multiple(true).args(["audit", "alerts"])),
        after_help = "Promote a playbook from shadow to enforce: set mode: enforce in a copy, then\n  remediate replay --audit /var/lib/remediate/audit.jsonl --playbooks ./candidate --changed-only"
    )]
    Replay(ReplayArgs),
    /// Per playbook over the audit log: runs, executed, verified, resolved, unresolved, failed, suppressed by reason, time to resolve (p50, p95).
    #[command(
        after_help = "Example: remediate report --audit /var/lib/remediate/audit.jsonl --since 7d"
    )]
    Report(ReportArgs),
    /// Run playbook unit tests (*.test.yaml beside the playbooks).
    Test {
        /// Directory of playbooks and their tests [default: ./playbooks if present, else the embedded bundle]
        dir: Option<PathBuf>,
        /// Policy directory [default: ./policies if present, else the embedded bundle]
        #[arg(long, value_name = "DIR", env = "REMEDIATE_POLICIES")]
        policies: Option<PathBuf>,
    },
    /// Run the node agent: Alertmanager webhook, cron maintenance, metrics.
    #[command(
        long_about = "Run the node agent.\n\nServes POST /webhook/alertmanager (bearer token), GET /metrics (OpenMetrics), /healthz and /readyz; runs playbooks' schedule triggers; reloads playbooks and policies on SIGHUP and on file change (a bad set keeps the old one); on SIGTERM stops accepting, lets running actions finish within shutdown.grace and flushes the audit.\n\nEvery config field has a default: see examples/agent.yaml.",
        after_help = "Example: REMEDIATE_WEBHOOK_TOKEN=s3cret remediate agent --config examples/agent.yaml"
    )]
    Agent(AgentArgs),
    /// Approve a run an agent holds for approval (it is decided again: limits and windows still apply).
    Approve(AnswerArgs),
    /// Deny a run an agent holds for approval.
    Deny(AnswerArgs),
    /// List the runs an agent holds for approval.
    Approvals(AgentClient),
    /// Pause a playbook (or a playbook on one target) on an agent for a while: matching runs are suppressed.
    Pause(PauseArgs),
    /// Lift a pause before its end.
    Resume(ResumeArgs),
    /// List the pauses in force on an agent.
    Pauses(AgentClient),
    /// Run one step of a node-scoped action on this host and print the result as JSON (used by an agent over SSH).
    #[command(hide = true)]
    ExecStep(ExecStepArgs),
    /// List every action playbooks may use, with its targets and whether this build can execute it.
    Actions,
    /// Print the JSON Schema of Playbook (default) or Policy documents or the agent config, or write all three.
    Schema {
        /// Which schema to print.
        #[arg(long, value_enum, default_value_t = SchemaKind::Playbook)]
        kind: SchemaKind,
        /// Write playbook.schema.json, policy.schema.json and agent.schema.json into this directory instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum SchemaKind {
    Playbook,
    Policy,
    /// The agent's config file.
    Agent,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A decision table and a summary line.
    Text,
    /// The audit records written, one JSON object a line.
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Plan, gate and audit only: change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Alertmanager webhook body (version 4) to act on, or several one after
    /// another (one per line), each decided as one notification, read one at
    /// a time (at most 16 MiB each); - reads stdin.
    #[arg(long, value_name = "FILE|-")]
    pub alert: Option<PathBuf>,
    /// Run this playbook by hand, as a cron tick would.
    #[arg(long, value_name = "NAME")]
    pub playbook: Option<String>,
    /// Set a playbook value (with --playbook); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "playbook", value_parser = parse_kv)]
    pub set: Vec<(String, String)>,
    /// Audit log to append to.
    #[arg(
        long,
        value_name = "PATH",
        default_value = ".remediate/audit.jsonl",
        env = "REMEDIATE_AUDIT"
    )]
    pub audit: PathBuf,
    /// Output format (text: the table shows the first 1000 rows and counts
    /// the rest; json: every record, one a line, as it is written).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Evaluate the gate as of this time (RFC 3339) instead of now: what-if for windows and limits.
    #[arg(long, value_name = "TIME")]
    pub at: Option<DateTime<Utc>>,
    /// Node name recorded in the audit [default: the host name]
    #[arg(long, env = "REMEDIATE_NODE")]
    pub node: Option<String>,
    /// Agent config whose `backends` (Kubernetes, Docker, Postgres, SSH) the
    /// drivers use: plans read the real systems, and without --dry-run the
    /// actions execute. Without it, actions plan offline.
    #[arg(long, value_name = "FILE", env = "REMEDIATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Use this kubeconfig for Kubernetes actions: plans read the cluster
    /// ("would evict pod etl/x (CrashLoopBackOff, 14 restarts)"), and without
    /// --dry-run the actions execute. Without it, Kubernetes actions plan offline.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context [default: the current one]
    #[arg(long, value_name = "NAME", requires = "kubeconfig")]
    pub context: Option<String>,
    #[command(flatten)]
    pub sources: Sources,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Audit log to replay (its rotated files `PATH.N` are read too). With
    /// --alerts: the history the alerts are decided against.
    #[arg(long, value_name = "PATH")]
    pub audit: Option<PathBuf>,
    /// Alertmanager payloads to decide: one JSON object, an array (read
    /// whole), or one per line (read one at a time).
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
    /// With --alerts: decide as of this time (RFC 3339) [default: now]
    #[arg(long, value_name = "TIME")]
    pub at: Option<DateTime<Utc>>,
    /// Only rows whose decision changed.
    #[arg(long)]
    pub changed_only: bool,
    /// Output format (text: the table shows the first 1000 rows and counts
    /// the rest; json: every row, one object a line as decided, then the
    /// summary).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub sources: Sources,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Audit log (its rotated files `PATH.N` are read too).
    #[arg(
        long,
        value_name = "PATH",
        default_value = ".remediate/audit.jsonl",
        env = "REMEDIATE_AUDIT"
    )]
    pub audit: PathBuf,
    /// Only records this recent, e.g. 24h, 7d [default: all history]
    #[arg(long, value_name = "DURATION")]
    pub since: Option<crate::units::Duration>,
    /// Only this playbook.
    #[arg(long, value_name = "NAME")]
    pub playbook: Option<String>,
    /// Output format (json: one object with every playbook's figures).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct ExecStepArgs {
    /// Action name.
    #[arg(long)]
    pub action: String,
    /// This host's node name (the target's node).
    #[arg(long)]
    pub node: String,
    /// plan, apply or verify.
    #[arg(long)]
    pub phase: String,
    /// Target fields as JSON.
    #[arg(long)]
    pub target: String,
    /// Parameters as JSON.
    #[arg(long)]
    pub params: String,
    /// The plan (apply, verify) as JSON.
    #[arg(long)]
    pub plan: Option<String>,
}

#[derive(Args, Debug)]
pub struct AgentClient {
    /// The agent's URL.
    #[arg(
        long,
        value_name = "URL",
        env = "REMEDIATE_AGENT",
        default_value = "http://127.0.0.1:9095"
    )]
    pub agent: String,
    /// File holding your approver token (auth.approvers in the agent's config) [default: $REMEDIATE_APPROVER_TOKEN]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AnswerArgs {
    /// Approval id (from the notification or `remediate approvals`).
    pub id: String,
    #[command(flatten)]
    pub client: AgentClient,
    /// A note recorded in the audit.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub comment: String,
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// Playbook to pause.
    pub playbook: String,
    /// Only on this target, as notifications show it (e.g. "pod etl/spark-driver-1") [default: every target]
    #[arg(long, value_name = "TARGET")]
    pub target: Option<String>,
    /// How long, e.g. 30m, 4h (at most 30 days).
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: String,
    /// Why (recorded in the audit and in the suppressed runs' reason).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub client: AgentClient,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// Pause id (from `remediate pauses` or the pause's notification).
    pub id: String,
    #[command(flatten)]
    pub client: AgentClient,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Agent config file (YAML) [default: every field's default]
    #[arg(long, value_name = "FILE", env = "REMEDIATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Shadow mode: decide and audit every event, change nothing (overrides the config).
    #[arg(long)]
    pub dry_run: bool,
    /// Listen address (overrides the config), e.g. 127.0.0.1:9095.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// State directory for the audit log and the inbox (overrides the config).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Check the config, playbooks, policies and secrets, print a summary and exit.
    #[arg(long)]
    pub check: bool,
}

/// `KEY=VALUE` of `--set`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}
