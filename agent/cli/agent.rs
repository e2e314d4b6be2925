//! `remediate agent`: loads the config, sets up logging, connects the
//! backends, prepares the pipeline and serves until SIGTERM or SIGINT.

use std::io::Write;

use super::args::AgentArgs;
use super::{Error, Result};
use crate::config::{AgentConfig, LogFormat};
use crate::pipeline::{self, Agent};

/// Runs `remediate agent`.
pub fn agent(args: AgentArgs, verbose: u8, out: &mut dyn Write) -> Result<()> {
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
        .map_err(|e| Error::Input(format!("log.level {level:?}: {e}")))?;
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
    let node = cfg.node_name();
    let listen = cfg.listen;
    let grace = cfg.shutdown_grace;
    let dry = cfg.dry_run;
    let (pb_src, pol_src) = pipeline::describe_sources(&cfg);
    let state_dir = cfg.state_dir.clone();
    let check = args.check;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Action(format!("cannot start runtime: {e}")))?;
    let (registry, coordinator) = crate::backends::connect(&cfg, &node, &rt)?;
    let agent = Agent::prepare_coordinated(
        cfg,
        node.clone(),
        registry,
        coordinator,
        std::time::Duration::from_secs(2),
    )
    .map_err(|e| match e {
        pipeline::Error::Config(d) => Error::from(d),
        other => Error::Input(other.to_string()),
    })?;
    let n_playbooks = agent.shared.engine().config.playbooks.len();
    let auth = crate::server::Auth::load(&agent.shared.cfg, agent.shared.token.clone())
        .map_err(Error::Input)?;
    let (nofile, nofile_max) = crate::server::raise_nofile(agent.shared.cfg.server.max_connections)
        .map_err(Error::Input)?;
    if check {
        outln!(
        out,
            "ok: node {node}, {n_playbooks} playbooks ({pb_src}), policies ({pol_src}), state {}, listen {listen}{}",
            state_dir.display(),
            if dry { ", DRY RUN" } else { "" }
        );
        return Ok(());
    }
    crate::server::tune_allocator();
    rt.block_on(async move {
        let listener = crate::server::bind(listen)
            .map_err(|e| Error::Input(format!("listen {listen}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Input(format!("listen {listen}: {e}")))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let max_connections = agent.shared.cfg.server.max_connections;
        let served = tokio::spawn(crate::server::serve_with(agent, auth, listener, stop_rx));
        tracing::info!(%addr, node = %node, playbooks = n_playbooks, dry_run = dry, max_connections, nofile, nofile_max, "listening");
        let signal = wait_for_stop().await;
        tracing::info!(signal, grace = %grace, "stopping: no new webhooks; running actions get the grace period");
        let _ = stop_tx.send(true);
        match served.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Action(format!("http server: {e}"))),
            Err(e) => Err(Error::Action(format!("agent task: {e}"))),
        }
    })
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
