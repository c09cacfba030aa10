//! Reads YAML text into position-aware trees, one per document, within the limits in `limits`.
//!
//! yaml-rust2's event parser is driven by hand (it is not recursive, so depth is ours to cap),
//! and every event's marker becomes the node's 1-based line and column.

use std::{
    collections::{HashMap, hash_map},
    panic::AssertUnwindSafe,
};

use yaml_rust2::{
    Event,
    parser::{Parser, Tag},
    scanner::{Marker, TScalarStyle},
};

use super::{
    finding::Pos,
    limits::{MAX_DEPTH, MAX_DOCUMENTS, MAX_NODES},
    node::{Entry, Node, Scalar, Value},
};

/// One non-empty document of a file.
#[derive(Clone, Debug)]
pub struct Document {
    /// 0-based index among the file's documents (empty ones included).
    pub index: usize,
    pub root: Node,
}

/// What a file holds: the documents read, and the problems met on the way. A syntax error or a
/// broken limit stops the file; the documents before it are kept.
#[derive(Debug, Default)]
pub struct Parsed {
    pub documents: Vec<Document>,
    pub errors: Vec<(Pos, String)>,
}

/// Parses every document of `text`. Never panics: a parser bug becomes an error.
pub fn parse(text: &str) -> Parsed {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match std::panic::catch_unwind(AssertUnwindSafe(|| Builder::default().run(text))) {
        Ok(parsed) => parsed,
        Err(_) => Parsed {
            documents: Vec::new(),
            errors: vec![(
                Pos::START,
                "the YAML parser failed on this file; please report it".into(),
            )],
        },
    }
}

fn pos(m: &Marker) -> Pos {
    Pos::new(m.line(), m.col() + 1)
}

enum Key {
    Expect,
    Have(String, Pos),
    Skip,
}

/// A collection being built: its position, anchor and content. A mapping also keeps where each
/// key was first seen, to report duplicates without quadratic scans.
enum Frame {
    Seq(Pos, usize, Vec<Node>),
    Map(Pos, usize, Vec<Entry>, Key, HashMap<String, usize>),
}

/// Why the stream stopped early.
struct Stop;

#[derive(Default)]
struct Builder {
    out: Parsed,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    doc_index: usize,
    root: Option<Node>,
}

impl Builder {
    fn run(mut self, text: &str) -> Parsed {
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) => break,
                Ok((ev, mark)) => {
                    if self.event(ev, pos(&mark)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let msg = format!("invalid YAML: {}", e.info());
                    self.out.errors.push((pos(e.marker()), msg));
                    break;
                }
            }
        }
        self.out
    }

    fn fail(&mut self, at: Pos, msg: String) -> Result<(), Stop> {
        self.out.errors.push((at, msg));
        Err(Stop)
    }

    fn event(&mut self, ev: Event, at: Pos) -> Result<(), Stop> {
        match ev {
            Event::DocumentStart => {
                if self.doc_index >= MAX_DOCUMENTS {
                    return self.fail(
                        at,
                        format!("more than {MAX_DOCUMENTS} documents in one file"),
                    );
                }
                self.anchors.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                if let Some(root) = self.root.take().filter(|r| !r.is_null()) {
                    self.out.documents.push(Document {
                        index: self.doc_index,
                        root,
                    });
                }
                self.doc_index += 1;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar_value(text, style, tag.as_ref());
                self.node(Node::new(at, value), anchor)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(at)?;
                self.stack.push(Frame::Seq(at, anchor, Vec::new()));
            }
            Event::MappingStart(anchor, _) => {
                self.open(at)?;
                self.stack.push(Frame::Map(
                    at,
                    anchor,
                    Vec::new(),
                    Key::Expect,
                    HashMap::new(),
                ));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                // The parser marks a block collection where it recognised it (for a mapping,
                // at its first `:`); its first key or item is where a reader sees it start.
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(p, a, items)) => {
                        let p = items.first().map_or(p, |n| p.min(n.pos));
                        (Node::new(p, Value::Seq(items)), a)
                    }
                    Some(Frame::Map(p, a, entries, _, _)) => {
                        let p = entries.first().map_or(p, |e| p.min(e.key_pos));
                        (Node::new(p, Value::Map(entries)), a)
                    }
                    None => return self.fail(at, "invalid YAML: unbalanced collection".into()),
                };
                self.node(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    return self.fail(at, "invalid YAML: alias to an unknown anchor".into());
                };
                let (count, height) = (target.count(), target.height());
                if self.stack.len() + height > MAX_DEPTH {
                    return self.fail(at, depth_message());
                }
                if self.nodes + count > MAX_NODES {
                    return self.fail(at, budget_message());
                }
                self.nodes += count;
                let mut node = target.clone();
                node.pos = at;
                self.node(node, 0)?;
            }
            Event::StreamStart | Event::Nothing | Event::StreamEnd => {}
        }
        Ok(())
    }

    fn open(&mut self, at: Pos) -> Result<(), Stop> {
        if self.stack.len() >= MAX_DEPTH {
            return self.fail(at, depth_message());
        }
        Ok(())
    }

    /// Places a finished node: as the document root, a list item, a key or a value.
    fn node(&mut self, node: Node, anchor: usize) -> Result<(), Stop> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return self.fail(node.pos, budget_message());
        }
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let mut error = None;
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, key, seen)) => match std::mem::replace(key, Key::Expect)
            {
                Key::Expect => match &node.value {
                    Value::Scalar(s) => *key = Key::Have(s.text.clone(), node.pos),
                    Value::Null => *key = Key::Have(String::new(), node.pos),
                    _ => {
                        *key = Key::Skip;
                        error = Some((node.pos, "mapping keys must be strings".to_string()));
                    }
                },
                Key::Have(name, key_pos) => match seen.entry(name) {
                    hash_map::Entry::Occupied(first) => {
                        let msg = format!(
                            "duplicate key {} (first at line {})",
                            super::node::quote(first.key()),
                            first.get()
                        );
                        error = Some((key_pos, msg));
                    }
                    hash_map::Entry::Vacant(slot) => {
                        entries.push(Entry {
                            key: slot.key().clone(),
                            key_pos,
                            value: node,
                        });
                        slot.insert(key_pos.line);
                    }
                },
                Key::Skip => {}
            },
        }
        if let Some(e) = error {
            self.out.errors.push(e);
        }
        Ok(())
    }
}

fn depth_message() -> String {
    format!("nesting deeper than {MAX_DEPTH} levels")
}

fn budget_message() -> String {
    format!("more than {MAX_NODES} YAML values in one file (counting expanded aliases); split it")
}

fn scalar_value(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    let tag = tag.map(|t| t.suffix.as_str());
    let tag = tag.map(|t| t.strip_prefix("tag:yaml.org,2002:").unwrap_or(t));
    let plain = style == TScalarStyle::Plain && tag != Some("str");
    if plain
        && (tag == Some("null") || matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    {
        return Value::Null;
    }
    Value::Scalar(Scalar {
        text,
        quoted: !plain,
    })
}

#[cfg(test)]
mod tests;
