//! The grammar of Envoy's command operators in header values (`%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%REQ(x-user)%`, `%%`), which Istio passes through in VirtualService header edits: split
//! into pieces once, for validation and for rendering alike.

/// One piece of a header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    /// `%%`: a literal `%`.
    Percent,
    /// The name between two `%`, e.g. `DOWNSTREAM_REMOTE_ADDRESS` or `REQ(x-user):10`.
    Operator(&'a str),
}

/// The operators meshd substitutes besides `REQ(...)`.
pub const KNOWN: [&str; 9] = [
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "PROTOCOL",
    "HOSTNAME",
    "START_TIME",
];

/// The pieces of `value`, in order. A `%` without a closing one is text.
pub fn pieces(value: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            out.push(Piece::Percent);
            rest = tail;
            continue;
        }
        match after.find('%') {
            Some(end) => {
                out.push(Piece::Operator(&after[..end]));
                rest = &after[end + 1..];
            }
            None => {
                out.push(Piece::Text(&rest[start..]));
                rest = "";
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// A `REQ(name?fallback):max` operator's header names and length limit.
pub fn request_header(operator: &str) -> Option<(&str, Option<&str>, Option<usize>)> {
    let inner = operator.strip_prefix("REQ(")?;
    let (names, after) = inner.split_once(')')?;
    let max = match after.strip_prefix(':') {
        Some(n) => Some(n.parse().ok()?),
        None if after.is_empty() => None,
        None => return None,
    };
    let (name, fallback) = match names.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (names, None),
    };
    Some((name, fallback, max))
}

/// The first operator in `value` that meshd does not substitute.
pub fn unknown(value: &str) -> Option<&str> {
    pieces(value).into_iter().find_map(|p| match p {
        Piece::Operator(op) if !KNOWN.contains(&op) && request_header(op).is_none() => Some(op),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_into_text_percent_and_operators() {
        assert_eq!(
            pieces("a %B% c%%d 50% off"),
            [
                Piece::Text("a "),
                Piece::Operator("B"),
                Piece::Text(" c"),
                Piece::Percent,
                Piece::Text("d 50"),
                Piece::Text("% off"),
            ]
        );
        assert_eq!(
            request_header("REQ(x-a?x-b):8"),
            Some(("x-a", Some("x-b"), Some(8)))
        );
        assert_eq!(request_header("REQ(:PATH)"), Some((":PATH", None, None)));
        assert_eq!(request_header("REQ(x):y"), None);
        assert_eq!(unknown("%REQ(a)% %HOSTNAME% %%"), None);
        assert_eq!(unknown("%UPSTREAM_CLUSTER%"), Some("UPSTREAM_CLUSTER"));
    }
}
