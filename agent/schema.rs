//! JSON Schema for Playbook and Policy documents and the agent config, generated from the Rust
//! types. Steps get one `if/then` per action so editors complete and check
//! each action's parameters.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::drivers::catalog::CATALOG;
use crate::playbook::model::{Playbook, Step};
use crate::policy::model::Policy;

impl JsonSchema for Step {
    fn schema_name() -> Cow<'static, str> {
        "Step".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = CATALOG.iter().map(|a| a.name).collect();
        let timeout = g.subschema_for::<crate::units::Duration>();
        let branches: Vec<serde_json::Value> = CATALOG
            .iter()
            .map(|a| {
                let params = (a.schema)(g);
                serde_json::json!({
                    "if": { "properties": { "action": { "const": a.name } }, "required": ["action"] },
                    "then": { "properties": { "with": params } }
                })
            })
            .collect();
        json_schema!({
            "type": "object",
            "description": "One action of a playbook.",
            "additionalProperties": false,
            "required": ["action"],
            "properties": {
                "action": { "description": "Action name from the catalogue.", "enum": names },
                "with": { "description": "The action's parameters; strings may be templates.", "type": "object" },
                "timeout": timeout
            },
            "allOf": branches
        })
    }
}

/// The Playbook schema as pretty JSON.
pub fn playbook() -> String {
    pretty(schemars::schema_for!(Playbook))
}

/// The Policy schema as pretty JSON.
pub fn policy() -> String {
    pretty(schemars::schema_for!(Policy))
}

/// The agent config schema as pretty JSON.
pub fn agent() -> String {
    pretty(schemars::schema_for!(crate::config::AgentConfig))
}

fn pretty(s: Schema) -> String {
    let mut out = serde_json::to_string_pretty(&s).unwrap_or_default();
    out.push('\n');
    out
}
