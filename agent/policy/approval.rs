//! The approval stage: holds a run for a person.

use super::decision::Decision;
use super::gate::{GateInput, Stage};

pub(super) struct Approve {
    pub(super) all: bool,
    pub(super) actions: Vec<String>,
}
impl Stage for Approve {
    fn check(&self, i: &GateInput<'_>) -> Option<Decision> {
        if i.approved {
            return None;
        }
        if self.all {
            return Some(Decision::NeedsApproval(
                "policy requires approval for every run".into(),
            ));
        }
        let a = i
            .actions
            .iter()
            .find(|a| self.actions.iter().any(|x| x == *a))?;
        Some(Decision::NeedsApproval(format!(
            "policy requires approval for {a}"
        )))
    }
}
