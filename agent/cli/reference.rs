//! Reference output: `remediate actions` (the catalogue) and `remediate
//! schema` (the JSON Schemas of playbooks, policies and the agent config).

use std::io::Write;
use std::path::PathBuf;

use super::args::SchemaKind;
use super::{Error, Result};
use crate::drivers::CATALOG;

/// `remediate actions`.
pub fn actions(out: &mut dyn Write) -> Result<()> {
    let registry = crate::drivers::host::builtin("");
    for a in CATALOG {
        let targets: Vec<String> = a
            .targets
            .iter()
            .map(|(k, f)| format!("{k}({})", f.join(",")))
            .collect();
        let driver = if registry.get(a.name).is_some() {
            "driver: yes"
        } else {
            "driver: not in this build (plans offline)"
        };
        outln!(
            out,
            "{}\n    {}\n    targets: {}; scope: {:?}; default timeout {}s; {driver}",
            a.name,
            a.summary,
            targets.join(" | "),
            a.scope,
            a.default_timeout_secs
        );
    }
    Ok(())
}

/// `remediate schema`: one schema on `out`, or all three written into `dir`.
pub fn schema(kind: SchemaKind, dir: Option<PathBuf>, out: &mut dyn Write) -> Result<()> {
    let Some(dir) = dir else {
        let text = match kind {
            SchemaKind::Playbook => crate::schema::playbook(),
            SchemaKind::Policy => crate::schema::policy(),
            SchemaKind::Agent => crate::schema::agent(),
        };
        return out.write_all(text.as_bytes()).map_err(Error::output);
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Input(format!("creating {}: {e}", dir.display())))?;
    for (name, text) in [
        ("playbook.schema.json", crate::schema::playbook()),
        ("policy.schema.json", crate::schema::policy()),
        ("agent.schema.json", crate::schema::agent()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text)
            .map_err(|e| Error::Input(format!("writing {}: {e}", p.display())))?;
        outln!(out, "wrote {}", p.display());
    }
    Ok(())
}
