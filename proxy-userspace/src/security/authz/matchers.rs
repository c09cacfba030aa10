//! Istio's value matchers for authorization rules: strings with a leading or trailing `*`,
//! IP blocks, and URL paths (with `{*}` / `{**}` templates).

use std::net::IpAddr;

/// An Istio string match: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any non-empty value.
/// As in Istio, only one wildcard is recognised: `*abc*` is the suffix `abc*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
    /// The parts between `*`s, each `*` matching any run of characters (namespaces only).
    Glob(Vec<String>),
}

impl StrPattern {
    pub fn parse(s: &str) -> StrPattern {
        if s == "*" {
            StrPattern::Presence
        } else if let Some(rest) = s.strip_prefix('*') {
            StrPattern::Suffix(rest.to_string())
        } else if let Some(rest) = s.strip_suffix('*') {
            StrPattern::Prefix(rest.to_string())
        } else {
            StrPattern::Exact(s.to_string())
        }
    }

    /// A namespace pattern as istiod builds its matcher: every `*` matches any run of
    /// characters, wherever it is (`*o*`, `b*r`), not only at one end.
    pub fn parse_namespace(s: &str) -> StrPattern {
        let inner = s.len() > 1 && s[1..s.len() - 1].contains('*');
        if inner || (s.len() > 1 && s.starts_with('*') && s.ends_with('*')) {
            StrPattern::Glob(s.split('*').map(str::to_string).collect())
        } else {
            StrPattern::parse(s)
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrPattern::Exact(e) => v == e,
            StrPattern::Prefix(p) => v.starts_with(p.as_str()),
            StrPattern::Suffix(s) => v.ends_with(s.as_str()),
            StrPattern::Presence => !v.is_empty(),
            StrPattern::Glob(parts) => glob_matches(parts, v),
        }
    }

