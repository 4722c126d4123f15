//! A YAML document as a tree of nodes that remember where they were written,
//! so every configuration error can name its file:line:col.
//!
//! Built from `saphyr-parser` events. Anchors and aliases are expanded;
//! tags are ignored; a file must hold at most one document.

use std::collections::HashMap;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::limits::{MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES};

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

/// One YAML value. Lists and mappings are shared, so an alias costs no
/// memory however often it is used (its values still count against
/// [`MAX_NODES`]).
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
    Seq(Arc<[Node]>),
    /// A mapping, in source order (duplicate keys are kept for the decoder
    /// to report).
    Map(Arc<[(Node, Node)]>),
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

/// A YAML syntax error, or a document over the limits.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// Where.
    pub mark: Mark,
    /// What.
    pub message: String,
}

/// A finished node with what it weighs: its values, aliases expanded, and
/// how deep its lists and mappings nest.
#[derive(Clone)]
struct Weighed {
    node: Node,
    size: usize,
    height: usize,
}

enum Open {
    Seq {
        items: Vec<Node>,
        mark: Mark,
        anchor: usize,
        size: usize,
        height: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        mark: Mark,
        anchor: usize,
        size: usize,
        height: usize,
    },
}

impl Open {
    fn add(&mut self, child: Weighed) {
        let (size, height) = match self {
            Open::Seq {
                items,
                size,
                height,
                ..
            } => {
                items.push(child.node);
                (size, height)
            }
            Open::Map {
                entries,
                key,
                size,
                height,
                ..
            } => {
                match key.take() {
                    Some(k) => entries.push((k, child.node)),
                    None => *key = Some(child.node),
                }
                (size, height)
            }
        };
        *size += child.size;
        *height = (*height).max(child.height + 1);
    }

    fn close(self) -> (Weighed, usize) {
        let (value, mark, anchor, size, height) = match self {
            Open::Seq {
                items,
                mark,
                anchor,
                size,
                height,
            } => (Value::Seq(items.into()), mark, anchor, size, height),
            Open::Map {
                entries,
                mark,
                anchor,
                size,
                height,
                ..
            } => (Value::Map(entries.into()), mark, anchor, size, height),
        };
        (
            Weighed {
                node: Node { value, mark },
                size,
                height,
            },
            anchor,
        )
    }
}

/// Parses `text`; `Ok(None)` for an empty document.
///
/// The document must fit the limits in [`crate::limits`]: at most
/// [`MAX_FILE_BYTES`] of text, [`MAX_DEPTH`] levels of nesting and
/// [`MAX_NODES`] values, with every alias counted as the values it stands
/// for. An alias that would break a limit is refused by name and position,
/// before anything is expanded.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(SyntaxError {
            mark: Mark { line: 1, col: 1 },
            message: format!(
                "the document is {} bytes; at most {} MiB is accepted",
                text.len(),
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Weighed> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let mut total = 0usize;
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
                let node = Weighed {
                    node: Node { value, mark },
                    size: 1,
                    height: 0,
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                count(&mut total, mark)?;
                Some((node, None))
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(anchored) => Some((
                    Weighed {
                        node: Node {
                            value: anchored.node.value.clone(),
                            mark,
                        },
                        size: anchored.size,
                        height: anchored.height,
                    },
                    Some(&span),
                )),
                None => {
                    return Err(SyntaxError {
                        mark,
                        message: "alias to an unknown anchor".into(),
                    });
                }
            },
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        mark,
                        message: format!("lists and mappings nest deeper than {MAX_DEPTH} levels"),
                    });
                }
                let open = if matches!(event, Event::SequenceStart(..)) {
                    Open::Seq {
                        items: Vec::new(),
                        mark,
                        anchor,
                        size: 1,
                        height: 0,
                    }
                } else {
                    Open::Map {
                        entries: Vec::new(),
                        key: None,
                        mark,
                        anchor,
                        size: 1,
                        height: 0,
                    }
                };
                stack.push(open);
                count(&mut total, mark)?;
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(open) = stack.pop() else { continue };
                let (node, anchor) = open.close();
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                // Counted when it opened.
                Some((node, None))
            }
            _ => None,
        };
        let Some((node, alias)) = complete else {
            continue;
        };
        if let Some(span) = alias {
            // An alias is the only way to add many values with few bytes:
            // check it before it is used.
            let too_deep = stack.len() + node.height > MAX_DEPTH;
            if total + node.size > MAX_NODES || too_deep {
                return Err(SyntaxError {
                    mark,
                    message: format!(
                        "alias `{}` would expand the document beyond {} (it stands for {} values nested {} deep); aliases are expanded, so their contents count every time they are used",
                        alias_name(text, span),
                        if too_deep {
                            format!("{MAX_DEPTH} levels of nesting")
                        } else {
                            format!("{MAX_NODES} values")
                        },
                        node.size,
                        node.height
                    ),
                });
            }
            total += node.size;
        }
        match stack.last_mut() {
            Some(open) => open.add(node),
            None => root = Some(node.node),
        }
    }
    Ok(root)
}

