//! Policies: the model users write and the gate every planned run passes.
//!
//! [`gate`] composes one stage per rule, in order: [`scope`] (resolved
//! alerts, namespaces, opt-out label), [`windows`] (freeze, maintenance),
//! [`breaker`], [`limits`] (cooldown, rate limits, concurrency, targets per
//! notification) and [`approval`]. The stages read the [`ledger`]; the
//! [`decision`] is what the gate says.

pub mod approval;
pub mod breaker;
pub mod decision;
pub mod gate;
pub mod ledger;
pub mod limits;
pub mod model;
pub mod scope;
pub mod windows;

pub use breaker::BreakerState;
pub use decision::Decision;
pub use gate::{Gate, GateInput};
pub use ledger::{target_key, Horizon, Ledger};
pub use model::Policy;
pub use windows::{parse_cron, CompiledWindow};
