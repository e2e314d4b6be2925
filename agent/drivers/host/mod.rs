//! The host backend: `host.disk.prune` and `host.command` on this agent's
//! node, and SSH for nodes of the inventory (`backends.ssh`) that run no
//! agent. One file per action; this module holds the table of actions and
//! the registry an agent starts from.

pub mod command;
pub mod disk_prune;
pub mod ssh;

use std::sync::Arc;

use crate::config::SshHost;
use crate::drivers::action::Entry;
use crate::drivers::registry::Registry;

pub use command::{Command, HostCommand};
pub use disk_prune::{DiskPrune, HostDiskPrune, PruneAction, PruneRule};
pub use ssh::{SshRoute, StepResult};

/// What the host drivers are built from.
#[derive(Debug, Clone)]
pub struct Host {
    /// This agent's node.
    pub node: String,
    /// SSH hosts for `host.command` on other nodes.
    pub ssh: Vec<SshHost>,
}

/// Every host action: its catalogue entry and its driver.
pub const ACTIONS: &[Entry<Host>] = &[
    Entry::new(&disk_prune::SPEC, |h| Arc::new(HostDiskPrune::new(&h.node))),
    Entry::new(&command::SPEC, |h| {
        Arc::new(HostCommand::new(&h.node).with_inventory(h.ssh.clone()))
    }),
];

/// The drivers this build has, for an agent on `node`.
pub fn builtin(node: &str) -> Registry {
    builtin_with(node, Vec::new())
}

/// [`builtin`], with SSH hosts for `host.command` on other nodes.
pub fn builtin_with(node: &str, ssh: Vec<SshHost>) -> Registry {
    let mut r = Registry::new();
    r.register_table(
        ACTIONS,
        &Host {
            node: node.to_string(),
            ssh,
        },
    );
    r
}

pub(super) fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.to_string()
    } else {
        let t: String = s.chars().skip(n - max).collect();
        format!("…{t}")
    }
}
