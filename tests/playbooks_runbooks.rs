//! docs/runbooks.md is what every notification's "Runbook" link opens: each
//! link into it (the bundled playbooks' `metadata.runbook`, the shipped
//! alert rules' `runbook_url`, the example payloads) must land on a heading
//! there, as GitHub computes its anchor, and a playbook's section must name
//! the playbook. The metrics, subcommands and flags the runbooks tell
//! on-call to use must exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the runbook links point.
const RUNBOOKS_URL: &str = "https://github.com/remediate/remediate/blob/main/docs/runbooks.md#";

/// Alert labels the runbooks name that look like metric names.
const LABELS_NOT_METRICS: &[&str] = &["remediate_source", "remediate_io_disabled"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn runbooks() -> String {
    std::fs::read_to_string(root().join("docs/runbooks.md"))
        .expect("docs/runbooks.md is missing: every bundled playbook links to it")
}

/// The text outside fenced code blocks, and the lines inside them.
fn split_fences(md: &str) -> (Vec<(usize, &str)>, Vec<&str>) {
    let (mut prose, mut code) = (Vec::new(), Vec::new());
    let mut fenced = false;
    for (i, line) in md.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced {
            code.push(line);
        } else {
            prose.push((i + 1, line));
        }
    }
    (prose, code)
}

/// GitHub's anchor for a heading's text: lowercase; letters, digits, `-`
/// and `_` kept, spaces turned into `-`, everything else dropped.
fn anchor(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// One heading: its level, anchor (with GitHub's `-1`, `-2` for repeats)
/// and the text of its section (up to the next heading of its level or
/// above).
#[derive(Debug)]
struct Section {
    level: usize,
    line: usize,
    body: String,
}

fn sections(md: &str) -> BTreeMap<String, Section> {
    let (prose, _) = split_fences(md);
    let all: Vec<&str> = md.lines().collect();
    let mut heads: Vec<(usize, usize, String)> = Vec::new();
    for (n, line) in &prose {
        let level = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            let text = line[level..].trim().trim_end_matches('#').trim();
            heads.push((*n, level, anchor(text)));
        }
    }
    let mut out = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (n, level, a)) in heads.iter().enumerate() {
        let end = heads[i + 1..]
            .iter()
            .find(|(_, l, _)| l <= level)
            .map_or(all.len(), |(m, _, _)| m - 1);
        let count = seen.entry(a.clone()).or_default();
        let key = if *count == 0 {
            a.clone()
        } else {
            format!("{a}-{count}")
        };
        *count += 1;
        out.insert(
            key,
            Section {
                level: *level,
                line: *n,
                body: all[*n..end].join("\n"),
            },
        );
    }
    out
}

fn files(dir: &Path, ext: &[&str], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if ext.iter().any(|x| p.extension().is_some_and(|e| e == *x)) {
            out.push(p);
        }
    }
}

/// The bundled playbooks: (file, name, metadata.runbook).
fn playbooks() -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root().join("playbooks")).unwrap() {
        let p = e.unwrap().path();
        let file = p.file_name().unwrap().to_string_lossy().into_owned();
        if !file.ends_with(".yaml") || file.ends_with(".test.yaml") {
            continue;
        }
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        if doc["kind"] != "Playbook" {
            continue;
        }
        let meta = &doc["metadata"];
        out.push((
            file,
            meta["name"].as_str().unwrap().to_string(),
            meta["runbook"].as_str().map(str::to_string),
        ));
    }
    out.sort();
    assert!(out.len() >= 10, "bundled playbooks not found: {out:?}");
    out
}

#[test]
fn the_anchor_is_the_one_github_computes() {
    assert_eq!(anchor("ContainerOOMKilled"), "containeroomkilled");
    assert_eq!(anchor(" nightly-disk-prune "), "nightly-disk-prune");
    assert_eq!(
        anchor("Answering the agent: approve, deny, pause, resume"),
        "answering-the-agent-approve-deny-pause-resume"
    );
    assert_eq!(
        anchor("`remediate_paused` (gauge)"),
        "remediate_paused-gauge"
    );
    let s = sections("# T\n## A b\ntext\n```\n## not a heading\n```\n### Sub\n## A b\n");
    assert_eq!(
        s.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a-b", "a-b-1", "sub", "t"]
    );
    assert!(s["a-b"].body.contains("not a heading") && s["a-b"].body.contains("### Sub"));
    assert_eq!(s["a-b-1"].line, 8);
}

