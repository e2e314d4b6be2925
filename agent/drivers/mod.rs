//! Drivers: one module per backend behind one [`Action`] trait, the
//! catalogue of every action (names, targets, parameter schemas) and the
//! registry of actions this build can execute.

mod action;
pub mod catalog;
pub mod docker;
pub mod host;
pub mod iceberg;
pub mod kubernetes;
pub mod postgres;
mod registry;
pub mod spark;

pub use action::{
    target_display, Action, ActionSpec, DriverError, Entry, Outcome, Params, Plan, Request, Scope,
    ScopeKind, Target, Verdict,
};
pub use catalog::CATALOG;
pub use registry::{ByKind, Registry};
