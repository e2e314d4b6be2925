//! Durable state of the agent beside the audit log: the [`store`] (one
//! SQLite database holding the inbox of accepted events, dedupe keys, the
//! limit state, steps in flight, approvals and the audit outbox), the
//! in-memory view of [`approvals`], and the one-time upgrade from the
//! journals older versions kept ([`legacy`]).

pub mod approvals;
mod legacy;
pub mod pauses;
pub mod store;

pub use store::{
    AcceptResult, Accepted, ApprovalChange, Commit, Opened, Options, PauseChange, Store, Watch,
    WatchChange,
};
