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
