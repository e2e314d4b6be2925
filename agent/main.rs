//! `remediate` CLI: parses arguments, calls the library, maps outcomes to
//! exit codes (0 ok, 1 an action failed, 2 bad input).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

use remediate::audit;
use remediate::bundle::{self, Origin};
use remediate::diag::Diagnostics;
use remediate::drivers::{Registry, CATALOG};
use remediate::engine::{Engine, RunStatus};
use remediate::event::{Event, Labels, Status, TriggerKind};
use remediate::playbook::load::{read_dir, Config, Source};
use remediate::policy::Decision;
use remediate::report::{self, Row, Summary};
use remediate::trigger::alertmanager::Payload;

/// Largest `--alert` body accepted.
const MAX_ALERT_BYTES: u64 = 16 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "remediate",
    version,
    about = "Self-healing remediation agent: Alertmanager alerts and cron ticks to gated, audited playbook actions",
    long_about = "Self-healing remediation agent.\n\nMatches Alertmanager alerts (and cron ticks, and manual runs) to YAML playbooks, passes every planned action through a policy gate (scope, windows, rate limits, cooldowns, circuit breaker, approvals, dry-run), executes it through a driver, verifies it and appends an audit record for every decision.\n\nExit codes: 0 ok, 1 an action failed, 2 bad input.",
    after_help = "Start with: remediate run --dry-run --alert examples/alerts/crashloop-firing.json"
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Sources {
    /// Playbook directory [default: ./playbooks if present, else the embedded bundle]
    #[arg(long, value_name = "DIR", env = "REMEDIATE_PLAYBOOKS")]
    playbooks: Option<PathBuf>,
    /// Policy directory [default: ./policies if present, else the embedded bundle]
    #[arg(long, value_name = "DIR", env = "REMEDIATE_POLICIES")]
    policies: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
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
enum SchemaKind {
    Playbook,
    Policy,
    /// The agent's config file.
    Agent,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// A decision table and a summary line.
    Text,
    /// The audit records written, one JSON object a line.
    Json,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Plan, gate and audit only: change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Alertmanager webhook body (version 4) to act on; - reads stdin.
    #[arg(long, value_name = "FILE|-")]
    alert: Option<PathBuf>,
    /// Run this playbook by hand, as a cron tick would.
    #[arg(long, value_name = "NAME")]
    playbook: Option<String>,
    /// Set a playbook value (with --playbook); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "playbook", value_parser = parse_kv)]
    set: Vec<(String, String)>,
    /// Audit log to append to.
    #[arg(
        long,
        value_name = "PATH",
        default_value = ".remediate/audit.jsonl",
        env = "REMEDIATE_AUDIT"
    )]
    audit: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Evaluate the gate as of this time (RFC 3339) instead of now: what-if for windows and limits.
    #[arg(long, value_name = "TIME")]
    at: Option<DateTime<Utc>>,
    /// Node name recorded in the audit [default: the host name]
    #[arg(long, env = "REMEDIATE_NODE")]
    node: Option<String>,
    /// Agent config whose `backends` (Kubernetes, Docker, Postgres, SSH) the
    /// drivers use: plans read the real systems, and without --dry-run the
    /// actions execute. Without it, actions plan offline.
    #[arg(long, value_name = "FILE", env = "REMEDIATE_CONFIG")]
    config: Option<PathBuf>,
    /// Use this kubeconfig for Kubernetes actions: plans read the cluster
    /// ("would evict pod etl/x (CrashLoopBackOff, 14 restarts)"), and without
    /// --dry-run the actions execute. Without it, Kubernetes actions plan offline.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context [default: the current one]
    #[arg(long, value_name = "NAME", requires = "kubeconfig")]
    context: Option<String>,
    #[command(flatten)]
    sources: Sources,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// Audit log to replay (its rotated files `PATH.N` are read too). With
    /// --alerts: the history the alerts are decided against.
    #[arg(long, value_name = "PATH")]
    audit: Option<PathBuf>,
    /// Alertmanager payloads to decide: one JSON object, an array, or one per line.
    #[arg(long, value_name = "FILE")]
    alerts: Option<PathBuf>,
    /// With --alerts: decide as of this time (RFC 3339) [default: now]
    #[arg(long, value_name = "TIME")]
    at: Option<DateTime<Utc>>,
    /// Only rows whose decision changed.
    #[arg(long)]
    changed_only: bool,
    /// Output format (json: one row object a line, then the summary).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    sources: Sources,
}

