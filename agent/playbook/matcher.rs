//! Label matchers with Alertmanager's semantics (`pkg/labels`): `=`, `!=`,
//! `=~`, `!~`; regular expressions fully anchored; values optionally quoted
//! with OpenMetrics escapes (`\"`, `\\`, `\n`); an absent label matches as
//! the empty string.

use std::fmt;

use regex_automata::meta::{Config as RegexConfig, Regex};

use crate::event::Labels;

/// How a matcher compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~` (fully anchored)
    Regexp,
    /// `!~` (fully anchored)
    NotRegexp,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regexp => "=~",
            MatchOp::NotRegexp => "!~",
        }
    }
}

/// One compiled matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Operator.
    pub op: MatchOp,
    /// Unescaped value (the regex source for `=~` and `!~`).
    pub value: String,
    re: Option<Regex>,
    /// Whether an absent label (the empty string) matches: worked out
    /// once, as most alerts lack most labels a playbook could name.
    absent: bool,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

/// Why a matcher did not parse. Messages follow Alertmanager's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    /// The text is not `name op value`.
    #[error("bad matcher format: {0} (expected name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\")")]
    Format(String),
    /// `job=` with nothing after the operator.
    #[error("matcher value is not present: {0}")]
    NoValue(String),
    /// A `"` inside the value that is not escaped.
    #[error("matcher value contains unescaped double quote: {0}")]
    UnescapedQuote(String),
    /// The regular expression does not compile.
    #[error("bad regular expression in matcher {name}: {reason}")]
    Regex {
        /// Label name.
        name: String,
        /// The regex crate's message.
        reason: String,
    },
}