    /// Like `matches`, ignoring ASCII case (hosts).
    pub fn matches_ignore_case(&self, v: &str) -> bool {
        let v = v.as_bytes();
        match self {
            StrPattern::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
            StrPattern::Prefix(p) => {
                v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrPattern::Suffix(s) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StrPattern::Presence => !v.is_empty(),
            StrPattern::Glob(parts) => glob_matches(parts, &String::from_utf8_lossy(v)),
        }
    }
}

/// Whether `v` is `parts` joined by runs of any characters: the first part begins it, the last
/// ends it, and the others appear in order between.
fn glob_matches(parts: &[String], v: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return true;
    };
    if parts.len() == 1 {
        return v == first;
    }
    if v.len() < first.len() + last.len()
        || !v.starts_with(first.as_str())
        || !v.ends_with(last.as_str())
    {
        return false;
    }
    let mut rest = &v[first.len()..v.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part.as_str()) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32`, `/128`).
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are compared as IPv4, on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub fn parse(s: &str) -> Option<IpBlock> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        Some(match (ip, ip.to_canonical()) {
            // A mapped block `::ffff:10.0.0.0/104` is the IPv4 block `10.0.0.0/8`.
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) if prefix >= 96 => IpBlock {
                addr: v4,
                prefix: prefix - 96,
            },
            _ => IpBlock { addr: ip, prefix },
        })
    }

    /// The one address of a block as wide as an address (`/32`, `/128`).
    pub fn single(&self) -> Option<IpAddr> {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        (self.prefix == max).then_some(self.addr)
    }

    /// The prefix length: larger is narrower.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A `paths` value: an Istio string match, or a path template when it contains `{*}` (one
/// path segment) or `{**}` (anything, including `/`). As in Istio, each operator is a whole
/// segment and `{**}` is the last operator.
#[derive(Clone, Debug)]
pub enum PathPattern {
    Str(StrPattern),
    Template(Vec<Part>),
}

/// A piece of a path template. Each operator is a whole segment, so matching needs no
/// backtracking: `{*}` takes the segment up to the next `/`, and `{**}`, always the last
/// operator, the rest of the path but for a final `/` that may follow it. (A regex per
/// template cost milliseconds each to build: a thousand rules took seconds to load.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// `{*}`: one path segment, not empty.
    Segment,
    /// `{**}`: anything, `/` included.
    Rest,
}

fn template_matches(parts: &[Part], mut path: &str) -> bool {
    for (i, part) in parts.iter().enumerate() {
        match part {
            Part::Literal(l) => match path.strip_prefix(l.as_str()) {
                Some(rest) => path = rest,
                None => return false,
            },
            Part::Segment => {
                let end = path.find('/').unwrap_or(path.len());
                if end == 0 {
                    return false;
                }
                path = &path[end..];
            }
            Part::Rest => {
                // Only a literal (`/`, or nothing) may follow it: the path must end with it.
                return (parts[i + 1..].iter().rev()).all(|p| match p {
                    Part::Literal(l) => match path.strip_suffix(l.as_str()) {
                        Some(rest) => {
                            path = rest;
                            true
                        }
                        None => false,
                    },
                    _ => true,
                });
            }
        }
    }
    path.is_empty()
}

impl PathPattern {
    /// `None` for a template with `*`, `{` or `}` outside the two operators.
    pub fn parse(s: &str) -> Option<PathPattern> {
        if !s.contains("{*}") && !s.contains("{**}") {
            return Some(PathPattern::Str(StrPattern::parse(s)));
        }
        let mut parts = Vec::new();
        let mut rest = s;
        let mut after_any = false;
        while !rest.is_empty() {
            let (lit, op, after) = match rest.find('{') {
                Some(i) if rest[i..].starts_with("{**}") => (&rest[..i], ".*", &rest[i + 4..]),
                Some(i) if rest[i..].starts_with("{*}") => (&rest[..i], "[^/]+", &rest[i + 3..]),
                Some(_) => return None,
                None => (rest, "", ""),
            };
            let at = s.len() - rest.len() + lit.len();
            let whole_segment = op.is_empty()
                || (s[..at].ends_with('/') && (after.is_empty() || after.starts_with('/')));
            // Nothing may follow `{**}` but a final `/` (Istio's `CheckValidPathTemplate`).
            let after_any_ok = !after_any || (op.is_empty() && matches!(lit, "" | "/"));
            if lit.contains(['*', '{', '}']) || !after_any_ok || !whole_segment {
                return None;
            }
            after_any |= op == ".*";
            if !lit.is_empty() {
                parts.push(Part::Literal(lit.to_string()));
            }
            match op {
                ".*" => parts.push(Part::Rest),
                "[^/]+" => parts.push(Part::Segment),
                _ => {}
            }
            rest = after;
        }
        Some(PathPattern::Template(parts))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Str(p) => p.matches(path),
            PathPattern::Template(parts) => template_matches(parts, path),
        }
    }
}

/// The path rules are matched against: the request target without query or fragment, with
/// `.` and `..` segments resolved (RFC 3986 §5.2.4), so `/public/../admin` is `/admin`. As
/// Envoy's canonicalizer does under Istio's default (`BASE`) normalization, `%2e` counts as a
/// dot in such a segment and `\` as a `/`; other escapes and repeated slashes are kept.
pub fn normalize_path(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let unified;
    let path = if path.contains('\\') {
        unified = path.replace('\\', "/");
        unified.as_str()
    } else {
        path
    };
    if !path.split('/').any(|s| dots(s).is_some()) {
        return path.to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match dots(seg) {
            Some(n) => {
                if n == 2 && out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push(""); // `/a/b/..` is the directory `/a/`
                }
            }
            None => out.push(seg),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') || !path.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// How many dots a dot segment is (`.` or `..`, a dot also written `%2e`, with or without
/// `;` parameters, as Envoy's canonicalizer reads them); `None` for any other segment.
fn dots(segment: &str) -> Option<usize> {
    let mut rest = segment.split(';').next().unwrap_or(segment);
    let mut n = 0;
    while !rest.is_empty() && n < 3 {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return None;
        }
        n += 1;
    }
    (rest.is_empty() && (1..=2).contains(&n)).then_some(n)
}
