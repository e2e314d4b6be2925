//! `remediate`: a self-healing remediation agent.
//!
//! Every trigger (Alertmanager webhook, cron tick, CLI) becomes an [`event::Event`];
//! the [`engine::Engine`] matches it against validated playbooks, renders the
//! target and parameters, passes the planned run through the policy gate,
//! executes it through a driver (or simulates it in dry-run), verifies it and
//! appends an audit record for every decision.
#![deny(clippy::unwrap_used)]

pub mod audit;
pub mod backends;
pub mod bundle;
pub mod chat;
pub mod cli;
pub mod config;
pub mod coord;
pub mod diag;
pub mod drivers;
pub mod engine;
pub mod event;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod playbook;
pub mod policy;
pub mod progress;
pub mod replay;
pub mod report;
pub mod schema;
pub mod server;
pub mod state;
pub mod summary;
pub mod testing;
pub mod trigger;
pub mod units;
pub mod yamlpos;

/// Selects rustls' `ring` crypto provider for the process (idempotent).
/// Two providers are linked (kube and our reqwest use `ring`; the S3
/// storage's reqwest brings `aws-lc-rs`), and rustls then refuses to pick
/// one by itself, so every TLS client (the Kubernetes client, notification
/// sinks, Alertmanager, S3) would fail without this.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: one is installed already (by an embedding program); keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
