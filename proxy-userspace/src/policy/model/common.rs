//! Typed pieces shared by several kinds: string matches, percentages, selectors, header edits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `{exact|prefix|regex}`; all empty means "present" (header and query-parameter matches).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

impl StringMatch {
    /// Whether `value` matches. A regex must match the whole value, as in Envoy (RE2 full match).
    /// A regex that does not compile (impossible after validation) matches nothing.
    pub fn matches(&self, value: &str) -> bool {
        if let Some(e) = &self.exact {
            return value == e;
        }
        if let Some(p) = &self.prefix {
            return value.starts_with(p.as_str());
        }
        if let Some(r) = &self.regex {
            return crate::policy::re2::compile(r, true).is_ok_and(|re| re.is_match(value));
        }
        true
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSelector {
    pub number: u16,
}

/// `selector: {matchLabels: ...}` (security resources, DestinationRule.workloadSelector).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
}

/// `{set, add, remove}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeaderOperations {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl HeaderOperations {
    /// Whether an edit names a field that frames the message (`content-length`,
    /// `transfer-encoding`): meshd frames each message by its body and leaves such edits out;
    /// followed, they would announce a body other than the one sent.
    pub fn frames(name: &str) -> bool {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

/// Whether every label of `selector` is on `labels` (an empty selector selects everything).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
