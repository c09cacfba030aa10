//! The proxy listeners and the per-connection pipeline.

pub mod connections;
pub mod outbound;
pub mod sockopt;

pub use connections::{ConnectionInfo, Connections};
