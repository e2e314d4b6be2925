//! Playbooks: serde model, loading and validation, matchers and templates.

pub mod load;
pub mod matcher;
pub mod model;
pub mod template;

pub use load::{Config, LoadedPlaybook, Source};
