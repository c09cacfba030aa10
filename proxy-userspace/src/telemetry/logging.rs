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

/// Replaces the filter, e.g. `debug`, `warning` or `info,meshd::proxy=debug`.
pub fn set(directives: &str) -> Result<(), String> {
    let (handle, current) = HANDLE.get().ok_or("logging is not initialised")?;
    let normalized = normalize(directives)?;
    let filter = EnvFilter::try_new(&normalized)
        .map_err(|e| format!("invalid filter {directives:?}: {e}"))?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    *current.lock().expect("log level lock") = normalized.clone();
    tracing::info!(filter = normalized, "log level changed");
    Ok(())
}

/// A level by its name in tracing or in Envoy (`warning`, `critical`), in any case.
fn level(name: &str) -> Option<&'static str> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "err" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// Each directive must be a level, or `TARGET=LEVEL`. A bare word that is no level would read
/// as a target at trace and turn every other log off, errors included, so it is refused.
fn normalize(directives: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let normalized = match d.rsplit_once('=') {
            Some((target, lvl)) if !target.trim().is_empty() => {
                let lvl = level(lvl).ok_or_else(|| unknown(lvl))?;
                format!("{}={lvl}", target.trim())
            }
            Some((_, lvl)) => return Err(unknown(lvl)),
            None => level(d).ok_or_else(|| unknown(d))?.to_string(),
        };
        out.push(normalized);
    }
    if out.is_empty() {
        return Err("no level given: use trace, debug, info, warning, error or off".into());
    }
    Ok(out.join(","))
}

fn unknown(level: &str) -> String {
    format!(
        "unknown level {level:?}: use trace, debug, info, warning (warn), error (critical) or off, \
         for everything or as TARGET=LEVEL"
    )
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn envoys_level_names_are_read_and_bare_words_refused() {
        assert_eq!(normalize("warning").unwrap(), "warn");
        assert_eq!(normalize("Critical").unwrap(), "error");
        assert_eq!(normalize("off").unwrap(), "off");
        assert_eq!(
            normalize("info, meshd::proxy=DEBUG").unwrap(),
            "info,meshd::proxy=debug"
        );
        assert_eq!(normalize("h2=warning").unwrap(), "h2=warn");
        for bad in ["verbose", "meshd::proxy", "=debug", "h2=loud", "", " , "] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }
}
