//! Embeds the bundled playbooks, their tests and the policies into the
//! binary (the "embedded default"), with include_str! so cargo rebuilds
//! when any of them changes.

use std::fmt::Write as _;
use std::path::Path;

fn list(dir: &str) -> Vec<String> {
    println!("cargo:rerun-if-changed={dir}");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let mut out = String::new();
    for (konst, dir) in [("PLAYBOOKS", "playbooks"), ("POLICIES", "policies")] {
        writeln!(out, "/// Files of `{dir}/`: (name, contents).").unwrap();
        writeln!(out, "pub static {konst}: &[(&str, &str)] = &[").unwrap();
        for n in list(dir) {
            let abs = Path::new(&root).join(dir).join(&n);
            writeln!(
                out,
                "    ({n:?}, include_str!({:?})),",
                abs.display().to_string()
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("bundle.rs");
    std::fs::write(dest, out).expect("write bundle.rs");
}