impl Matcher {
    /// Builds a matcher, compiling and anchoring a regex operator's value.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, MatcherError> {
        let re = match op {
            MatchOp::Regexp | MatchOp::NotRegexp => {
                // No full DFA: it is what the `regex` crate builds for a
                // small pattern once another crate (tracing-subscriber's
                // `matchers`) enables regex-automata's `dfa-build`, and it
                // was three quarters of start-up (154M of 260M
                // instructions for 200 playbooks); the lazy DFA matches
                // labels as fast once warm.
                let re = Regex::builder()
                    .configure(RegexConfig::new().dfa(false))
                    .build(&format!("^(?:{value})$"));
                Some(re.map_err(|e| {
                    MatcherError::Regex {
                        name: name.to_string(),
                        reason: e
                            .syntax_error()
                            .map_or_else(|| e.to_string(), ToString::to_string)
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    }
                })?)
            }
            _ => None,
        };
        let mut m = Self {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re,
            absent: false,
        };
        m.absent = m.matches_value("");
        Ok(m)
    }

    /// Whether this matcher runs a regular expression (dearer than a
    /// comparison: a trigger checks its comparisons first).
    pub fn is_regex(&self) -> bool {
        self.re.is_some()
    }

    /// Whether a label value satisfies this matcher.
    pub fn matches_value(&self, v: &str) -> bool {
        match (self.op, &self.re) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regexp, Some(re)) => re.is_match(v),
            (MatchOp::NotRegexp, Some(re)) => !re.is_match(v),
            // Unreachable by construction; fail closed.
            (MatchOp::Regexp | MatchOp::NotRegexp, None) => false,
        }
    }

    /// Whether a label set without this label satisfies this matcher.
    pub fn matches_absent(&self) -> bool {
        self.absent
    }

    /// Whether a label set satisfies this matcher (absent label = "").
    pub fn matches(&self, labels: &Labels) -> bool {
        match labels.get(&self.name) {
            Some(v) => self.matches_value(v),
            None => self.absent,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"", self.name, self.op.as_str())?;
        for c in self.value.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Parses a comma-separated list of matchers, optionally in braces:
/// `{foo="bar", baz!~"qu.*"}`, `foo=bar,dings!=bums`.
pub fn parse_matchers(input: &str) -> Result<Vec<Matcher>, MatcherError> {
    let s = input.strip_prefix('{').unwrap_or(input);
    let s = s.strip_suffix('}').unwrap_or(s);
    let mut tokens = Vec::new();
    let mut token = String::new();
    let (mut inside_quotes, mut escaped) = (false, false);
    for c in s.chars() {
        match c {
            ',' if !inside_quotes => {
                tokens.push(std::mem::take(&mut token));
                continue;
            }
            ',' => {}
            '"' => {
                if escaped {
                    escaped = false;
                } else {
                    inside_quotes = !inside_quotes;
                }
            }
            '\\' => escaped = !escaped,
            _ => escaped = false,
        }
        token.push(c);
    }
    if !token.trim().is_empty() {
        tokens.push(token);
    }
    tokens.iter().map(|t| parse_matcher(t)).collect()
}

/// Parses one matcher: `name op value`.
pub fn parse_matcher(s: &str) -> Result<Matcher, MatcherError> {
    let t = s.trim();
    let name_end = t
        .char_indices()
        .find(|&(i, c)| {
            !(c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
        })
        .map(|(i, _)| i)
        .unwrap_or(t.len());
    if name_end == 0 {
        return Err(MatcherError::Format(s.to_string()));
    }
    let name = &t[..name_end];
    let rest = t[name_end..].trim_start();
    // `=~` before `=`, as Alertmanager does.
    let (op, raw) = if let Some(r) = rest.strip_prefix("=~") {
        (MatchOp::Regexp, r)
    } else if let Some(r) = rest.strip_prefix("!=") {
        (MatchOp::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix("!~") {
        (MatchOp::NotRegexp, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (MatchOp::Equal, r)
    } else {
        return Err(MatcherError::Format(s.to_string()));
    };
    let raw_value = raw.trim();
    if raw_value.is_empty() {
        return Err(MatcherError::NoValue(s.trim().to_string()));
    }
    let value = unescape(raw_value)?;
    Matcher::new(name, op, &value)
}

fn unescape(raw_value: &str) -> Result<String, MatcherError> {
    let (body, mut expect_trailing_quote) = match raw_value.strip_prefix('"') {
        Some(b) => (b, true),
        None => (raw_value, false),
    };
    let mut out = String::with_capacity(body.len());
    let mut escaped = false;
    let mut chars = body.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        let is_last = chars.peek().is_none();
        if escaped {
            escaped = false;
            match c {
                'n' => out.push('\n'),
                '"' | '\\' => out.push(c),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
            continue;
        }
        match c {
            '\\' if !is_last => escaped = true,
            '\\' => out.push('\\'),
            '"' => {
                if !expect_trailing_quote || !is_last {
                    return Err(MatcherError::UnescapedQuote(raw_value.to_string()));
                }
                expect_trailing_quote = false;
            }
            c => out.push(c),
        }
    }
    if expect_trailing_quote {
        return Err(MatcherError::UnescapedQuote(raw_value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, op: MatchOp, v: &str) -> Matcher {
        Matcher::new(name, op, v).unwrap()
    }

    /// The accepted inputs of Alertmanager's `pkg/labels/parse_test.go`.
    #[test]
    fn parses_alertmanager_documented_cases() {
        use MatchOp::*;
        let cases: Vec<(&str, Vec<Matcher>)> = vec![
            (r#"{foo="bar"}"#, vec![m("foo", Equal, "bar")]),
            (r#"{foo=~"bar.*"}"#, vec![m("foo", Regexp, "bar.*")]),
            (r#"{foo!="bar"}"#, vec![m("foo", NotEqual, "bar")]),
            (r#"{foo!~"bar.*"}"#, vec![m("foo", NotRegexp, "bar.*")]),
            (
                r#"{foo="bar", baz!="quux"}"#,
                vec![m("foo", Equal, "bar"), m("baz", NotEqual, "quux")],
            ),
            (
                r#"{foo="bar", baz!~"quux.*"}"#,
                vec![m("foo", Equal, "bar"), m("baz", NotRegexp, "quux.*")],
            ),
            (
                r#"{foo="bar",baz!~".*quux", derp="wat"}"#,
                vec![
                    m("foo", Equal, "bar"),
                    m("baz", NotRegexp, ".*quux"),
                    m("derp", Equal, "wat"),
                ],
            ),
            (
                r#"{foo="bar", instance=~"some-api.*"}"#,
                vec![m("foo", Equal, "bar"), m("instance", Regexp, "some-api.*")],
            ),
            (r#"{foo=""}"#, vec![m("foo", Equal, "")]),
            (
                r#"{foo="bar,quux", job="job1"}"#,
                vec![m("foo", Equal, "bar,quux"), m("job", Equal, "job1")],
            ),
            (
                r#"{foo = "bar", dings != "bums", }"#,
                vec![m("foo", Equal, "bar"), m("dings", NotEqual, "bums")],
            ),
            (
                r#"foo=bar,dings!=bums"#,
                vec![m("foo", Equal, "bar"), m("dings", NotEqual, "bums")],
            ),
            (
                r#"{quote="She said: \"Hi, ladies! That's gender-neutral…\""}"#,
                vec![m(
                    "quote",
                    Equal,
                    "She said: \"Hi, ladies! That's gender-neutral…\"",
                )],
            ),
            (r#"statuscode=~"5..""#, vec![m("statuscode", Regexp, "5..")]),
            (r#"tricky=~~~"#, vec![m("tricky", Regexp, "~~")]),
            (
                r#"trickier==\\=\=\""#,
                vec![m("trickier", Equal, r#"=\=\=""#)],
            ),
            (
                r#"contains_quote != "\"" , contains_comma !~ "foo,bar" , "#,
                vec![
                    m("contains_quote", NotEqual, "\""),
                    m("contains_comma", NotRegexp, "foo,bar"),
                ],
            ),
        ];
        for (input, want) in cases {
            let got = parse_matchers(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "input {input}");
        }
    }

    /// The rejected inputs of Alertmanager's `pkg/labels/parse_test.go`.
    #[test]
    fn rejects_alertmanager_documented_errors() {
        let cases = [
            ("job=", "matcher value is not present: job="),
            (
                r#"job="value"#,
                r#"matcher value contains unescaped double quote: "value"#,
            ),
            (
                r#"job=value""#,
                r#"matcher value contains unescaped double quote: value""#,
            ),
            (
                r#"trickier==\\=\=\"""#,
                r#"matcher value contains unescaped double quote: =\\=\=\"""#,
            ),
            (
                r#"contains_unescaped_quote = foo"bar"#,
                r#"matcher value contains unescaped double quote: foo"bar"#,
            ),
            (
                r#"{invalid-name = "valid label"}"#,
                "bad matcher format: invalid-name = \"valid label\"",
            ),
            (r#""{foo=\"bar"}"#, r#"bad matcher format: "{foo=\"bar""#),
            (r#""foo=\"bar""#, r#"bad matcher format: "foo=\"bar""#),
            (r#""foo=\"bar\"""#, r#"bad matcher format: "foo=\"bar\"""#),
            (r#""foo=\"bar\"#, r#"bad matcher format: "foo=\"bar\"#),
            (
                r#""{foo=\"bar\"}""#,
                r#"bad matcher format: "{foo=\"bar\"}""#,
            ),
            (r#""foo="bar"""#, r#"bad matcher format: "foo="bar"""#),
        ];
        for (input, want) in cases {
            let err = parse_matchers(input).expect_err(input);
            assert!(
                err.to_string().starts_with(want),
                "input {input}: got {err}, want {want}"
            );
        }
        let err = parse_matchers(r#"{foo=~"invalid[regexp"}"#).unwrap_err();
        assert!(matches!(err, MatcherError::Regex { .. }), "{err}");
    }

    #[test]
    fn regexes_are_fully_anchored_and_absent_labels_are_empty() {
        let labels: Labels = [("namespace".to_string(), "kube-system-x".to_string())]
            .into_iter()
            .collect();
        let re = m("namespace", MatchOp::Regexp, "kube-system|kube-public");
        assert!(!re.matches(&labels), "partial match must not count");
        let nre = m("namespace", MatchOp::NotRegexp, "kube-system|kube-public");
        assert!(nre.matches(&labels));
        assert!(
            m("pod", MatchOp::Equal, "").matches(&labels),
            "absent label equals empty string"
        );
        assert!(!m("pod", MatchOp::NotEqual, "").matches(&labels));
        assert!(m("pod", MatchOp::Regexp, ".*").matches(&labels));
        assert!(!m("pod", MatchOp::Regexp, ".+").matches(&labels));
    }
}
