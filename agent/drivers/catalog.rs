//! The catalogue of every action a playbook may name, with its target kinds
//! and parameter schema: the union of the actions the backends list.
//! Playbooks validate against it whether or not this build has a driver
//! for the action.

use super::action::{ActionSpec, Entry};
use super::{docker, host, iceberg, kubernetes, postgres, spark};

/// The catalogue in parts: one per backend, then the actions several
/// backends drive (one target kind each).
const PARTS: &[&[&ActionSpec]] = &[&KUBERNETES, &POSTGRES, &ICEBERG, &HOST, &DOCKER, &SHARED];

const KUBERNETES: [&ActionSpec; own_len(kubernetes::ACTIONS)] = own(kubernetes::ACTIONS);
const POSTGRES: [&ActionSpec; own_len(postgres::ACTIONS)] = own(postgres::ACTIONS);
const ICEBERG: [&ActionSpec; own_len(iceberg::ACTIONS)] = own(iceberg::ACTIONS);
const HOST: [&ActionSpec; own_len(host::ACTIONS)] = own(host::ACTIONS);
const DOCKER: [&ActionSpec; own_len(docker::ACTIONS)] = own(docker::ACTIONS);
/// Actions several backends drive, one target kind each.
const SHARED: [&ActionSpec; 1] = [&spark::SPEC];

/// Every action, grouped by backend.
pub static CATALOG: [&ActionSpec; total(PARTS)] = concat(PARTS);

/// Looks an action up by name.
pub fn get(name: &str) -> Option<&'static ActionSpec> {
    CATALOG.iter().copied().find(|a| a.name == name)
}

/// The specs of a backend's own actions: those of its table that it does
/// not drive for one target kind only.
const fn own<C, const N: usize>(table: &[Entry<C>]) -> [&'static ActionSpec; N] {
    let mut out = [PLACEHOLDER; N];
    let (mut i, mut n) = (0, 0);
    while i < table.len() {
        if table[i].kind.is_none() {
            out[n] = table[i].spec;
            n += 1;
        }
        i += 1;
    }
    assert!(n == N, "the array's length is own_len(table)");
    out
}

/// How many of a backend's table [`own`] takes.
const fn own_len<C>(table: &[Entry<C>]) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < table.len() {
        if table[i].kind.is_none() {
            n += 1;
        }
        i += 1;
    }
    n
}

const fn total(parts: &[&[&ActionSpec]]) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

const fn concat<const N: usize>(parts: &[&[&'static ActionSpec]]) -> [&'static ActionSpec; N] {
    let mut out = [PLACEHOLDER; N];
    let (mut i, mut n) = (0, 0);
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[n] = parts[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Fills the arrays above before they are written; never left in one.
const PLACEHOLDER: &ActionSpec = &spark::SPEC;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_unique_name_and_valid_defaults_where_possible() {
        let mut names: Vec<_> = CATALOG.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
        // Actions whose parameters all have defaults accept `{}`.
        for name in [
            "kubernetes.pod.restart",
            "docker.prune",
            "swarm.service.restart",
            "postgres.connections.recycle",
        ] {
            let a = get(name).unwrap();
            (a.normalize)(serde_json::json!({})).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn bad_parameters_are_rejected_with_the_field_named() {
        let a = get("kubernetes.pod.restart").unwrap();
        let err = (a.normalize)(serde_json::json!({"mode": "explode"})).unwrap_err();
        assert!(err.contains("unknown variant `explode`"), "{err}");
        let err = (a.normalize)(serde_json::json!({"mdoe": "evict"})).unwrap_err();
        assert!(err.contains("unknown field `mdoe`"), "{err}");
    }

    #[test]
    fn every_backend_entry_is_catalogued_and_every_kind_of_a_shared_action_is_routed() {
        fn check<C>(table: &[Entry<C>], routed: &mut Vec<(&'static str, &'static str)>) {
            for e in table {
                let spec = get(e.spec.name).unwrap_or_else(|| panic!("{}", e.spec.name));
                assert_eq!(spec.backend, e.spec.backend, "{}", e.spec.name);
                if let Some(kind) = e.kind {
                    assert!(
                        spec.targets.iter().any(|(k, _)| *k == kind),
                        "{} does not accept {kind}",
                        spec.name
                    );
                    routed.push((spec.name, kind));
                }
            }
        }
        let mut routed = Vec::new();
        check(kubernetes::ACTIONS, &mut routed);
        check(docker::ACTIONS, &mut routed);
        check(host::ACTIONS, &mut routed);
        check(postgres::ACTIONS, &mut routed);
        check(iceberg::ACTIONS, &mut routed);
        for spec in SHARED {
            for (kind, _) in spec.targets {
                assert!(
                    routed.contains(&(spec.name, *kind)),
                    "no backend drives {} for {kind}",
                    spec.name
                );
            }
        }
    }
}
