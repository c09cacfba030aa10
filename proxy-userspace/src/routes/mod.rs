//! The compiled routing table: for each host, the ordered HTTP routes of the VirtualService
//! that owns it, with matchers compiled once, looked up by authority in O(1) in the number of
//! hosts; and the `tcp` routes of opaque connections (`l4`).

pub mod l4;
pub mod matcher;
pub mod table;

use std::collections::BTreeMap;

pub use matcher::{RequestMatch, RequestView, StringMatcher};
pub use table::{Destination, HostRoutes, HttpRoute, RegexRewrite, RouteTable};

/// The client of a connection or request, as `tcp` and `tls` matches and DestinationRules with
/// a `workloadSelector` see it: its WorkloadEntry's labels and namespace.
pub struct Client<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub namespace: Option<&'a str>,
}
