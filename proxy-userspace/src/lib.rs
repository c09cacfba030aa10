//! meshd: the node daemon of an eBPF-accelerated, sidecarless service mesh.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod admin;
pub mod analyze;
pub mod app;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod drain;
pub mod ebpf;
pub mod exec;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod pods;
pub mod policy;
pub mod proxy;
pub mod routes;
pub mod security;
pub mod settings;
pub mod status;
pub mod telemetry;
pub mod tunnel;
pub mod workloads;
