//! The compiled routing table: for each host, the ordered HTTP routes of the VirtualService
//! that owns it, with matchers compiled once, looked up by authority in O(1) in the number of
//! hosts; and the `tcp` routes of opaque connections (`l4`).

pub mod l4;
pub mod matcher;
pub mod table;

pub use matcher::{RequestMatch, RequestView, StringMatcher};
pub use table::{Destination, HostRoutes, HttpRoute, RegexRewrite, RouteTable};
