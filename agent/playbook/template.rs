//! Strict templates: `{{ labels.pod }}`, `{{ values.table | default "db.t" }}`,
//! `{{ labels.instance | hostname }}`. A variable that is not there is an
//! error, never an empty string.

use std::fmt;

use crate::event::Labels;

/// The three places a template can read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// `labels.*`: the alert's labels.
    Labels,
    /// `annotations.*`: the alert's annotations.
    Annotations,
    /// `values.*`: declared playbook values (schedule and CLI parameters).
    Values,
}

impl Root {
    fn as_str(self) -> &'static str {
        match self {
            Root::Labels => "labels",
            Root::Annotations => "annotations",
            Root::Values => "values",
        }
    }
}

/// A filter applied to a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `default "x"`: use x when the variable is absent or empty.
    Default(String),
    /// `lower`
    Lower,
    /// `upper`
    Upper,
    /// `hostname`: `host:9100` -> `host` (also strips `[v6]:port` brackets).
    Hostname,
}

/// A variable reference inside `{{ }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// Where it reads from.
    pub root: Root,
    /// The key under the root.
    pub key: String,
    /// Filters, applied left to right.
    pub filters: Vec<Filter>,
}

impl Var {
    /// True when a `default` filter makes absence harmless.
    pub fn has_default(&self) -> bool {
        self.filters.iter().any(|f| matches!(f, Filter::Default(_)))
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.root.as_str(), self.key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Template errors, at parse or render time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Syntax problem.
    #[error("template {template:?}: {reason}")]
    Syntax {
        /// The template text.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// A variable that is not present at render time.
    #[error("{var} is not set{hint}")]
    Missing {
        /// The variable.
        var: String,
        /// Extra help, e.g. which labels are present.
        hint: String,
    },
}

/// What a template reads at render time.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Alert labels.
    pub labels: &'a Labels,
    /// Alert annotations.
    pub annotations: &'a Labels,
    /// Resolved values.
    pub values: &'a Labels,
}

impl Template {
    /// Parses `src`.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let syntax = |reason: String| TemplateError::Syntax {
            template: src.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| syntax("unterminated {{: expected }}".into()))?;
            parts.push(Part::Var(parse_var(after[..end].trim()).map_err(syntax)?));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(syntax("}} without a matching {{".into()));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// True when the template has no variables.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The variables it reads.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Lit(_) => None,
        })
    }

    /// Renders against `ctx`; any absent variable without a default is an error.
    pub fn render(&self, ctx: &Context<'_>) -> Result<String, TemplateError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => out.push_str(&render_var(v, ctx)?),
            }
        }
        Ok(out)
    }
}

fn parse_var(expr: &str) -> Result<Var, String> {
    let mut segments = expr.split('|');
    let path = segments.next().unwrap_or_default().trim();
    let (root, key) = path.split_once('.').ok_or_else(|| {
        format!("{path:?} is not a variable: expected labels.NAME, annotations.NAME or values.NAME")
    })?;
    let root = match root {
        "labels" => Root::Labels,
        "annotations" => Root::Annotations,
        "values" => Root::Values,
        other => {
            return Err(format!(
                "unknown variable root {other:?}: expected labels, annotations or values"
            ))
        }
    };
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "bad variable name {key:?}: expected letters, digits, _ or -"
        ));
    }
    let mut filters = Vec::new();
    for seg in segments {
        let seg = seg.trim();
        let (name, arg) = match seg.split_once(char::is_whitespace) {
            Some((n, a)) => (n, Some(a.trim())),
            None => (seg, None),
        };
        let f = match (name, arg) {
            ("default", Some(a)) => {
                let lit = a
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .ok_or_else(|| format!("default takes a quoted string, got {a}"))?;
                Filter::Default(lit.to_string())
            }
            ("lower", None) => Filter::Lower,
            ("upper", None) => Filter::Upper,
            ("hostname", None) => Filter::Hostname,
            _ => {
                return Err(format!(
                    "unknown filter {seg:?}: expected default \"x\", lower, upper or hostname"
                ))
            }
        };
        filters.push(f);
    }
    Ok(Var {
        root,
        key: key.to_string(),
        filters,
    })
}

fn render_var(v: &Var, ctx: &Context<'_>) -> Result<String, TemplateError> {
    let map = match v.root {
        Root::Labels => ctx.labels,
        Root::Annotations => ctx.annotations,
        Root::Values => ctx.values,
    };
    let mut val = map.get(&v.key).filter(|s| !s.is_empty()).cloned();
    for f in &v.filters {
        val = match (f, val) {
            (Filter::Default(d), None) => Some(d.clone()),
            (_, None) => None,
            (Filter::Default(_), Some(s)) => Some(s),
            (Filter::Lower, Some(s)) => Some(s.to_lowercase()),
            (Filter::Upper, Some(s)) => Some(s.to_uppercase()),
            (Filter::Hostname, Some(s)) => Some(hostname(&s)),
        };
    }
    val.ok_or_else(|| {
        let present: Vec<&str> = map.keys().map(String::as_str).collect();
        TemplateError::Missing {
            var: v.to_string(),
            hint: if present.is_empty() {
                format!(" (no {} at all)", v.root.as_str())
            } else {
                format!(" (present: {})", present.join(", "))
            },
        }
    })
}

fn hostname(s: &str) -> String {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return rest[..end].to_string();
        }
    }
    match s.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            h.to_string()
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_labels_values_and_filters() {
        let l = labels(&[("namespace", "etl"), ("instance", "node-1:9100")]);
        let v = labels(&[("table", "db.events")]);
        let e = Labels::new();
        let ctx = Context {
            labels: &l,
            annotations: &e,
            values: &v,
        };
        let t = Template::parse("{{ labels.namespace }}/{{values.table}}").unwrap();
        assert_eq!(t.render(&ctx).unwrap(), "etl/db.events");
        let t = Template::parse("{{ labels.instance | hostname | upper }}").unwrap();
        assert_eq!(t.render(&ctx).unwrap(), "NODE-1");
        let t = Template::parse(r#"{{ labels.pod | default "none" }}"#).unwrap();
        assert_eq!(t.render(&ctx).unwrap(), "none");
    }

    #[test]
    fn missing_variable_is_an_error_not_an_empty_string() {
        let l = labels(&[("namespace", "etl")]);
        let e = Labels::new();
        let ctx = Context {
            labels: &l,
            annotations: &e,
            values: &e,
        };
        let err = Template::parse("{{ labels.pod }}")
            .unwrap()
            .render(&ctx)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels.pod is not set (present: namespace)"
        );
    }

    #[test]
    fn syntax_errors_say_what_was_expected() {
        for (src, want) in [
            ("{{ labels.pod", "unterminated"),
            ("{{ lables.pod }}", "unknown variable root \"lables\""),
            ("{{ labels.pod | shout }}", "unknown filter"),
            ("{{ pod }}", "is not a variable"),
            ("x }}", "without a matching"),
        ] {
            let err = Template::parse(src).unwrap_err().to_string();
            assert!(err.contains(want), "{src}: {err}");
        }
    }

    #[test]
    fn hostname_strips_ports_only() {
        assert_eq!(hostname("node-1:9100"), "node-1");
        assert_eq!(hostname("[::1]:9100"), "::1");
        assert_eq!(hostname("node-1"), "node-1");
        assert_eq!(hostname("fe80::1"), "fe80::1");
    }
}
