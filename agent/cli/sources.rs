//! Where playbooks and policies come from (a directory, `./playbooks`, or
//! the embedded bundle), and `remediate validate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::args::Sources;
use super::{Error, Result};
use crate::bundle::{self, Origin};
use crate::playbook::load::{read_dir, Config, Source};

/// The sources in `dir`, else in `default_dir` if present, else the embedded ones.
pub(super) fn pick(
    dir: Option<&Path>,
    default_dir: &str,
    embedded: fn() -> Vec<Source>,
) -> Result<(Origin, Vec<Source>)> {
    match dir {
        Some(d) => Ok((Origin::Dir(d.to_path_buf()), read_dir(d)?)),
        None if Path::new(default_dir).is_dir() => Ok((
            Origin::Dir(default_dir.into()),
            read_dir(Path::new(default_dir))?,
        )),
        None => Ok((Origin::Embedded, embedded())),
    }
}

/// Loads and validates playbooks and policies; says where they came from.
pub(super) fn load(sources: &Sources) -> Result<(Config, Origin, Origin)> {
    let (pb_origin, pbs) = pick(sources.playbooks.as_deref(), "playbooks", bundle::playbooks)?;
    let (pol_origin, pols) = pick(sources.policies.as_deref(), "policies", bundle::policies)?;
    let cfg = Config::load(&pbs, &pols)?;
    Ok((cfg, pb_origin, pol_origin))
}

/// `remediate validate`: every error at once, or a summary.
pub fn validate(sources: &Sources, out: &mut dyn Write) -> Result<()> {
    let (cfg, pb, pol) = load(sources)?;
    let schedules: usize = cfg.playbooks.iter().map(|p| p.schedules.len()).sum();
    outln!(
        out,
        "ok: {} playbook{} ({pb}), {} polic{} ({pol}), {schedules} schedule trigger{}",
        cfg.playbooks.len(),
        if cfg.playbooks.len() == 1 { "" } else { "s" },
        cfg.policies.len(),
        if cfg.policies.len() == 1 { "y" } else { "ies" },
        if schedules == 1 { "" } else { "s" },
    );
    Ok(())
}

/// The `*.test.yaml` files of a directory, in name order.
pub(super) fn read_tests(dir: &Path) -> Result<Vec<Source>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Input(format!("{}: cannot read directory: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_str()
                .is_some_and(|s| s.ends_with(".test.yaml") || s.ends_with(".test.yml"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|text| Source {
                    path: p.clone(),
                    text,
                })
                .map_err(|e| Error::Input(format!("{}: cannot read: {e}", p.display())))
        })
        .collect()
}