#[derive(Args, Debug)]
struct ExecStepArgs {
    /// Action name.
    #[arg(long)]
    action: String,
    /// This host's node name (the target's node).
    #[arg(long)]
    node: String,
    /// plan, apply or verify.
    #[arg(long)]
    phase: String,
    /// Target fields as JSON.
    #[arg(long)]
    target: String,
    /// Parameters as JSON.
    #[arg(long)]
    params: String,
    /// The plan (apply, verify) as JSON.
    #[arg(long)]
    plan: Option<String>,
}

#[derive(Args, Debug)]
struct AgentClient {
    /// The agent's URL.
    #[arg(
        long,
        value_name = "URL",
        env = "REMEDIATE_AGENT",
        default_value = "http://127.0.0.1:9095"
    )]
    agent: String,
    /// File holding the agent's bearer token [default: $REMEDIATE_WEBHOOK_TOKEN]
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct AnswerArgs {
    /// Approval id (from the notification or `remediate approvals`).
    id: String,
    #[command(flatten)]
    client: AgentClient,
    /// Who answers, recorded in the audit [default: $USER]
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    /// A note recorded in the audit.
    #[arg(long, value_name = "TEXT", default_value = "")]
    comment: String,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Agent config file (YAML) [default: every field's default]
    #[arg(long, value_name = "FILE", env = "REMEDIATE_CONFIG")]
    config: Option<PathBuf>,
    /// Shadow mode: decide and audit every event, change nothing (overrides the config).
    #[arg(long)]
    dry_run: bool,
    /// Listen address (overrides the config), e.g. 127.0.0.1:9095.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// State directory for the audit log and the inbox (overrides the config).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Check the config, playbooks, policies and secrets, print a summary and exit.
    #[arg(long)]
    check: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Outcome classes and their exit codes.
enum Fail {
    /// Exit 2: bad input; the message says what and where.
    Input(String),
    /// Exit 1: an action (or the audit) failed.
    Action(String),
}

impl From<Diagnostics> for Fail {
    fn from(d: Diagnostics) -> Self {
        let n = d.len();
        Fail::Input(format!("{d}\n{n} error{}", if n == 1 { "" } else { "s" }))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Agent(args) = cli.command {
        return exit(agent(args, cli.verbose));
    }
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Agent(_) => Ok(()),
        Command::Replay(a) => replay(a),
        Command::ExecStep(a) => exec_step(a),
        Command::Approve(a) => answer(a, true),
        Command::Deny(a) => answer(a, false),
        Command::Approvals(c) => list_approvals(c),
        Command::Validate { sources } => validate(&sources),
        Command::Run(args) => run(args),
        Command::Test { dir, policies } => test(dir, policies),
        Command::Actions => {
            actions();
            Ok(())
        }
        Command::Schema { kind, out } => {
            schema(kind, out).map_err(|e| Fail::Input(format!("{e:#}")))
        }
    };
    exit(result)
}

fn exit(result: Result<(), Fail>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Input(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(Fail::Action(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

fn agent(args: AgentArgs, verbose: u8) -> Result<(), Fail> {
    use remediate::config::{AgentConfig, LogFormat};
    use remediate::pipeline::{self as daemon, Agent};
    let mut cfg = match &args.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    if args.dry_run {
        cfg.dry_run = true;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = args.state_dir {
        cfg.state_dir = d;
    }
    // Logs: the config's format and level; -v and RUST_LOG override the level.
    let level = match verbose {
        0 => cfg.log.level.clone(),
        1 => "info".into(),
        _ => "debug".into(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level))
        .map_err(|e| Fail::Input(format!("log.level {level:?}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
    let node = daemon::node_name(&cfg);
    let listen = cfg.listen;
    let grace = cfg.shutdown_grace;
    let dry = cfg.dry_run;
    let (pb_src, pol_src) = daemon::describe_sources(&cfg);
    let state_dir = cfg.state_dir.clone();
    let check = args.check;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Fail::Action(format!("cannot start runtime: {e}")))?;
    let (registry, coordinator) = build_drivers(&cfg, &node, &rt)?;
    let agent = Agent::prepare_coordinated(
        cfg,
        node.clone(),
        registry,
        coordinator,
        std::time::Duration::from_secs(2),
    )
    .map_err(|e| match e {
        daemon::Error::Config(d) => Fail::from(d),
        other => Fail::Input(other.to_string()),
    })?;
    let n_playbooks = agent.shared.engine().config.playbooks.len();
    if check {
        println!(
            "ok: node {node}, {n_playbooks} playbooks ({pb_src}), policies ({pol_src}), state {}, listen {listen}{}",
            state_dir.display(),
            if dry { ", DRY RUN" } else { "" }
        );
        return Ok(());
    }
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Fail::Input(format!("listen {listen}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Fail::Input(format!("listen {listen}: {e}")))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let served = tokio::spawn(remediate::server::serve(agent, listener, stop_rx));
        tracing::info!(%addr, node = %node, playbooks = n_playbooks, dry_run = dry, "listening");
        let signal = wait_for_stop().await;
        tracing::info!(signal, grace = %grace, "stopping: no new webhooks; running actions get the grace period");
        let _ = stop_tx.send(true);
        match served.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Fail::Action(format!("http server: {e}"))),
            Err(e) => Err(Fail::Action(format!("agent task: {e}"))),
        }
    })
}

fn replay(args: ReplayArgs) -> Result<(), Fail> {
    let (cfg, pb_origin, pol_origin) = load(&args.sources)?;
    let engine = Engine::new(cfg, Registry::new(), "replay");
    let history = match &args.audit {
        Some(p) => {
            if !p.exists() {
                return Err(Fail::Input(format!("{}: no such audit log", p.display())));
            }
            audit::read_all(p)
                .map_err(|e| Fail::Input(e.to_string()))?
                .records
        }
        None => Vec::new(),
    };
    let (rows, summary) = match &args.alerts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Fail::Input(format!("{}: cannot read: {e}", path.display())))?;
            let events = remediate::replay::read_payloads(&text)
                .map_err(|e| Fail::Input(format!("{}: {e}", path.display())))?;
            let ledger = audit::ledger_from(&history);
            remediate::replay::alerts(&engine, &events, args.at.unwrap_or_else(Utc::now), ledger)
        }
        None => remediate::replay::audit(&engine, &history),
    };
    let shown: Vec<_> = rows
        .into_iter()
        .filter(|r| !args.changed_only || r.changed)
        .collect();
    match args.output {
        Output::Json => {
            for r in &shown {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            }
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({ "summary": summary }))
                    .unwrap_or_default()
            );
        }
        Output::Text => {
            println!(
                "replaying with playbooks from {pb_origin} and policies from {pol_origin}; nothing is executed or recorded"
            );
            if !shown.is_empty() {
                println!("{}", report::replay_table(&shown));
            }
            let now: Vec<String> = summary
                .now
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            let changes: Vec<String> = summary
                .transitions
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            println!(
                "{} event(s), {} decision(s): now {}; {} changed{}",
                summary.events,
                summary.rows,
                if now.is_empty() {
                    "none".into()
                } else {
                    now.join(", ")
                },
                summary.changed,
                if changes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", changes.join(", "))
                }
            );
        }
    }
    Ok(())
}

/// One step on this host for an agent elsewhere; always prints one JSON object.
fn exec_step(a: ExecStepArgs) -> Result<(), Fail> {
    use remediate::drivers::remote::StepResult;
    let result = (|| -> Result<StepResult, (String, bool)> {
        let target: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&a.target).map_err(|e| (format!("--target: {e}"), false))?;
        let params: serde_json::Value =
            serde_json::from_str(&a.params).map_err(|e| (format!("--params: {e}"), false))?;
        let mut reg = remediate::drivers::command::builtin(&a.node);
        if let Ok(docker) = remediate::drivers::dockerd::connect(&Default::default()) {
            remediate::drivers::dockerd::register(
                &mut reg,
                std::sync::Arc::new(remediate::drivers::dockerd::Engine {
                    docker,
                    node: a.node.clone(),
                }),
            );
        }
        let driver = reg
            .get(&a.action)
            .ok_or_else(|| (format!("no driver for {} on this host", a.action), false))?;
        let req = remediate::drivers::Request {
            target,
            params,
            dry_run: a.phase == "plan",
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| (e.to_string(), true))?;
        let plan = || -> Result<remediate::drivers::Plan, (String, bool)> {
            serde_json::from_str(a.plan.as_deref().unwrap_or("null"))
                .map_err(|e| (format!("--plan: {e}"), false))
        };
        let mut r = StepResult {
            plan: None,
            outcome: None,
            verdict: None,
            error: None,
            retryable: false,
        };
        let err = |e: remediate::drivers::DriverError| (e.message, e.retryable);
        match a.phase.as_str() {
            "plan" => r.plan = Some(rt.block_on(driver.plan(&req)).map_err(err)?),
            "apply" => r.outcome = Some(rt.block_on(driver.apply(&req, &plan()?)).map_err(err)?),
            "verify" => r.verdict = Some(rt.block_on(driver.verify(&req, &plan()?)).map_err(err)?),
            other => return Err((format!("--phase {other:?}: plan, apply or verify"), false)),
        }
        Ok(r)
    })();
    let out = match result {
        Ok(r) => r,
        Err((message, retryable)) => StepResult {
            plan: None,
            outcome: None,
            verdict: None,
            error: Some(message),
            retryable,
        },
    };
    println!("{}", serde_json::to_string(&out).unwrap_or_default());
    Ok(())
}

