//! Policies: the model users write and the gate every planned run passes.

pub mod gate;
pub mod model;

pub use gate::{Decision, Gate, GateInput};
pub use model::Policy;
