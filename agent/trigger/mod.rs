//! Triggers: how events come in.

pub mod alertmanager;