#[test]
fn every_bundled_playbook_links_to_its_own_section_of_the_runbooks() {
    let md = runbooks();
    let secs = sections(&md);
    let mut problems = Vec::new();
    for (file, name, runbook) in playbooks() {
        let Some(url) = runbook else {
            problems.push(format!(
                "playbooks/{file}: no metadata.runbook (link it to {RUNBOOKS_URL}<anchor>)"
            ));
            continue;
        };
        let Some(a) = url.strip_prefix(RUNBOOKS_URL) else {
            problems.push(format!(
                "playbooks/{file}: metadata.runbook {url} does not point into docs/runbooks.md"
            ));
            continue;
        };
        match secs.get(a) {
            None => problems.push(format!(
                "playbooks/{file}: runbook anchor #{a} is no heading of docs/runbooks.md (headings: {})",
                secs.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some(s) if s.level != 2 => problems.push(format!(
                "playbooks/{file}: #{a} (docs/runbooks.md line {}) is a level-{} heading, not a section of its own",
                s.line, s.level
            )),
            Some(s) if !s.body.contains(&format!("`{name}`")) => problems.push(format!(
                "playbooks/{file}: the section #{a} (docs/runbooks.md line {}) does not name the playbook `{name}`",
                s.line
            )),
            Some(_) => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_link_into_the_runbooks_lands_on_a_heading() {
    let md = runbooks();
    let secs = sections(&md);
    let mut found = Vec::new();
    for dir in ["playbooks", "deploy", "examples"] {
        files(&root().join(dir), &["yaml", "yml", "json"], &mut found);
    }
    let mut links = 0;
    let mut problems = Vec::new();
    for f in found {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find(RUNBOOKS_URL) {
                rest = &rest[at + RUNBOOKS_URL.len()..];
                let a: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                links += 1;
                if !secs.contains_key(&a) {
                    problems.push(format!(
                        "{}:{}: #{a} is no heading of docs/runbooks.md",
                        f.strip_prefix(root()).unwrap().display(),
                        i + 1
                    ));
                }
            }
        }
    }
    // The runbooks' own links between sections.
    let (prose, _) = split_fences(&md);
    for (n, line) in prose {
        let mut rest = line;
        while let Some(at) = rest.find("](#") {
            rest = &rest[at + 3..];
            let a = &rest[..rest.find(')').unwrap_or(rest.len())];
            links += 1;
            if !secs.contains_key(a) {
                problems.push(format!("docs/runbooks.md:{n}: link #{a} goes nowhere"));
            }
        }
    }
    assert!(links >= 20, "only {links} links found: is the URL right?");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_metric_the_runbooks_name_is_exported() {
    let md = runbooks();
    // The names agent/metrics.rs registers under the `remediate` prefix
    // (families with no series yet are absent from the exposition).
    let src = std::fs::read_to_string(root().join("agent/metrics.rs")).unwrap();
    let families: BTreeSet<String> = src
        .split(".register(")
        .skip(1)
        .filter_map(|s| s.trim_start().strip_prefix('"'))
        .filter_map(|s| s.split('"').next())
        .map(|n| format!("remediate_{n}"))
        .collect();
    // The metrics without labels are in the exposition already: the names
    // read from the source are the exported ones.
    let exposition = remediate::metrics::Metrics::new().encode();
    for f in ["remediate_queue_depth", "remediate_storage_errors"] {
        assert!(
            families.contains(f),
            "{f} not found in agent/metrics.rs: {families:?}"
        );
        assert!(
            exposition.contains(&format!("# TYPE {f} ")),
            "{f}: {exposition}"
        );
    }
    let mut named = BTreeSet::new();
    let bytes = md.as_bytes();
    let mut i = 0;
    while let Some(at) = md[i..].find("remediate_") {
        let start = i + at;
        let end = start
            + md[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(md.len() - start);
        let glued =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !glued {
            named.insert(&md[start..end]);
        }
        i = end;
    }
    let mut problems = Vec::new();
    for m in &named {
        if LABELS_NOT_METRICS.contains(m) {
            continue;
        }
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| m.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(m);
        if !families.contains(family) {
            problems.push(format!("{m} is not exported by the agent"));
        }
    }
    assert!(named.len() >= 8, "{named:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_remediate"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "remediate {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_command_and_flag_the_runbooks_name_exists() {
    let md = runbooks();
    let (prose, code) = split_fences(&md);
    // Commands: lines of code blocks, and inline code spans (which may wrap
    // over lines), that start with `remediate `.
    let mut commands: Vec<String> = code
        .iter()
        .map(|l| l.split(" #").next().unwrap_or_default().trim().to_string())
        .filter(|l| l.starts_with("remediate "))
        .collect();
    let text: String = prose.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
    for (i, span) in text.split('`').enumerate() {
        let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
        if i % 2 == 1 && span.starts_with("remediate ") {
            commands.push(span);
        }
    }
    assert!(commands.len() >= 10, "{commands:?}");
    let top = help(&[]);
    let subcommands: BTreeSet<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(subcommands.contains("pause"), "{top}");
    let mut problems = Vec::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    for c in &commands {
        let words: Vec<&str> = c.split_whitespace().collect();
        let sub = words[1];
        if !subcommands.contains(sub) {
            problems.push(format!("`{c}`: remediate has no subcommand {sub}"));
            continue;
        }
        let h = helps.entry(sub.to_string()).or_insert_with(|| help(&[sub]));
        for w in &words[2..] {
            if let Some(flag) = w.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap_or_default();
                if !h.contains(&format!("--{flag} ")) && !h.contains(&format!("--{flag}\n")) {
                    problems.push(format!("`{c}`: remediate {sub} has no flag --{flag}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
