//! Triggers: how events come in.

pub mod alertmanager;
pub mod docker;
pub mod grafana;
pub mod schedule;
