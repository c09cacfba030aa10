//! The policy model: Istio resources and meshd's RateLimitPolicy read from YAML, validated and
//! analyzed with file:line:col findings.
//!
//! `load` reads files and directories into a [`PolicySet`] of typed resources (each with its
//! source position) or fails with every finding; `analyze` runs the cross-resource checks.

pub mod age;
mod analysis;
pub mod base64;
mod convert;
pub mod delegate;
pub mod duration;
pub mod finding;
pub mod header_operators;
pub mod hosts;
pub mod kinds;
pub mod limits;
mod load;
pub mod model;
pub mod node;
pub mod re2;
mod report;
mod rules;
mod schema;
mod set;
pub mod source;
pub(crate) mod validate;
mod walk;
pub mod yaml;

pub use analysis::analyze;
pub use finding::{Finding, Pos, Severity};
pub use kinds::Kind;
pub use load::{LoadFailure, Loaded, load, load_all, load_files, load_str, read_all};
pub use model::Located;
pub use set::PolicySet;
pub use source::SourceError;
