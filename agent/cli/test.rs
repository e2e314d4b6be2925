//! `remediate test`: the playbooks' unit tests (`*.test.yaml`), decided
//! offline by the engine against the policies.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::sources::{pick, read_tests};
use super::{Error, Result};
use crate::bundle::{self, Origin};
use crate::drivers::Registry;
use crate::engine::Engine;
use crate::playbook::load::{read_dir, Config};

/// Runs `remediate test`.
pub fn test(dir: Option<PathBuf>, policies: Option<PathBuf>, out: &mut dyn Write) -> Result<()> {
    let (origin, pbs, tests) = match &dir {
        Some(d) => (Origin::Dir(d.clone()), read_dir(d)?, read_tests(d)?),
        None if Path::new("playbooks").is_dir() => {
            let d = Path::new("playbooks");
            (Origin::Dir(d.into()), read_dir(d)?, read_tests(d)?)
        }
        None => (
            Origin::Embedded,
            bundle::playbooks(),
            bundle::playbook_tests(),
        ),
    };
    let (_, pols) = pick(policies.as_deref(), "policies", bundle::policies)?;
    let cfg = Config::load(&pbs, &pols)?;
    if tests.is_empty() {
        return Err(Error::Input(format!(
            "{origin}: no *.test.yaml files: nothing to test"
        )));
    }
    let parsed = crate::testing::parse(&tests)?;
    let engine = Engine::new(cfg, Registry::new(), "test");
    let rep = crate::testing::run(&engine, &parsed)?;
    for f in &rep.failures {
        outln!(out, "FAILED {f}");
    }
    let failed = rep.failures.len();
    outln!(
        out,
        "{} test file{} ({origin}), {} case{}: {} passed, {failed} failed",
        rep.files,
        if rep.files == 1 { "" } else { "s" },
        rep.cases,
        if rep.cases == 1 { "" } else { "s" },
        rep.cases - failed
    );
    if failed > 0 {
        return Err(Error::Action(format!(
            "{failed} playbook test case(s) failed"
        )));
    }
    Ok(())
}
