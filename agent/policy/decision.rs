//! The gate's verdict on one planned run.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The gate's verdict on one planned run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", content = "reason", rename_all = "kebab-case")]
pub enum Decision {
    /// Act now.
    Execute,
    /// Plan and audit but do not act; the reason says which switch.
    DryRun(String),
    /// Do nothing; the reason names the rule that fired.
    Suppressed(String),
    /// Wait for a person; the reason says why.
    NeedsApproval(String),
}

impl Decision {
    /// `execute`, `dry-run`, `suppressed` or `needs-approval`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Execute => "execute",
            Decision::DryRun(_) => "dry-run",
            Decision::Suppressed(_) => "suppressed",
            Decision::NeedsApproval(_) => "needs-approval",
        }
    }
    /// Why.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Execute => "all gates passed",
            Decision::DryRun(r) | Decision::Suppressed(r) | Decision::NeedsApproval(r) => r,
        }
    }
    /// Parses the `decision` word of an audit record.
    pub fn from_parts(decision: &str, reason: &str) -> Option<Self> {
        Some(match decision {
            "execute" => Decision::Execute,
            "dry-run" => Decision::DryRun(reason.into()),
            "suppressed" => Decision::Suppressed(reason.into()),
            "needs-approval" => Decision::NeedsApproval(reason.into()),
            _ => return None,
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Execute => f.write_str("execute"),
            d => write!(f, "{}({})", d.as_str(), d.reason()),
        }
    }
}
