//! The embedded default: the bundled playbooks, their tests and policies,
//! compiled into the binary so `remediate run --dry-run` works anywhere.

use std::path::{Path, PathBuf};

use crate::playbook::load::Source;

mod files {
    include!(concat!(env!("OUT_DIR"), "/bundle.rs"));
}

fn sources(dir: &str, files: &[(&str, &str)], tests: bool) -> Vec<Source> {
    files
        .iter()
        .filter(|(n, _)| (n.ends_with(".test.yaml") || n.ends_with(".test.yml")) == tests)
        .map(|(n, text)| Source {
            path: Path::new("(embedded)").join(dir).join(n),
            text: (*text).to_string(),
        })
        .collect()
}

/// Bundled playbooks.
pub fn playbooks() -> Vec<Source> {
    sources("playbooks", files::PLAYBOOKS, false)
}

/// Bundled playbook tests (`*.test.yaml`).
pub fn playbook_tests() -> Vec<Source> {
    sources("playbooks", files::PLAYBOOKS, true)
}

/// Bundled policies.
pub fn policies() -> Vec<Source> {
    sources("policies", files::POLICIES, false)
}

/// Where a set of documents comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A directory on disk.
    Dir(PathBuf),
    /// The embedded bundle.
    Embedded,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Dir(p) => write!(f, "{}", p.display()),
            Origin::Embedded => f.write_str("embedded bundle"),
        }
    }
}
