//! Header edits from VirtualService `headers` (route and destination level): set, add, remove,
//! applied to requests before forwarding and to responses before returning them; and the
//! tokens of comma-separated header lists (`Connection`, `Transfer-Encoding`).

use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};

use crate::policy::model::{HeaderOperations, Headers};

/// The trimmed tokens of every `name` field, in order (RFC 9110 section 5.6.1 lists).
pub fn tokens(h: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    h.get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a `name` list holds `token` (any case).
pub fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(h, name).any(|t| t.eq_ignore_ascii_case(token))
}

fn apply(h: &mut HeaderMap, ops: &HeaderOperations) {
    for (k, v) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(n, v);
        }
    }
    for k in &ops.remove {
        h.remove(k.as_str());
    }
}

/// Applies the request edits of each level, route first, then destination.
pub fn edit_request(h: &mut HeaderMap, levels: &[Option<&Headers>]) {
    for ops in levels.iter().flatten().filter_map(|l| l.request.as_ref()) {
        apply(h, ops);
    }
}

pub fn edit_response(h: &mut HeaderMap, levels: &[Option<&Headers>]) {
    for ops in levels.iter().flatten().filter_map(|l| l.response.as_ref()) {
        apply(h, ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-old", "1".parse().unwrap());
        h.insert("x-set", "before".parse().unwrap());
        let ops = Headers {
            request: Some(HeaderOperations {
                set: [("x-set".to_string(), "after".to_string())].into(),
                add: [("x-add".to_string(), "a".to_string())].into(),
                remove: vec!["x-old".into()],
            }),
            response: None,
        };
        edit_request(&mut h, &[Some(&ops), None]);
        assert_eq!(h.get("x-set").unwrap(), "after");
        assert_eq!(h.get("x-add").unwrap(), "a");
        assert!(h.get("x-old").is_none());
    }
}
