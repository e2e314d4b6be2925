//! Durable state of the agent beside the audit: the inbox of accepted
//! events and the journal of runs held for approval.

pub mod approvals;
pub mod inbox;
