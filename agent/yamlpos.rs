//! Positions of YAML nodes by path, so semantic errors found after
//! deserialization (unknown action, bad matcher, bad cron) can still name
//! the line and column they come from.
//!
//! Paths use the same form as serde_yaml's errors: `spec.steps[0].with.mode`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Map from a node's path to its 1-based (line, column).
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    positions: HashMap<String, (usize, usize)>,
}

impl PositionIndex {
    /// Indexes the first document of `src`. A document that does not parse
    /// yields an empty index (serde_yaml reports the syntax error itself).
    pub fn build(src: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(src);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self {
            positions: builder.positions,
        }
    }

    /// Position of the node at `path`, or of its nearest indexed ancestor.
    pub fn get(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Builder {
    /// The path of the node that starts now, advancing the parent's state.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        self.positions
            .entry(path.to_string())
            .or_insert((mark.line(), mark.col() + 1));
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                // A scalar in key position of a mapping is the key itself.
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        let p = join(path, &value);
                        *key = Some(value);
                        self.positions
                            .entry(p)
                            .or_insert((mark.line(), mark.col() + 1));
                        return;
                    }
                }
                if let Some(p) = self.next_path() {
                    self.record(&p, mark);
                }
            }
            Event::Alias(_) => {
                let _ = self.next_path();
            }
            Event::MappingStart(..) => {
                let path = self.next_path().unwrap_or_default();
                self.record(&path, mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.next_path().unwrap_or_default();
                self.record(&path, mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_paths_with_one_based_positions() {
        let src = "a: 1\nspec:\n  steps:\n    - action: x\n      with: {mode: evict}\n";
        let idx = PositionIndex::build(src);
        assert_eq!(idx.get("a"), Some((1, 1)));
        assert_eq!(idx.get("spec.steps[0].action"), Some((4, 7)));
        assert_eq!(idx.get("spec.steps[0].with.mode"), Some((5, 14)));
        // Unknown leaf falls back to the nearest ancestor.
        assert_eq!(
            idx.get("spec.steps[0].with.nope"),
            idx.get("spec.steps[0].with")
        );
    }
}
