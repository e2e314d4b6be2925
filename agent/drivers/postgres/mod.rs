//! The Postgres backend: `postgres.connections.recycle` on the servers of
//! `backends.postgres`, by name. One file per action; this module holds the
//! table of actions.

pub mod recycle;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::PostgresBackend;
use crate::drivers::action::Entry;
use crate::drivers::registry::Registry;

pub use recycle::{PgRecycle, Recycle, Session, SessionFilter, SessionState};

/// Every Postgres action: its catalogue entry and its driver.
pub const ACTIONS: &[Entry<BTreeMap<String, PostgresBackend>>] =
    &[Entry::new(&recycle::SPEC, |servers| {
        Arc::new(PgRecycle {
            servers: servers.clone(),
        })
    })];

/// Registers the Postgres action when servers are configured.
pub fn register(reg: &mut Registry, servers: &BTreeMap<String, PostgresBackend>) {
    if servers.is_empty() {
        return;
    }
    reg.register_table(ACTIONS, servers);
}
