//! Drivers: one folder per backend behind one [`Action`] trait, the
//! catalogue of every action (names, targets, parameter schemas) and the
//! registry of actions this build can execute.
//!
//! - `action.rs`: the base every backend depends on: [`Action`] and what it
//!   is given and returns, [`ActionSpec`] (a catalogue entry, built from a
//!   [`Params`] type by [`ActionSpec::of`]) and [`Entry`], one row of a
//!   backend's table.
//! - `registry.rs`: the [`Registry`] of drivers and the [`ByKind`] router.
//! - [`catalog`]: the union of the backends' tables, one line per backend.
//! - [`spark`]: `spark.executor.bump-memory`, which two backends drive; which
//!   backend drives which target kind is decided there.
//! - [`kubernetes`], [`docker`], [`host`], [`postgres`], [`iceberg`]: the
//!   backends. Each holds its client and one file per action: the action's
//!   parameters (`impl Params`), its catalogue entry `SPEC` and its driver
//!   (`impl Action`). Its `mod.rs` has one table, `ACTIONS`, from which both
//!   its part of the catalogue and its `register` are derived. A backend
//!   uses `action.rs` and `registry.rs` (and `spark` for its route of that
//!   action), never the catalogue or another backend.
//!
//! Adding an action: one file in its backend and one line in that backend's
//! `ACTIONS`. Adding a backend: a folder of that shape, a `pub mod` here, a
//! line in the catalogue's `PARTS`, and a call of its `register` where the
//! agent builds its registry.

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
    apply_deadline, target_display, Action, ActionSpec, DriverError, Entry, Outcome, Params, Plan,
    Request, Scope, ScopeKind, Target, Verdict, APPLY_DEADLINE,
};
pub use catalog::CATALOG;
pub use registry::{ByKind, Registry};