fn client_token(c: &AgentClient) -> Result<String, Fail> {
    remediate::config::read_secret(c.token_file.as_deref(), Some("REMEDIATE_WEBHOOK_TOKEN"))
        .map_err(|e| Fail::Input(format!("--token-file: {e}")))?
        .ok_or_else(|| {
            Fail::Input("no token: give --token-file or set REMEDIATE_WEBHOOK_TOKEN".into())
        })
}

/// Calls the agent's API; non-2xx answers become errors carrying its message.
fn call(
    c: &AgentClient,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, Fail> {
    let token = client_token(c)?;
    let url = format!("{}{path}", c.agent.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail::Action(format!("cannot start runtime: {e}")))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| Fail::Action(e.to_string()))?;
        let mut req = client.request(method, &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .map_err(|e| Fail::Action(format!("cannot reach the agent at {}: {e}", c.agent)))?;
        let code = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        if code.is_success() {
            return Ok(v);
        }
        let msg = v["error"].as_str().unwrap_or("no message").to_string();
        if code.is_client_error() {
            Err(Fail::Input(format!("{}: HTTP {code}: {msg}", c.agent)))
        } else {
            Err(Fail::Action(format!("{}: HTTP {code}: {msg}", c.agent)))
        }
    })
}

fn answer(a: AnswerArgs, approve: bool) -> Result<(), Fail> {
    let by =
        a.by.clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Fail::Input("--by: say who answers (recorded in the audit)".into()))?;
    let v = call(
        &a.client,
        reqwest::Method::POST,
        &format!("/api/v1/approvals/{}", a.id),
        Some(serde_json::json!({
            "decision": if approve { "approve" } else { "deny" },
            "by": by,
            "comment": a.comment,
        })),
    )?;
    println!(
        "{} {}: {} on {} ({})",
        v["answer"].as_str().unwrap_or_default(),
        a.id,
        v["playbook"].as_str().unwrap_or_default(),
        v["target"].as_str().unwrap_or_default(),
        v["note"].as_str().unwrap_or_default()
    );
    Ok(())
}

