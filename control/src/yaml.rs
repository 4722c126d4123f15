//! A YAML document as a tree of nodes that remember where they were written,
//! so every configuration error can name its file:line:col.
//!
//! Built from `saphyr-parser` events. Anchors and aliases are expanded;
//! tags are ignored; a file must hold at most one document.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A 1-based position in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl Mark {
    fn of(span: &Span) -> Self {
        Mark {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// One YAML value.
#[derive(Debug, Clone)]
pub enum Value {
    /// `~`, `null`, or nothing.
    Null,
    /// Any scalar, as written. `plain` is false for quoted scalars.
    Scalar {
        /// The text.
        text: String,
        /// Whether it was written without quotes.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order (duplicate keys are kept for the decoder
    /// to report).
    Map(Vec<(Node, Node)>),
}

/// A value and where it starts.
#[derive(Debug, Clone)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub mark: Mark,
}

impl Node {
    /// A short name of the node's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// Where.
    pub mark: Mark,
    /// What.
    pub message: String,
}

enum Open {
    Seq {
        items: Vec<Node>,
        mark: Mark,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        mark: Mark,
        anchor: usize,
    },
}

/// Parses `text`; `Ok(None)` for an empty document.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| SyntaxError {
            mark: Mark {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: e.info().to_owned(),
        })?;
        let mark = Mark::of(&span);
        let complete = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        mark,
                        message: "only one YAML document is allowed per file".into(),
                    });
                }
                None
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, ScalarStyle::Plain);
                let value = if plain && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                let node = Node { value, mark };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => Some(Node {
                    value: node.value.clone(),
                    mark,
                }),
                None => {
                    return Err(SyntaxError {
                        mark,
                        message: "alias to an unknown anchor".into(),
                    });
                }
            },
            Event::SequenceStart(anchor, _) => {
                stack.push(Open::Seq {
                    items: Vec::new(),
                    mark,
                    anchor,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Open::Map {
                    entries: Vec::new(),
                    key: None,
                    mark,
                    anchor,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Open::Seq {
                        items,
                        mark,
                        anchor,
                    }) => (
                        Node {
                            value: Value::Seq(items),
                            mark,
                        },
                        anchor,
                    ),
                    Some(Open::Map {
                        entries,
                        mark,
                        anchor,
                        ..
                    }) => (
                        Node {
                            value: Value::Map(entries),
                            mark,
                        },
                        anchor,
                    ),
                    None => continue,
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            _ => None,
        };
        if let Some(node) = complete {
            match stack.last_mut() {
                Some(Open::Seq { items, .. }) => items.push(node),
                Some(Open::Map { entries, key, .. }) => match key.take() {
                    Some(k) => entries.push((k, node)),
                    None => *key = Some(node),
                },
                None => root = Some(node),
            }
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_one_based_line_and_column() {
        let root = parse("a: 1\nlist:\n  - x\n  - {k: v}\n").unwrap().unwrap();
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        let (key, value) = &entries[1];
        assert_eq!(key.mark, Mark { line: 2, col: 1 });
        let Value::Seq(items) = &value.value else {
            panic!("not a list")
        };
        assert_eq!(items[0].mark, Mark { line: 3, col: 5 });
        assert_eq!(items[1].mark, Mark { line: 4, col: 5 });
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.mark.line >= 1, "{err:?}");
    }

    #[test]
    fn aliases_expand_to_the_anchored_value() {
        let root = parse("a: &x {k: 1}\nb: *x\n").unwrap().unwrap();
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert!(matches!(entries[1].1.value, Value::Map(ref m) if m.len() == 1));
    }

    #[test]
    fn empty_text_is_no_document() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }
}
