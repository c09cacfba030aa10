//! The active configuration: an immutable policy snapshot that the data path reads without
//! locks, replaced atomically on hot reload (file changes or SIGHUP) and never by a broken one.

mod compile;
mod dns;
pub mod documents;
pub mod endpoints;
mod hash;
mod snapshot;
mod store;
mod watch;
mod writes;

pub use compile::{
    Cluster, Compiled, ServiceEndpoint, WorkloadPolicies, compile, compile_resolved,
};
pub use documents::Document;
pub use snapshot::{Mesh, Snapshot};
pub use store::{ConfigStore, ReloadOutcome};
pub use watch::spawn_watcher;
