//! Reading JSON documents: serde for the values, and two scans of the raw text for what
//! serde would need a second copy of every visitor for: the field path of an error
//! (serde_path_to_error's wrappers cost the filter's .wasm 58 KB) and unknown fields of the
//! plugin configuration (serde_ignored, or a `deny_unknown_fields` mirror of the types: 38 KB).

use crate::validate::{key_segment, ConfigError};

/// Deserializes `bytes`; errors carry the JSON field path.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    // serde lets a struct be read from a JSON array, positionally; at the top level that
    // would turn `[]` into a default configuration, so only an object is accepted there.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(ConfigError::new(None, "", "expected a JSON object")),
        None => {
            return Err(ConfigError::new(
                None,
                "",
                "empty document, expected a JSON object",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(&mut de).map_err(|e| json_error(bytes, &e))?;
    de.end()
        .map_err(|e| ConfigError::new(None, "", e.to_string()))?;
    Ok(value)
}

/// serde_json's error, placed at its field path. serde_json says where an error is as a line
/// and column; the path is recovered by scanning the document up to there. (Tracking the
/// path while deserializing, as serde_path_to_error does, wraps every visitor of every type:
/// about 100 KB of the filter's .wasm.)
fn json_error(doc: &[u8], e: &serde_json::Error) -> ConfigError {
    let message = e.to_string();
    let line_start: usize = doc
        .split_inclusive(|&b| b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(<[u8]>::len)
        .sum();
    // The column is one-based; the token at the error position is not entered.
    let stop = line_start + e.column().saturating_sub(1);
    let mut path = json_path_before(doc, stop);
    // serde reports a missing field at the end of its object: the path is the object's,
    // not that of its last key.
    if message.starts_with("missing field `") {
        if let Some(Frame::Object(key)) = path.last_mut() {
            *key = None;
        }
    }
    ConfigError::new(None, render_path(&path), message)
}

/// One open JSON container while scanning: an object with the key being read, or an array
/// with the index of the element being read.
enum Frame {
    Object(Option<String>),
    Array(usize),
}

/// The containers open at byte `stop` of `doc` (a string that starts before `stop` is read
/// whole, so that an error reported after a key still names that key).
fn json_path_before(doc: &[u8], stop: usize) -> Vec<Frame> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < stop.min(doc.len()) {
        match doc[i] {
            b'{' => stack.push(Frame::Object(None)),
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array(n)) => *n += 1,
                Some(Frame::Object(key)) => *key = None,
                None => {}
            },
            b'"' => {
                let mut end = i + 1;
                while end < doc.len() && doc[end] != b'"' {
                    end += if doc[end] == b'\\' { 2 } else { 1 };
                }
                let raw = doc.get(i..=end).unwrap_or_default();
                if let Some(Frame::Object(key @ None)) = stack.last_mut() {
                    *key = Some(serde_json::from_slice(raw).unwrap_or_else(|_| {
                        String::from_utf8_lossy(raw).trim_matches('"').to_string()
                    }));
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    stack
}

/// `table.routes[0].headers.x-user`, map keys written as `key_segment` writes them.
fn render_path(frames: &[Frame]) -> String {
    let mut out = String::new();
    for frame in frames {
        match frame {
            Frame::Object(Some(key)) => out.push_str(&key_segment(key)),
            Frame::Object(None) => {}
            Frame::Array(n) => out.push_str(&format!("[{n}]")),
        }
    }
    out.strip_prefix('.').unwrap_or(&out).to_string()
}

/// The shape of a JSON type, as far as unknown fields are concerned. Implemented by the
/// `config_types!` structs (from their own field list) and the containers they use.
pub(crate) trait Shaped {
    fn shape() -> Shape;
}

/// A struct field by its Rust name (`route_header`, `r#match`), with its shape.
pub(crate) type Field = (&'static str, fn() -> Shape);

/// Where an object key can be checked: a struct knows its fields, a list or a map passes its
/// element shape on, and anything else (strings, numbers, enums) holds no keys to check.
pub(crate) enum Shape {
    Leaf,
    Struct(&'static [Field]),
    Seq(fn() -> Shape),
    Map(fn() -> Shape),
}

macro_rules! leaf_shapes {
    ($($t:ty),*) => { $(impl Shaped for $t { fn shape() -> Shape { Shape::Leaf } })* };
}
leaf_shapes!(String, bool, u32, u64, i64);

impl<T: Shaped> Shaped for Option<T> {
    fn shape() -> Shape {
        T::shape()
    }
}

impl<T: Shaped> Shaped for Vec<T> {
    fn shape() -> Shape {
        Shape::Seq(T::shape)
    }
}

impl<T: Shaped> Shaped for std::collections::BTreeMap<String, T> {
    fn shape() -> Shape {
        Shape::Map(T::shape)
    }
}

/// The first key in `doc` (a document `T` was already read from) that `T` has no field
/// for, at any depth, as an error naming its path and the fields expected there.
pub(crate) fn unknown_field<T: Shaped>(doc: &[u8]) -> Option<ConfigError> {
    let mut walk = Walk {
        doc,
        at: 0,
        path: Vec::new(),
    };
    walk.value(T::shape()).err()
}

struct Walk<'a> {
    doc: &'a [u8],
    at: usize,
    path: Vec<Frame>,
}

impl Walk<'_> {
    fn peek(&mut self) -> Option<u8> {
        while let Some(b) = self.doc.get(self.at) {
            if !b.is_ascii_whitespace() {
                return Some(*b);
            }
            self.at += 1;
        }
        None
    }

    /// One value, checked against `shape`; ends after it.
    fn value(&mut self, shape: Shape) -> Result<(), ConfigError> {
        match self.peek() {
            Some(b'{') => self.object(shape),
            Some(b'[') => self.array(shape),
            Some(b'"') => {
                self.string();
                Ok(())
            }
            _ => {
                // A number or a literal: up to the next delimiter.
                while let Some(b) = self.doc.get(self.at) {
                    if matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace() {
                        break;
                    }
                    self.at += 1;
                }
                Ok(())
            }
        }
    }

    /// A string token; returns its text.
    fn string(&mut self) -> String {
        let start = self.at;
        let mut end = start + 1;
        while end < self.doc.len() && self.doc[end] != b'"' {
            end += if self.doc[end] == b'\\' { 2 } else { 1 };
        }
        self.at = end + 1;
        let raw = self.doc.get(start..=end).unwrap_or_default();
        serde_json::from_slice(raw)
            .unwrap_or_else(|_| String::from_utf8_lossy(raw).trim_matches('"').to_string())
    }

    fn object(&mut self, shape: Shape) -> Result<(), ConfigError> {
        self.at += 1;
        self.path.push(Frame::Object(None));
        loop {
            match self.peek() {
                Some(b'"') => {}
                Some(b',') => {
                    self.at += 1;
                    continue;
                }
                _ => break,
            }
            let key = self.string();
            if let Some(Frame::Object(slot)) = self.path.last_mut() {
                *slot = Some(key.clone());
            }
            let inner = match &shape {
                Shape::Struct(fields) => match fields.iter().find(|(f, _)| camel_eq(f, &key)) {
                    Some((_, field)) => field(),
                    None => return Err(self.unknown(fields)),
                },
                Shape::Map(values) => values(),
                Shape::Leaf | Shape::Seq(_) => Shape::Leaf,
            };
            if self.peek() == Some(b':') {
                self.at += 1;
            }
            self.value(inner)?;
        }
        self.at += 1;
        self.path.pop();
        Ok(())
    }

    fn array(&mut self, shape: Shape) -> Result<(), ConfigError> {
        self.at += 1;
        self.path.push(Frame::Array(0));
        loop {
            match self.peek() {
                Some(b']') | None => break,
                Some(b',') => {
                    self.at += 1;
                    if let Some(Frame::Array(n)) = self.path.last_mut() {
                        *n += 1;
                    }
                }
                Some(_) => {
                    let inner = match &shape {
                        Shape::Seq(element) => element(),
                        _ => Shape::Leaf,
                    };
                    self.value(inner)?;
                }
            }
        }
        self.at += 1;
        self.path.pop();
        Ok(())
    }

    fn unknown(&self, fields: &[Field]) -> ConfigError {
        let names: Vec<String> = fields
            .iter()
            .map(|(f, _)| format!("`{}`", camel(f)))
            .collect();
        let expected = match names.as_slice() {
            [one] => one.clone(),
            [a, b] => format!("{a} or {b}"),
            _ => format!("one of {}", names.join(", ")),
        };
        ConfigError::new(
            None,
            render_path(&self.path),
            format!("unknown field, expected {expected}"),
        )
    }
}

/// A Rust field name as serde's `rename_all = "camelCase"` writes it.
fn camel(field: &str) -> String {
    let field = field.strip_prefix("r#").unwrap_or(field);
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn camel_eq(field: &str, key: &str) -> bool {
    camel(field) == key
}