fn list_approvals(c: AgentClient) -> Result<(), Fail> {
    let v = call(&c, reqwest::Method::GET, "/api/v1/approvals", None)?;
    let pending = v["pending"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        println!("no runs wait for approval on {}", c.agent);
        return Ok(());
    }
    for p in pending {
        println!(
            "{}  {} on {}  ({}; expires {})",
            p["id"].as_str().unwrap_or_default(),
            p["playbook"].as_str().unwrap_or_default(),
            p["target"].as_str().unwrap_or_default(),
            p["reason"].as_str().unwrap_or_default(),
            p["expiresAt"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

type Coordinator = Option<std::sync::Arc<dyn remediate::coord::Coordinator>>;

/// The drivers the config's backends enable (connecting reads, changes
/// nothing), and the coordinator for exactly-once across agents.
fn build_drivers(
    cfg: &remediate::config::AgentConfig,
    node: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<(Registry, Coordinator), Fail> {
    let node = node.to_string();
    // Drivers: host.command always; Kubernetes when configured (connecting
    // reads the service account or kubeconfig, nothing is changed).
    let mut registry = remediate::drivers::command::builtin_with(&node, cfg.backends.ssh.clone());
    let mut coordinator: Option<std::sync::Arc<dyn remediate::coord::Coordinator>> = None;
    if let Some(k) = &cfg.backends.kubernetes {
        let client = rt
            .block_on(remediate::drivers::k8s::connect(k))
            .map_err(|e| Fail::Input(format!("backends.kubernetes: {e}")))?;
        let holder = std::env::var("POD_NAME").unwrap_or_else(|_| node.clone());
        let namespace = k
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "remediate".into());
        coordinator = Some(std::sync::Arc::new(
            remediate::coord::kubernetes::LeaseCoordinator::new(
                client.clone(),
                &namespace,
                &holder,
            ),
        ));
        remediate::drivers::k8s::register(
            &mut registry,
            std::sync::Arc::new(remediate::drivers::k8s::Kube { client, holder }),
        );
    }
    if let Some(d) = &cfg.backends.docker {
        let docker = remediate::drivers::dockerd::connect(d)
            .map_err(|e| Fail::Input(format!("backends.docker: {e}")))?;
        // On a Swarm manager, claims go to the managers' raft store.
        let info = rt
            .block_on(docker.info())
            .map_err(|e| Fail::Input(format!("backends.docker: cannot reach the engine: {e}")))?;
        let manager = info
            .swarm
            .as_ref()
            .and_then(|s| s.control_available)
            .unwrap_or(false);
        if coordinator.is_none() && manager {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            let holder = std::env::var("REMEDIATE_AGENT_ID").unwrap_or(format!("{node}@{host}"));
            coordinator = Some(std::sync::Arc::new(
                remediate::coord::swarm::ConfigCoordinator::new(docker.clone(), &holder),
            ));
        }
        remediate::drivers::dockerd::register(
            &mut registry,
            std::sync::Arc::new(remediate::drivers::dockerd::Engine {
                docker,
                node: node.clone(),
            }),
        );
    }
    remediate::drivers::pg::register(&mut registry, &cfg.backends.postgres);
    remediate::drivers::ice::register(&mut registry, &cfg.backends.iceberg);
    // Node-scoped actions on inventory hosts go over SSH.
    remediate::drivers::remote::route(&mut registry, &node, &cfg.backends.ssh);
    Ok((registry, coordinator))
}

async fn wait_for_stop() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn pick(
    dir: Option<&Path>,
    default_dir: &str,
    embedded: fn() -> Vec<Source>,
) -> Result<(Origin, Vec<Source>), Fail> {
    match dir {
        Some(d) => Ok((Origin::Dir(d.to_path_buf()), read_dir(d)?)),
        None if Path::new(default_dir).is_dir() => Ok((
            Origin::Dir(default_dir.into()),
            read_dir(Path::new(default_dir))?,
        )),
        None => Ok((Origin::Embedded, embedded())),
    }
}

fn load(sources: &Sources) -> Result<(Config, Origin, Origin), Fail> {
    let (pb_origin, pbs) = pick(sources.playbooks.as_deref(), "playbooks", bundle::playbooks)?;
    let (pol_origin, pols) = pick(sources.policies.as_deref(), "policies", bundle::policies)?;
    let cfg = Config::load(&pbs, &pols)?;
    Ok((cfg, pb_origin, pol_origin))
}

fn validate(sources: &Sources) -> Result<(), Fail> {
    let (cfg, pb, pol) = load(sources)?;
    let schedules: usize = cfg.playbooks.iter().map(|p| p.schedules.len()).sum();
    println!(
        "ok: {} playbook{} ({pb}), {} polic{} ({pol}), {schedules} schedule trigger{}",
        cfg.playbooks.len(),
        if cfg.playbooks.len() == 1 { "" } else { "s" },
        cfg.policies.len(),
        if cfg.policies.len() == 1 { "y" } else { "ies" },
        if schedules == 1 { "" } else { "s" },
    );
    Ok(())
}

fn node_name(given: Option<String>) -> String {
    given
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn read_alert(path: &Path) -> Result<Vec<u8>, Fail> {
    let mut buf = Vec::new();
    let shown = path.display();
    let res = if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_ALERT_BYTES + 1)
            .read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_ALERT_BYTES + 1).read_to_end(&mut buf))
    };
    res.map_err(|e| Fail::Input(format!("{shown}: cannot read: {e}")))?;
    if buf.len() as u64 > MAX_ALERT_BYTES {
        return Err(Fail::Input(format!(
            "{shown}: larger than {} MiB: not an Alertmanager webhook body",
            MAX_ALERT_BYTES >> 20
        )));
    }
    Ok(buf)
}

fn run(args: RunArgs) -> Result<(), Fail> {
    let (cfg, pb_origin, pol_origin) = load(&args.sources)?;
    let now = args.at.unwrap_or_else(Utc::now);
    let events: Vec<Event> = match (&args.alert, &args.playbook) {
        (Some(path), _) => {
            let body = read_alert(path)?;
            let payload = Payload::parse(&body)
                .map_err(|e| Fail::Input(format!("{}: {e}", path.display())))?;
            if payload.truncated_alerts > 0 {
                eprintln!(
                    "warning: {}: Alertmanager left out {} alert(s) of this group (max_alerts); they are not in the payload and are not decided",
                    path.display(),
                    payload.truncated_alerts
                );
            }
            payload.events()
        }
        (None, Some(name)) => {
            let pb = cfg.playbook(name).ok_or_else(|| {
                let names: Vec<&str> = cfg.playbooks.iter().map(|p| p.name()).collect();
                Fail::Input(format!(
                    "unknown playbook {name:?} (loaded from {pb_origin}: {})",
                    names.join(", ")
                ))
            })?;
            let values: Labels = args.set.iter().cloned().collect();
            // Reject unknown or missing values before anything is recorded.
            pb.resolve_values(&values).map_err(Fail::Input)?;
            vec![Event::for_playbook(TriggerKind::Manual, name, values, now)]
        }
        (None, None) => return Err(Fail::Input("give --alert FILE or --playbook NAME".into())),
    };

    let history = audit::read_all(&args.audit).map_err(|e| Fail::Input(e.to_string()))?;
    if !history.damaged.is_empty() && !args.dry_run {
        return Err(Fail::Input(audit::damaged_error(
            &args.audit,
            &history.damaged,
        )));
    }
    if !history.skipped.is_empty() {
        eprintln!(
            "warning: {}: skipped unreadable line(s) {:?} (a torn write from a crash is expected at the end)",
            args.audit.display(),
            history.skipped
        );
    }
    let mut ledger = audit::ledger_from(&history.records);
    // One payload is one notification: maxTargetsPerRun counts within it.
    ledger.begin_group(0);
    let writer = std::sync::Mutex::new(
        audit::Writer::open(&args.audit).map_err(|e| Fail::Input(e.to_string()))?,
    );
    let node = node_name(args.node.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail::Action(format!("cannot start runtime: {e}")))?;
    let mut registry = match &args.config {
        Some(path) => {
            let cfg = remediate::config::AgentConfig::load(path)?;
            build_drivers(&cfg, &node, &rt)?.0
        }
        None => remediate::drivers::command::builtin(&node),
    };
    if let Some(path) = &args.kubeconfig {
        let backend = remediate::config::KubernetesBackend {
            kubeconfig: Some(path.clone()),
            context: args.context.clone(),
            namespace: None,
        };
        let client = rt
            .block_on(remediate::drivers::k8s::connect(&backend))
            .map_err(|e| Fail::Input(format!("--kubeconfig: {e}")))?;
        remediate::drivers::k8s::register(
            &mut registry,
            std::sync::Arc::new(remediate::drivers::k8s::Kube {
                client,
                holder: format!("remediate-cli@{node}"),
            }),
        );
    }
    let engine = Engine::new(cfg, registry, node.clone());
    if args.output == Output::Text {
        println!(
            "playbooks: {} from {pb_origin}; policies: {} from {pol_origin}; evaluated at {}{}",
            engine.config.playbooks.len(),
            engine.config.policies.len(),
            now.format("%Y-%m-%dT%H:%M:%SZ"),
            if args.dry_run {
                "; DRY RUN: nothing will be changed"
            } else {
                ""
            }
        );
    }

    let mut summary = Summary {
        events: events.len(),
        ..Summary::default()
    };
    let mut reports = Vec::new();
    let mut unmatched = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        if ev.status == Status::Resolved {
            summary.resolved += 1;
        }
        let planned = engine.decide(ev, args.dry_run, now, &mut ledger);
        if planned.is_empty() {
            summary.unmatched += 1;
            unmatched.push(i);
        }
        for p in planned {
            match &p.decision {
                Decision::Execute => summary.execute += 1,
                Decision::DryRun(_) => summary.dry_run += 1,
                Decision::Suppressed(_) => summary.suppressed += 1,
                Decision::NeedsApproval(_) => summary.needs_approval += 1,
            }
            let rep = rt
                .block_on(engine.execute(p, &writer, &mut ledger))
                .map_err(|e| {
                    Fail::Action(format!(
                        "audit write failed, stopping before any further action: {e}"
                    ))
                })?;
            if matches!(rep.status, RunStatus::Failed(_)) {
                summary.failed += 1;
            }
            if args.output == Output::Json {
                for r in &rep.records {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                }
            }
            reports.push((i, rep));
        }
    }
    summary.records = writer.lock().map(|w| w.written()).unwrap_or_default();

    if args.output == Output::Text {
        let mut rows: Vec<(usize, Row<'_>)> =
            reports.iter().map(|(i, r)| (*i, Row::Run(r))).collect();
        rows.extend(unmatched.iter().map(|i| (*i, Row::NoMatch(&events[*i]))));
        rows.sort_by_key(|(i, _)| *i);
        let rows: Vec<Row<'_>> = rows.into_iter().map(|(_, r)| r).collect();
        println!("{}", report::table(&rows));
        println!("{}", summary.line(&args.audit.display().to_string()));
    }
    if summary.failed > 0 {
        return Err(Fail::Action(format!(
            "{} run(s) failed; see {}",
            summary.failed,
            args.audit.display()
        )));
    }
    Ok(())
}

fn test(dir: Option<PathBuf>, policies: Option<PathBuf>) -> Result<(), Fail> {
    let (origin, pbs, tests) = match &dir {
        Some(d) => (Origin::Dir(d.clone()), read_dir(d)?, read_tests(d)?),
        None if Path::new("playbooks").is_dir() => {
            let d = Path::new("playbooks");
            (Origin::Dir(d.into()), read_dir(d)?, read_tests(d)?)
        }
        None => (
            Origin::Embedded,
            bundle::playbooks(),
            bundle::playbook_tests(),
        ),
    };
    let (_, pols) = pick(policies.as_deref(), "policies", bundle::policies)?;
    let cfg = Config::load(&pbs, &pols)?;
    if tests.is_empty() {
        return Err(Fail::Input(format!(
            "{origin}: no *.test.yaml files: nothing to test"
        )));
    }
    let parsed = remediate::testing::parse(&tests)?;
    let engine = Engine::new(cfg, Registry::new(), "test");
    let rep = remediate::testing::run(&engine, &parsed)?;
    for f in &rep.failures {
        println!("FAILED {f}");
    }
    let failed = rep.failures.len();
    println!(
        "{} test file{} ({origin}), {} case{}: {} passed, {failed} failed",
        rep.files,
        if rep.files == 1 { "" } else { "s" },
        rep.cases,
        if rep.cases == 1 { "" } else { "s" },
        rep.cases - failed
    );
    if failed > 0 {
        return Err(Fail::Action(format!(
            "{failed} playbook test case(s) failed"
        )));
    }
    Ok(())
}

fn read_tests(dir: &Path) -> Result<Vec<Source>, Fail> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Fail::Input(format!("{}: cannot read directory: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_str()
                .is_some_and(|s| s.ends_with(".test.yaml") || s.ends_with(".test.yml"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|text| Source {
                    path: p.clone(),
                    text,
                })
                .map_err(|e| Fail::Input(format!("{}: cannot read: {e}", p.display())))
        })
        .collect()
}

fn actions() {
    let registry = remediate::drivers::command::builtin("");
    for a in CATALOG {
        let targets: Vec<String> = a
            .targets
            .iter()
            .map(|(k, f)| format!("{k}({})", f.join(",")))
            .collect();
        let driver = if registry.get(a.name).is_some() {
            "driver: yes"
        } else {
            "driver: not in this build (plans offline)"
        };
        println!(
            "{}\n    {}\n    targets: {}; scope: {:?}; default timeout {}s; {driver}",
            a.name,
            a.summary,
            targets.join(" | "),
            a.scope,
            a.default_timeout_secs
        );
    }
}

fn schema(kind: SchemaKind, out: Option<PathBuf>) -> anyhow::Result<()> {
    match out {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, text) in [
                ("playbook.schema.json", remediate::schema::playbook()),
                ("policy.schema.json", remediate::schema::policy()),
                ("agent.schema.json", remediate::schema::agent()),
            ] {
                let p = dir.join(name);
                std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                println!("wrote {}", p.display());
            }
        }
        None => match kind {
            SchemaKind::Playbook => print!("{}", remediate::schema::playbook()),
            SchemaKind::Policy => print!("{}", remediate::schema::policy()),
            SchemaKind::Agent => print!("{}", remediate::schema::agent()),
        },
    }
    Ok(())
}
