//! The shipped JSON Schemas are generated from the Rust types and must match
//! them; the bundled documents must validate against them (checked with
//! Python's `jsonschema`, an independent validator).

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_schemas_match_the_rust_types() {
    for (file, generated) in [
        ("schema/playbook.schema.json", remediate::schema::playbook()),
        ("schema/policy.schema.json", remediate::schema::policy()),
        ("schema/agent.schema.json", remediate::schema::agent()),
    ] {
        let shipped = std::fs::read_to_string(root().join(file)).unwrap_or_default();
        assert!(
            shipped == generated,
            "{file} is out of date with the Rust types: regenerate it with `cargo run -- schema --out schema`"
        );
    }
}

#[test]
fn bundled_documents_validate_against_the_schemas_with_an_independent_validator() {
    let probe = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!("python3 with the jsonschema package is required: install it with `pip install jsonschema`"),
    }
    let dir = tempfile::tempdir().unwrap();
    let mut docs = Vec::new();
    for (sub, schema) in [
        ("playbooks", "playbook.schema.json"),
        ("policies", "policy.schema.json"),
    ] {
        for e in std::fs::read_dir(root().join(sub)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if !name.ends_with(".yaml") || name.ends_with(".test.yaml") {
                continue;
            }
            let v: serde_json::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            let out = dir.path().join(format!("{sub}-{name}.json"));
            std::fs::write(&out, serde_json::to_string(&v).unwrap()).unwrap();
            docs.push((out, root().join("schema").join(schema)));
        }
    }
    {
        let p = root().join("examples/agent.yaml");
        let v: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let out = dir.path().join("agent.yaml.json");
        std::fs::write(&out, serde_json::to_string(&v).unwrap()).unwrap();
        docs.push((out, root().join("schema/agent.schema.json")));
    }
    assert!(docs.len() >= 11);
    // A document that must fail, so the check itself is known to bite.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"apiVersion":"remediate/v1","kind":"Playbook","metadata":{"name":"x"},"spec":{"triggers":[],"target":{"kind":"host"},"steps":[{"action":"kubernetes.pod.restart","with":{"mode":"explode"}}]}}"#).unwrap();
    let script = r#"
import json, sys, jsonschema
bad = 0
for doc, schema in zip(sys.argv[1::2], sys.argv[2::2]):
    errs = list(jsonschema.Draft202012Validator(json.load(open(schema))).iter_errors(json.load(open(doc))))
    print(doc, "INVALID" if errs else "valid", "; ".join(e.message for e in errs[:3]))
"#;
    let mut args = vec!["-c".to_string(), script.to_string()];
    for (d, s) in &docs {
        args.push(d.display().to_string());
        args.push(s.display().to_string());
    }
    args.push(bad.display().to_string());
    args.push(
        root()
            .join("schema/playbook.schema.json")
            .display()
            .to_string(),
    );
    let out = Command::new("python3").args(&args).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), docs.len() + 1, "{s}");
    for l in &lines[..docs.len()] {
        assert!(
            l.contains(" valid"),
            "bundled document does not validate: {l}"
        );
    }
    assert!(
        lines[docs.len()].contains("INVALID") && lines[docs.len()].contains("'explode'"),
        "{s}"
    );
}
