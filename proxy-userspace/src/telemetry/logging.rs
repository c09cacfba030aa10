//! meshd's own logs: a tracing subscriber on stderr whose filter (`MESHD_LOG`, `RUST_LOG`,
//! default `info`) can be changed while running, through the admin API's `/logging`.

use std::sync::OnceLock;

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

static HANDLE: OnceLock<(
    reload::Handle<EnvFilter, Registry>,
    std::sync::Mutex<String>,
)> = OnceLock::new();

pub fn init() {
    use std::io::IsTerminal;
    let directives = std::env::var("MESHD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = HANDLE.set((handle, std::sync::Mutex::new(directives)));
    }
}

/// The active filter directives.
pub fn current() -> String {
    HANDLE
        .get()
        .map(|(_, d)| d.lock().expect("log level lock").clone())
        .unwrap_or_else(|| "unavailable".into())
}

/// Replaces the filter, e.g. `debug` or `info,meshd::proxy=debug`.
pub fn set(directives: &str) -> Result<(), String> {
    let (handle, current) = HANDLE.get().ok_or("logging is not initialised")?;
    let filter = EnvFilter::try_new(directives)
        .map_err(|e| format!("invalid filter {directives:?}: {e}"))?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    *current.lock().expect("log level lock") = directives.to_string();
    tracing::info!(filter = directives, "log level changed");
    Ok(())
}
