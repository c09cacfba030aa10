//! The proxy listeners and the per-connection pipeline.

pub mod connections;
pub mod copy;
pub mod fairness;
pub mod http;
pub mod idle;
pub mod outbound;
pub mod sni;
pub mod sniff;
pub mod sockopt;
pub mod spliced;
pub mod zero_copy;

pub use connections::{ConnectionInfo, Connections};