/// Counts one more value written in the document.
fn count(total: &mut usize, mark: Mark) -> Result<(), SyntaxError> {
    *total += 1;
    if *total > MAX_NODES {
        return Err(SyntaxError {
            mark,
            message: format!("the document has more than {MAX_NODES} values"),
        });
    }
    Ok(())
}

/// The `*name` of an alias, from its span (character offsets).
fn alias_name(text: &str, span: &Span) -> String {
    let name: String = text
        .chars()
        .skip(span.start.index())
        .take(span.end.index().saturating_sub(span.start.index()))
        .collect();
    crate::limits::quote(name.trim_start_matches('*')).into_owned()
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

    /// "Billion laughs": nine levels of nine aliases stand for 9^9 values
    /// in 500 bytes. Refused by name and position before any expansion.
    #[test]
    fn an_alias_bomb_is_refused_naming_the_alias() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..=9 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let err = parse(&text).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // a5 stands for 597,871 values; its third use in a6 crosses 2M.
        assert!(err.message.contains("alias `a5`"), "{}", err.message);
        assert!(err.message.contains("2000000 values"), "{}", err.message);
        assert_eq!(err.mark.line, 7, "{err:?}");
    }

    #[test]
    fn aliases_within_the_budget_are_expanded_and_shared() {
        let root = parse("base: &b {timeout: 1s, tries: [1, 2, 3]}\nuses: [*b, *b, *b, *b]\n")
            .unwrap()
            .unwrap();
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        let Value::Seq(uses) = &entries[1].1.value else {
            panic!("not a list")
        };
        assert_eq!(uses.len(), 4);
        let (Value::Map(a), Value::Map(b)) = (&uses[0].value, &uses[3].value) else {
            panic!("not maps")
        };
        assert!(Arc::ptr_eq(a, b), "an alias shares its anchor's values");
        // The alias node itself sits where the alias was written.
        assert_eq!(uses[3].mark.line, 2);
    }

    #[test]
    fn nesting_is_bounded_written_or_through_aliases() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let err = parse(&deep).unwrap_err();
        assert!(err.message.contains("deeper than 64"), "{}", err.message);
        assert!(parse(&format!("{}{}", "[".repeat(64), "]".repeat(64))).is_ok());
        // 40 levels anchored, then used 40 levels down: 80 > 64.
        let nested = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let text = format!(
            "a: &deep {nested}\nb: {}*deep{}\n",
            "[".repeat(40),
            "]".repeat(40)
        );
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("alias `deep`"), "{}", err.message);
        assert!(err.message.contains("64 levels"), "{}", err.message);
    }

    #[test]
    fn too_many_values_are_refused_without_aliases_too() {
        let text = format!("[{}]", "1,".repeat(MAX_NODES + 1));
        let err = parse(&text).unwrap_err();
        assert!(
            err.message.contains("more than 2000000 values"),
            "{}",
            err.message
        );
    }

    #[test]
    fn text_over_the_size_limit_is_refused_unparsed() {
        let text = "#".repeat(MAX_FILE_BYTES + 1);
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("at most 16 MiB"), "{}", err.message);
    }

    #[test]
    fn empty_text_is_no_document() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }
}
