//! Property tests for the matcher and the payload parser: no input panics,
//! printing and parsing agree, and regexes are fully anchored.

use proptest::prelude::*;
use remediate::event::Labels;
use remediate::playbook::matcher::{parse_matchers, MatchOp, Matcher};
use remediate::playbook::template::Template;
use remediate::trigger::alertmanager::Payload;

const FIRING: &str = include_str!("../examples/alerts/crashloop-firing.json");

fn op() -> impl Strategy<Value = MatchOp> {
    prop_oneof![
        Just(MatchOp::Equal),
        Just(MatchOp::NotEqual),
        Just(MatchOp::Regexp),
        Just(MatchOp::NotRegexp)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn matcher_parser_never_panics(s in "\\PC{0,64}") {
        let _ = parse_matchers(&s);
    }

    #[test]
    fn matcher_parser_never_panics_on_matcher_like_input(s in r#"[{}a-z_=!~",\\ .*|()\[\]]{0,40}"#) {
        let _ = parse_matchers(&s);
    }

    #[test]
    fn printed_matchers_parse_back_to_themselves(
        name in "[a-zA-Z_][a-zA-Z0-9_]{0,12}",
        op in op(),
        raw in "\\PC{0,24}",
    ) {
        let value = match op {
            MatchOp::Regexp | MatchOp::NotRegexp => regex::escape(&raw),
            _ => raw.clone(),
        };
        let m = Matcher::new(&name, op, &value).unwrap();
        let printed = m.to_string();
        let parsed = parse_matchers(&printed).unwrap();
        prop_assert_eq!(parsed, vec![m.clone()], "printed as {}", printed);
        // Several printed matchers joined by commas parse to all of them.
        let both = format!("{{{printed}, {printed}}}");
        prop_assert_eq!(parse_matchers(&both).unwrap().len(), 2);
    }

    #[test]
    fn regex_matchers_are_fully_anchored(v in "[a-z0-9]{1,12}", pad in "[a-z0-9]{1,4}") {
        let m = Matcher::new("l", MatchOp::Regexp, &regex::escape(&v)).unwrap();
        let labels = |x: &str| -> Labels { [("l".to_string(), x.to_string())].into_iter().collect() };
        prop_assert!(m.matches(&labels(&v)));
        let padded_right = format!("{v}{pad}");
        let padded_left = format!("{pad}{v}");
        prop_assert!(!m.matches(&labels(&padded_right)));
        prop_assert!(!m.matches(&labels(&padded_left)));
        let n = Matcher::new("l", MatchOp::NotRegexp, &regex::escape(&v)).unwrap();
        prop_assert_eq!(n.matches(&labels(&padded_right)), true);
    }

    #[test]
    fn payload_parser_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Payload::parse(&b);
    }

    #[test]
    fn payload_parser_never_panics_on_mutated_real_bodies(
        flips in proptest::collection::vec((0usize..FIRING.len(), any::<u8>()), 1..8),
        cut in 0usize..=FIRING.len(),
    ) {
        let mut b = FIRING.as_bytes().to_vec();
        for (i, x) in flips {
            b[i] = x;
        }
        let _ = Payload::parse(&b);
        let _ = Payload::parse(&FIRING.as_bytes()[..cut]);
    }

    #[test]
    fn templates_never_panic_and_literals_render_verbatim(s in "\\PC{0,48}") {
        if let Ok(t) = Template::parse(&s) {
            if t.is_literal() {
                let e = Labels::new();
                let ctx = remediate::playbook::template::Context { labels: &e, annotations: &e, values: &e };
                prop_assert_eq!(t.render(&ctx).unwrap(), s);
            }
        }
    }
}
