//! A YAML document as a tree whose every key and value knows its line and column.

use super::finding::Pos;

/// A YAML value with its position (the first character of the value).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A scalar as written. Plain scalars are typed by YAML 1.2's core schema when read; quoted ones
/// (and `!!str`) are always strings.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub quoted: bool,
}

/// One `key: value` of a mapping; `key_pos` is where the key starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// What a scalar means, for type checks and messages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Typed<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub fn typed(&self) -> Typed<'_> {
        if self.quoted {
            return Typed::Str(&self.text);
        }
        let t = self.text.as_str();
        match t {
            "true" | "True" | "TRUE" => return Typed::Bool(true),
            "false" | "False" | "FALSE" => return Typed::Bool(false),
            ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
                return Typed::Float(f64::INFINITY);
            }
            "-.inf" | "-.Inf" | "-.INF" => return Typed::Float(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => return Typed::Float(f64::NAN),
            _ => {}
        }
        if let Some(i) = parse_int(t) {
            return Typed::Int(i);
        }
        if is_float(t)
            && let Ok(f) = t.parse::<f64>()
        {
            return Typed::Float(f);
        }
        Typed::Str(t)
    }
}

/// YAML 1.2 core integers: decimal, `0o` octal, `0x` hex.
fn parse_int(t: &str) -> Option<i64> {
    if let Some(h) = t.strip_prefix("0x") {
        return i64::from_str_radix(h, 16).ok();
    }
    if let Some(o) = t.strip_prefix("0o") {
        return i64::from_str_radix(o, 8).ok();
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// YAML 1.2 core floats: `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`.
fn is_float(t: &str) -> bool {
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int)
        && frac.is_none_or(digits)
        && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()));
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

impl Node {
    pub fn new(pos: Pos, value: Value) -> Node {
        Node { pos, value }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn scalar(&self) -> Option<Typed<'_>> {
        match &self.value {
            Value::Scalar(s) => Some(s.typed()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self.scalar()? {
            Typed::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.scalar()? {
            Typed::Int(i) => Some(i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self.scalar()? {
            Typed::Int(i) => Some(i as f64),
            Typed::Float(f) => Some(f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.scalar()? {
            Typed::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(e) => Some(e),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(v) => Some(v),
            _ => None,
        }
    }

    /// The entry for `key` in a mapping, ignoring null values (an absent field).
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries()?
            .iter()
            .find(|e| e.key == key && !e.value.is_null())
    }

    /// The value of `key` in a mapping, ignoring null values.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// A short description of what this node is, for type errors.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing".into(),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
            Value::Scalar(s) => match s.typed() {
                Typed::Str(t) => format!("the string {}", quote(t)),
                Typed::Int(i) => format!("the integer {i}"),
                Typed::Float(f) => format!("the number {f}"),
                Typed::Bool(b) => format!("the boolean {b}"),
            },
        }
    }

    /// How many nodes this tree holds (for alias budgets).
    pub fn count(&self) -> usize {
        1 + match &self.value {
            Value::Seq(v) => v.iter().map(Node::count).sum(),
            Value::Map(e) => e.iter().map(|e| 1 + e.value.count()).sum(),
            _ => 0,
        }
    }

    /// How deep this tree nests (a scalar is 0).
    pub fn height(&self) -> usize {
        match &self.value {
            Value::Seq(v) => 1 + v.iter().map(Node::height).max().unwrap_or(0),
            Value::Map(e) => 1 + e.iter().map(|e| e.value.height()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Follows a path like `spec.http[1].route[0].destination.subset` as far as it exists and
    /// returns the position of what it names: the value for a scalar, otherwise the key that
    /// introduces it. A path that stops early yields the position of the last node reached.
    pub fn locate(&self, path: &str) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        for seg in segments(path) {
            let next = match seg {
                Seg::Key(k) => node.entry(k).map(|e| (e.key_pos, &e.value)),
                Seg::Index(i) => node.items().and_then(|v| v.get(i)).map(|n| (n.pos, n)),
            };
            let Some((key_pos, child)) = next else {
                return pos;
            };
            node = child;
            pos = if matches!(child.value, Value::Scalar(_)) {
                child.pos
            } else {
                key_pos
            };
        }
        pos
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[2].c` into `a`, `b`, `2`, `c`.
fn segments(path: &str) -> impl Iterator<Item = Seg<'_>> {
    path.split('.').filter(|s| !s.is_empty()).flat_map(|part| {
        let mut pieces = part.split('[');
        let key = pieces.next().filter(|k| !k.is_empty()).map(Seg::Key);
        let idx = pieces.filter_map(|p| p.trim_end_matches(']').parse().ok().map(Seg::Index));
        key.into_iter().chain(idx)
    })
}

/// Quotes a user-supplied string for a message, escaping control characters and cutting it short.
pub fn quote(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s.chars().take(MAX).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(t: &str) -> Scalar {
        Scalar {
            text: t.into(),
            quoted: false,
        }
    }

    #[test]
    fn types_plain_scalars_like_yaml_core() {
        assert_eq!(plain("90").typed(), Typed::Int(90));
        assert_eq!(plain("-3").typed(), Typed::Int(-3));
        assert_eq!(plain("0x1f").typed(), Typed::Int(31));
        assert_eq!(plain("0.5").typed(), Typed::Float(0.5));
        assert_eq!(plain("1e3").typed(), Typed::Float(1000.0));
        assert_eq!(plain("true").typed(), Typed::Bool(true));
        assert_eq!(plain("2s").typed(), Typed::Str("2s"));
        assert_eq!(plain("v1").typed(), Typed::Str("v1"));
        assert_eq!(plain("1.2.3").typed(), Typed::Str("1.2.3"));
        assert_eq!(plain("yes").typed(), Typed::Str("yes"));
        let quoted = Scalar {
            text: "90".into(),
            quoted: true,
        };
        assert_eq!(quoted.typed(), Typed::Str("90"));
    }

    #[test]
    fn quote_escapes_and_truncates() {
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        assert!(quote(&"x".repeat(500)).len() < 100);
    }
}
